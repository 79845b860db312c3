//! A-ASSOCIATE-RQ bodies, and the A-ASSOCIATE-AC/RJ, A-RELEASE-RP and A-ABORT built in reply. See `dicomvault_native::fuzzing::associate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dicomvault_native::fuzzing::associate(data));
