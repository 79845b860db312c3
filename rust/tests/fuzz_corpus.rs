//! The fuzz smoke run: every committed corpus and regression input of each fuzz target
//! (`rust/fuzz/corpus/<target>/`, `rust/fuzz/regressions/<target>/`) replayed through the
//! target's body in `dicomvault_native::fuzzing`, then a few seconds of mutations of them
//! (`DICOMVAULT_FUZZ_SMOKE_SECONDS`, default 2 per target), on stable Rust without cargo-fuzz.
//! The mutations are blind (libFuzzer's coverage guidance needs nightly: `benches/fuzz.py`)
//! and seeded per target, so that a failure is reproduced by running the test again.

use dicomvault_native::fuzzing;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

/// xorshift64*: enough randomness for blind mutations, and no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four of libFuzzer's simplest mutations: a byte changed (to a random or a boundary
/// value), bytes inserted, a range erased or repeated, the tail cut.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] = rng.next() as u8;
            }
            1 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff][rng.below(6)];
            }
            2 => {
                let bytes: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
                data.splice(at..at, bytes);
            }
            3 => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            4 => {
                let end = (at + 1 + rng.below(64)).min(data.len());
                let repeated = data[at.min(end)..end].to_vec();
                data.splice(at..at, repeated);
            }
            _ => data.truncate(at),
        }
    }
    data
}

fn smoke_seconds() -> Duration {
    let seconds = std::env::var("DICOMVAULT_FUZZ_SMOKE_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(seconds)
}

fn replay(target: &str, body: impl Fn(&[u8])) {
    let inputs = inputs(target);
    for (path, bytes) in &inputs {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| body(bytes)));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
    }
    let seed = target.bytes().fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng(seed);
    let deadline = Instant::now() + smoke_seconds();
    let mut executions = 0u64;
    while Instant::now() < deadline {
        let (path, original) = &inputs[rng.below(inputs.len())];
        let data = mutate(&mut rng, original);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| body(&data)));
        executions += 1;
        if outcome.is_err() {
            let kept = std::env::temp_dir().join(format!("fuzz-smoke-{target}-{executions}"));
            std::fs::write(&kept, &data).expect("keeping the failing input");
            panic!(
                "{target}: a mutation of {} fails after {executions} executions; input kept in {}",
                path.display(),
                kept.display()
            );
        }
    }
    eprintln!("{target}: {executions} mutated executions, no failure");
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
