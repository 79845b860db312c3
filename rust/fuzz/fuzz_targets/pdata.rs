//! P-DATA-TF bodies: their PDVs, the commands they carry, and fragmenting a message back. See `dicomvault_native::fuzzing::pdata`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dicomvault_native::fuzzing::pdata(data));
