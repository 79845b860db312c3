//! Deflated data sets (1.2.840.10008.1.2.1.99), bare and in Part 10 files. See `dicomvault_native::fuzzing::deflate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dicomvault_native::fuzzing::deflate(data));
