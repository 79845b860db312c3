//! DIMSE command sets, and the responses and requests encoded from them. See `dicomvault_native::fuzzing::dimse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dicomvault_native::fuzzing::dimse(data));
