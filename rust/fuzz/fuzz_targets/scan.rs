//! The data set scanner: files and bare data sets in every native syntax, fed in pieces. See `dicomvault_native::fuzzing::scan`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dicomvault_native::fuzzing::scan(data));
