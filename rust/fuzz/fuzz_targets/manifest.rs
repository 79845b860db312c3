//! Manifest record payloads. See `dicomvault_native::fuzzing::manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dicomvault_native::fuzzing::manifest(data));
