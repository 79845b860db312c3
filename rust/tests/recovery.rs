//! Damage in the packs never costs more than the damaged records: opening, rebuilding the
//! blob index, verify, gc and history skip and report a damaged record, set only a torn tail
//! aside (into the quarantine, never deleted), and a re-sent copy repairs what was damaged.

mod common;

use common::{instance, open, pack_files, pattern, store_bytes};
use dicomvault_native::cas::{
    BlobStore, HistoryKind, ReadInstances, Store, StoreConfig, StoreError,
};
use dicomvault_native::manifest::Manifest;
use dicomvault_native::pack::{self, RecordKind, PACK_HEADER_LEN};
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::path::Path;

fn exclusive() -> StoreConfig {
    StoreConfig {
        exclusive: true,
        ..StoreConfig::default()
    }
}

/// Five instances of two frames each, nothing shared between them.
fn five(store: &Store) -> Vec<(Vec<u8>, Manifest)> {
    (1..=5u8)
        .map(|i| {
            let data = instance(&format!("1.2.{i}"), "A^B", 2, i * 17);
            let (manifest, _) = store_bytes(store, &data, 1 << 20);
            (data, manifest)
        })
        .collect()
}

/// Where `needle` starts in the only pack.
fn find_in_pack(root: &Path, needle: &[u8]) -> (std::path::PathBuf, usize) {
    let path = pack_files(root)[0].clone();
    let bytes = fs::read(&path).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the bytes are in the pack");
    (path, at)
}

fn flip(path: &Path, offset: u64, mask: u8) {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ mask], offset).unwrap();
}

/// The second frame of instance `i` of [`five`], as its blob holds it.
fn frame_of(i: u8) -> Vec<u8> {
    pattern(16 * 16 * 2 * 2, i * 17)[512..].to_vec()
}

fn assert_damaged(store: &Store, manifest: &Manifest) {
    let err = store.read_instance(manifest, 0).unwrap_err();
    assert!(matches!(err, StoreError::Damaged(_)), "{err}");
}

#[test]
fn a_flipped_bit_mid_pack_costs_only_its_record_when_the_blob_index_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let stored = five(&open(dir.path(), StoreConfig::default()));
    let (pack, at) = find_in_pack(dir.path(), &frame_of(2));
    flip(&pack, at as u64 + 100, 0x04);
    let len = fs::metadata(&pack).unwrap().len();
    fs::remove_dir_all(dir.path().join("blobs")).unwrap();

    let store = open(dir.path(), StoreConfig::default());
    let messages = store.recovery_messages().join("\n");
    assert!(messages.contains("payload checksum mismatch"), "{messages}");
    assert_eq!(fs::metadata(&pack).unwrap().len(), len, "nothing was cut");
    for (i, (data, manifest)) in stored.iter().enumerate() {
        if i == 1 {
            assert_damaged(&store, manifest);
        } else {
            assert_eq!(&store.read_instance(manifest, 0).unwrap(), data);
        }
    }
    let damaged = manifest_hash_of_frame(&stored[1].1);
    assert!(
        !store.contains(&damaged).unwrap(),
        "a damaged blob is not de-duplicated against"
    );
    let report = store.verify().unwrap();
    assert_eq!(report.damaged.len(), 1, "{:?}", report.damaged);
    assert_eq!(report.damaged[0].hash, Some(damaged));
    assert!(!report.damaged[0].superseded);

    // Storing the instance again repairs it; the damaged record stays, superseded.
    store_bytes(&store, &stored[1].0, 1 << 20);
    assert_eq!(store.read_instance(&stored[1].1, 0).unwrap(), stored[1].0);
    let report = store.verify().unwrap();
    assert_eq!(report.damaged.len(), 1);
    assert!(report.damaged[0].superseded, "{:?}", report.damaged);
    drop(store);
    fs::remove_dir_all(dir.path().join("blobs")).unwrap();
    let store = open(dir.path(), StoreConfig::default());
    for (data, manifest) in &stored {
        assert_eq!(&store.read_instance(manifest, 0).unwrap(), data);
    }
}

fn manifest_hash_of_frame(manifest: &Manifest) -> [u8; 32] {
    manifest.frame_blobs(1).unwrap()[0].hash
}

#[test]
fn past_a_damaged_record_header_the_walk_resumes_at_the_next_record() {
    let dir = tempfile::tempdir().unwrap();
    let stored = five(&open(dir.path(), StoreConfig::default()));
    let (pack, at) = find_in_pack(dir.path(), &frame_of(3));
    // The record magic of the frame's record, 64 bytes before its payload.
    flip(&pack, at as u64 - 64, 0x20);
    let len = fs::metadata(&pack).unwrap().len();

    let store = open(dir.path(), exclusive());
    let report = store.rebuild_blob_index().unwrap();
    assert_eq!(report.damaged.len(), 1, "{:?}", report.damaged);
    assert_eq!(report.damaged[0].hash, None, "its header cannot be read");
    assert_eq!(report.damaged[0].offset, at as u64 - 64);
    assert!(report.damaged[0].quarantined.is_none());
    assert_eq!(fs::metadata(&pack).unwrap().len(), len, "nothing was cut");
    for (i, (data, manifest)) in stored.iter().enumerate() {
        if i == 2 {
            assert_damaged(&store, manifest);
        } else {
            assert_eq!(&store.read_instance(manifest, 0).unwrap(), data);
        }
    }
}

#[test]
fn a_pack_cut_short_is_walked_again_and_appending_resumes_at_a_record_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let stored = five(&open(dir.path(), StoreConfig::default()));
    let pack = pack_files(dir.path())[0].clone();
    let len = fs::metadata(&pack).unwrap().len();
    // Inside the last instance's frame record, well before the pack's end.
    let (_, at) = find_in_pack(dir.path(), &frame_of(5));
    let cut = at as u64 + 300;
    OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(cut)
        .unwrap();

    let store = open(dir.path(), StoreConfig::default());
    let messages = store.recovery_messages().join("\n");
    assert!(messages.contains("shorter"), "{messages}");
    assert!(messages.contains("torn tail"), "{messages}");
    let boundary = fs::metadata(&pack).unwrap().len();
    assert_eq!(
        boundary,
        at as u64 - 64,
        "cut where the broken record starts"
    );
    let quarantined = fs::read_dir(dir.path().join("quarantine"))
        .unwrap()
        .map(|e| fs::metadata(e.unwrap().path()).unwrap().len())
        .sum::<u64>();
    assert_eq!(quarantined, cut - boundary, "the cut bytes are set aside");
    assert!(len > cut);
    for (data, manifest) in &stored[..4] {
        assert_eq!(&store.read_instance(manifest, 0).unwrap(), data);
    }
    assert_damaged(&store, &stored[4].1);

    // New instances go after the boundary; the damaged one is repaired by storing it again.
    let more: Vec<_> = (6..=7u8)
        .map(|i| {
            let data = instance(&format!("1.2.{i}"), "C^D", 2, i * 17);
            let (m, _) = store_bytes(&store, &data, 1 << 20);
            (data, m)
        })
        .collect();
    store_bytes(&store, &stored[4].0, 1 << 20);
    drop(store);
    let store = open(dir.path(), exclusive());
    let report = store.rebuild_blob_index().unwrap();
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    for (data, manifest) in stored.iter().chain(&more) {
        assert_eq!(&store.read_instance(manifest, 0).unwrap(), data);
    }
    assert!(store.verify().unwrap().damaged.is_empty());
}

#[test]
fn gc_moves_damage_into_the_quarantine_instead_of_dropping_it() {
    let dir = tempfile::tempdir().unwrap();
    let stored = five(&open(dir.path(), StoreConfig::default()));
    let (pack, at) = find_in_pack(dir.path(), &frame_of(1));
    flip(&pack, at as u64 + 7, 0x80);
    let store = open(dir.path(), exclusive());
    assert_eq!(store.verify().unwrap().damaged.len(), 1);
    let live: Vec<Manifest> = stored.iter().map(|(_, m)| m.clone()).collect();
    let report = store.gc(Some(&live), None, |_| Ok(())).unwrap();
    assert_eq!(report.damaged.len(), 1, "{:?}", report.damaged);
    let moved = report.damaged[0].quarantined.clone().expect("set aside");
    assert_eq!(
        fs::metadata(&moved).unwrap().len(),
        report.damaged[0].len,
        "the whole record is in the quarantine"
    );
    assert_eq!(
        report.missing,
        vec![manifest_hash_of_frame(&stored[0].1)],
        "the damaged instance's blob is missing, nothing else"
    );
    for (data, manifest) in &stored[1..] {
        assert_eq!(&store.read_instance(manifest, 0).unwrap(), data);
    }
    assert!(
        store.verify().unwrap().damaged.is_empty(),
        "the packs are clean"
    );
}

#[test]
fn history_reports_a_manifest_record_that_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), StoreConfig::default());
    let stored = five(&store);
    let manifest = stored[3].1.encode();
    let (pack, at) = find_in_pack(dir.path(), &manifest);
    flip(&pack, at as u64 + 10, 0x01);
    let events = store.history(&HashMap::new(), true).unwrap();
    let damaged: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            HistoryKind::Damaged { kind, .. } => Some(*kind),
            _ => None,
        })
        .collect();
    assert_eq!(damaged, vec![Some(RecordKind::Manifest)]);
    let manifests = events
        .iter()
        .filter(|e| matches!(e.kind, HistoryKind::Manifest { .. }))
        .count();
    assert_eq!(manifests, 4, "the other four are replayed");
}

/// A small deterministic generator: the test needs no random crate to be reproducible.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn bytes_flipped_at_random_cost_only_the_records_they_hit() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        pack_size: 1 << 16,
        ..StoreConfig::default()
    };
    let stored: Vec<(Vec<u8>, Manifest)> = {
        let store = open(dir.path(), config.clone());
        (0..300u32)
            .map(|i| {
                let data = instance(&format!("1.3.{i}"), "R^X", 1 + i % 3, i as u8);
                let (m, _) = store_bytes(&store, &data, 1 << 20);
                (data, m)
            })
            .collect()
    };
    // Which record (by hash) covers each byte of each pack, before the damage.
    let mut records: Vec<(std::path::PathBuf, u64, u64, [u8; 32])> = Vec::new();
    for path in pack_files(dir.path()) {
        let file = File::open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        let walk = pack::walk(&file, PACK_HEADER_LEN, len, true).unwrap();
        assert!(walk.damaged.is_empty() && walk.torn.is_none());
        for f in walk.found {
            records.push((path.clone(), f.offset, f.header.record_len(), f.header.hash));
        }
    }
    let packs = pack_files(dir.path());
    let mut rng = Lcg(0x5eed);
    let mut hit: HashSet<[u8; 32]> = HashSet::new();
    for _ in 0..200 {
        let path = &packs[rng.next() as usize % packs.len()];
        let len = fs::metadata(path).unwrap().len();
        let offset = rng.next() % len;
        flip(path, offset, 1 << (rng.next() % 8));
        for (p, start, n, hash) in &records {
            if p == path && (*start..start + n).contains(&offset) {
                hit.insert(*hash);
            }
        }
    }
    let store = open(
        dir.path(),
        StoreConfig {
            exclusive: true,
            ..config
        },
    );
    store.verify().unwrap();
    let report = store.rebuild_blob_index().unwrap();
    assert!(!report.damaged.is_empty());
    drop(store);
    let store = open(dir.path(), StoreConfig::default());
    let mut intact = 0;
    for (data, manifest) in &stored {
        if manifest.blobs.iter().any(|b| hit.contains(&b.hash)) {
            continue;
        }
        intact += 1;
        assert_eq!(&store.read_instance(manifest, 0).unwrap(), data);
    }
    assert!(
        intact > stored.len() / 4,
        "{intact} instances escaped the damage"
    );
}
