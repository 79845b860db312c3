//! The fuzz smoke run: every committed corpus and regression input of each fuzz target
//! (`rust/fuzz/corpus/<target>/`, `rust/fuzz/regressions/<target>/`) replayed through the
//! target's body in `dicomvault_native::fuzzing`, on stable Rust without cargo-fuzz.

use dicomvault_native::fuzzing;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("rust/fuzz");
    let mut out = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("listing a corpus").path();
            let bytes = std::fs::read(&path).expect("reading a corpus input");
            out.push((path, bytes));
        }
    }
    out.sort();
    assert!(
        !out.is_empty(),
        "no committed corpus for fuzz target {target}"
    );
    out
}

fn replay(target: &str, body: impl Fn(&[u8])) {
    for (path, bytes) in inputs(target) {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| body(&bytes)));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
    }
}

#[test]
fn scan() {
    replay("scan", fuzzing::scan);
}

#[test]
fn deflate() {
    replay("deflate", fuzzing::deflate);
}

#[test]
fn associate() {
    replay("associate", fuzzing::associate);
}

#[test]
fn pdata() {
    replay("pdata", fuzzing::pdata);
}

#[test]
fn dimse() {
    replay("dimse", fuzzing::dimse);
}

#[test]
fn manifest() {
    replay("manifest", fuzzing::manifest);
}

#[test]
fn pack() {
    let scratch = tempfile::tempfile().expect("a scratch file");
    replay("pack", |data| fuzzing::pack(data, &scratch));
}
