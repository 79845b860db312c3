//! Pack images: record headers and a walk over their records. See `dicomvault_native::fuzzing::pack`.
#![no_main]

use std::fs::File;
use std::sync::OnceLock;

static SCRATCH: OnceLock<File> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let scratch = SCRATCH.get_or_init(|| tempfile::tempfile().expect("a scratch file"));
    dicomvault_native::fuzzing::pack(data, scratch);
});
