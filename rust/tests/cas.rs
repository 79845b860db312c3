mod common;

use common::{instance, large_instance, open, pack_files, pattern, store_bytes, Builder};
use dicomvault_native::cas::{
    BlobStore, GcEvent, HistoryKind, ReadInstances, Storage, Store, StoreConfig, SyncMode,
};
use dicomvault_native::manifest::{BlobRef, Manifest};
use dicomvault_native::pack::Codec;
use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

#[test]
fn stored_instances_read_back_byte_identical_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let data = instance("1.2.3", "A^B", 4, 1);
    let manifest = {
        let store = open(dir.path(), StoreConfig::default());
        let (manifest, new_bytes) = store_bytes(&store, &data, 100);
        assert_eq!(new_bytes, data.len() as u64);
        assert_eq!(store.read_instance(&manifest, 0).unwrap(), data);
        assert_eq!(manifest.frame_count(), 4);
        manifest
    };
    let store = open(dir.path(), StoreConfig::default());
    assert!(store.recovery_messages().is_empty());
    assert_eq!(store.read_instance(&manifest, 0).unwrap(), data);
    let frame = store.read_frame(&manifest, 2).unwrap();
    assert_eq!(frame, pattern(16 * 16 * 2 * 4, 1)[2 * 512..3 * 512]);
    assert_eq!(
        store
            .read_instance(&manifest, manifest.dataset_offset)
            .unwrap(),
        data[manifest.dataset_offset as usize..]
    );
    let records = store.history(&HashMap::new(), true).unwrap();
    assert_eq!(records.len(), 1);
    let HistoryKind::Manifest {
        annotations,
        manifest: bytes,
    } = &records[0].kind
    else {
        panic!("a manifest record")
    };
    assert_eq!(annotations, b"note");
    assert_eq!(Manifest::decode(bytes).unwrap(), manifest);
}

#[test]
fn a_torn_tail_is_cut_at_open_and_earlier_records_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let data = instance("1.2.3", "A^B", 1, 3);
    let (manifest, good_len) = {
        let store = open(dir.path(), StoreConfig::default());
        let (m, _) = store_bytes(&store, &data, 1 << 20);
        (m, fs::metadata(&pack_files(dir.path())[0]).unwrap().len())
    };
    // A crash in the middle of appending the next record: a header and half a payload.
    let pack = pack_files(dir.path())[0].clone();
    let mut f = OpenOptions::new().append(true).open(&pack).unwrap();
    f.write_all(b"DVRC\0\0\0\0").unwrap();
    f.write_all(&[0xAB; 300]).unwrap();
    drop(f);
    let store = open(dir.path(), StoreConfig::default());
    assert_eq!(
        store.recovery_messages().len(),
        1,
        "{:?}",
        store.recovery_messages()
    );
    assert_eq!(fs::metadata(&pack).unwrap().len(), good_len);
    // The cut bytes are set aside, not deleted.
    let quarantined: Vec<_> = fs::read_dir(dir.path().join("quarantine"))
        .unwrap()
        .map(|e| fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].len(), 308);
    assert!(quarantined[0].starts_with(b"DVRC"));
    assert_eq!(store.read_instance(&manifest, 0).unwrap(), data);
    // Appending after the cut works and the pack stays consistent.
    let other = instance("4.5.6", "C^D", 1, 4);
    let (m2, _) = store_bytes(&store, &other, 1 << 20);
    assert_eq!(store.read_instance(&m2, 0).unwrap(), other);
    assert!(store.verify().unwrap().damaged.is_empty());
}

#[test]
fn verify_finds_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), StoreConfig::default());
    let data = instance("1.2.3", "A^B", 2, 5);
    let (manifest, _) = store_bytes(&store, &data, 1 << 20);
    assert!(store.verify().unwrap().damaged.is_empty());
    let pack = pack_files(dir.path())[0].clone();
    let mut bytes = fs::read(&pack).unwrap();
    let frame = &pattern(16 * 16 * 2 * 2, 5)[512..];
    let at = bytes
        .windows(frame.len())
        .position(|w| w == frame)
        .expect("frame 1 is in the pack");
    bytes[at + 100] ^= 0x01;
    fs::write(&pack, &bytes).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.damaged.len(), 1, "{:?}", report.damaged);
    assert_eq!(
        report.damaged[0].hash,
        Some(manifest.frame_blobs(1).unwrap()[0].hash)
    );
    assert!(
        store.read_instance(&manifest, 0).is_err(),
        "a damaged blob is never served"
    );
}

#[test]
fn tombstoned_manifests_are_not_replayed_and_gc_reclaims_their_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let (keep, drop_) = (instance("1.1", "Keep", 2, 1), instance("2.2", "Drop", 2, 2));
    let (mk, md) = {
        let store = open(dir.path(), StoreConfig::default());
        let (mk, _) = store_bytes(&store, &keep, 1 << 20);
        let (md, _) = store_bytes(&store, &drop_, 1 << 20);
        Storage::from(store.clone())
            .tombstone(&[(md.encode(), "2.2".to_string())])
            .unwrap();
        let kinds: Vec<bool> = store
            .history(&HashMap::new(), true)
            .unwrap()
            .iter()
            .map(|e| matches!(e.kind, HistoryKind::Tombstone { .. }))
            .collect();
        assert_eq!(
            kinds,
            vec![false, false, true],
            "two manifests, then a tombstone"
        );
        (mk, md)
    };
    let store = open(
        dir.path(),
        StoreConfig {
            exclusive: true,
            ..StoreConfig::default()
        },
    );
    let before: u64 = pack_files(dir.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    let report = store
        .gc(Some(std::slice::from_ref(&mk)), None, |_| Ok(()))
        .unwrap();
    assert!(report.missing.is_empty());
    assert!(report.bytes_after < before);
    assert_eq!(store.read_instance(&mk, 0).unwrap(), keep);
    assert!(
        store.read_instance(&md, 0).is_err(),
        "dropped blobs are gone"
    );
    let left = store.history(&HashMap::new(), true).unwrap();
    assert_eq!(
        left.len(),
        1,
        "gc keeps the live manifest and drops the rest"
    );
    assert_eq!(left[0].target, *blake3::hash(&mk.encode()).as_bytes());
    assert!(store.verify().unwrap().damaged.is_empty());
    drop(store);
    // Rebuilding the blob index from the packs alone finds the same instance.
    let store = open(
        dir.path(),
        StoreConfig {
            exclusive: true,
            ..StoreConfig::default()
        },
    );
    store.rebuild_blob_index().unwrap();
    assert_eq!(store.read_instance(&mk, 0).unwrap(), keep);
}

#[test]
fn gc_and_reindex_need_the_archive_to_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let shared = open(dir.path(), StoreConfig::default());
    assert!(shared.gc(Some(&[]), None, |_| Ok(())).is_err());
    assert!(Store::open(
        dir.path(),
        StoreConfig {
            exclusive: true,
            ..StoreConfig::default()
        }
    )
    .is_err());
}

#[test]
fn zstd_blobs_round_trip_and_packs_roll_over() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        codec: Codec::Zstd,
        pack_size: 1 << 16,
        sync: SyncMode::Never,
        ..StoreConfig::default()
    };
    let store = open(dir.path(), config);
    let mut manifests = Vec::new();
    let mut state = 0x2545_F491_u32;
    for i in 0..40u8 {
        // Even instances compress (zeros and a marker), odd ones do not (xorshift noise).
        let pixels: Vec<u8> = (0..16 * 16 * 2 * 8)
            .map(|j| {
                if i % 2 == 0 {
                    u8::from(j == 0) * i
                } else {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as u8
                }
            })
            .collect();
        let mut b = Builder::part10("1.2.840.10008.1.2.1");
        b.text(0x0008_0018, b"UI", &format!("1.{i}"))
            .image_header(16, 16, 8)
            .native_pixels(&pixels);
        let (m, _) = store_bytes(&store, &b.bytes, 999);
        manifests.push((m, b.bytes));
    }
    let packs = pack_files(dir.path());
    assert!(packs.len() >= 2, "64 KiB packs must roll over");
    let stored: u64 = packs.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    let raw: u64 = manifests.iter().map(|(_, d)| d.len() as u64).sum();
    assert!(
        stored < raw * 3 / 4,
        "zstd must shrink the compressible half ({stored} of {raw})"
    );
    for (m, data) in &manifests {
        assert_eq!(&store.read_instance(m, 0).unwrap(), data);
    }
    assert!(store.verify().unwrap().damaged.is_empty());
}

/// Stores `per_thread` instances from each of `threads` threads at once, then reopens the
/// store and checks every instance reads back as it was sent.
fn store_concurrently(
    threads: u8,
    per_thread: u8,
    chunk: usize,
    make: fn(&str, u8) -> Vec<u8>,
) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), StoreConfig::default());
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|i| {
                        let data = make(&format!("{t}.{i}"), t * 16 + i);
                        let (m, _) = store_bytes(&store, &data, chunk);
                        (m, data)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    drop(store);
    let store = open(dir.path(), StoreConfig::default());
    assert!(store.recovery_messages().is_empty());
    for (m, data) in &all {
        assert_eq!(&store.read_instance(m, 0).unwrap(), data);
    }
    (dir, store)
}

#[test]
fn concurrent_writers_share_the_store() {
    let (_dir, store) = store_concurrently(4, 10, 777, |sop, seed| instance(sop, "P", 2, seed));
    assert_eq!(store.history(&HashMap::new(), true).unwrap().len(), 40);
}

#[test]
fn history_lists_records_after_a_mark_with_their_positions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), StoreConfig::default());
    let (first, _) = store_bytes(&store, &instance("1.1", "A", 1, 1), 1 << 20);
    let all = store.history(&HashMap::new(), true).unwrap();
    assert_eq!(all.len(), 1);
    let mark = HashMap::from([(all[0].pack, all[0].end)]);
    assert!(store.history(&mark, true).unwrap().is_empty());
    let ends = Storage::from(store.clone())
        .tombstone(&[(first.encode(), "1.1".into())])
        .unwrap();
    let after = store.history(&mark, true).unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!((after[0].pack, after[0].end), ends[0]);
    assert!(matches!(&after[0].kind, HistoryKind::Tombstone { key } if key == "1.1"));
}

fn packs_len(root: &Path) -> u64 {
    pack_files(root)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn large_frames_stream_into_the_packs_and_a_resent_instance_adds_only_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let data = large_instance("1.2.3", 3, 7);
    let store = open(dir.path(), StoreConfig::default());
    let (manifest, new_bytes) = store_bytes(&store, &data, 16 << 10);
    assert_eq!(new_bytes, data.len() as u64);
    assert_eq!(manifest.frame_count(), 3);
    assert_eq!(store.read_instance(&manifest, 0).unwrap(), data);
    let before = packs_len(dir.path());
    let (again, new_bytes) = store_bytes(&store, &data, 100_000);
    assert_eq!((again, new_bytes), (manifest.clone(), 0));
    // The re-sent frames were taken back out of the pack: only a manifest record was added.
    assert!(packs_len(dir.path()) - before < 1024);
    drop(store);
    let store = open(dir.path(), StoreConfig::default());
    assert!(store.recovery_messages().is_empty());
    assert_eq!(store.read_instance(&manifest, 0).unwrap(), data);
    assert!(store.verify().unwrap().damaged.is_empty());
}

#[test]
fn an_abandoned_instance_leaves_its_pack_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), StoreConfig::default());
    let first = large_instance("1.2.3", 1, 1);
    let (m1, _) = store_bytes(&store, &first, 1 << 20);
    let before = packs_len(dir.path());
    let broken = large_instance("1.2.4", 2, 2);
    let storage = Storage::from(store.clone());
    let mut w = storage.writer(storage.file_options());
    w.write(&broken[..broken.len() - 600_000]).unwrap();
    // The association broke half-way through the first frame. What stays is the header's
    // blob, a complete record (gc reclaims it), not the frame.
    drop((w, storage));
    assert!(packs_len(dir.path()) - before < 1024);
    let second = large_instance("1.2.5", 2, 3);
    let (m2, _) = store_bytes(&store, &second, 1 << 20);
    drop(store);
    let store = open(dir.path(), StoreConfig::default());
    assert!(store.recovery_messages().is_empty());
    assert_eq!(store.read_instance(&m1, 0).unwrap(), first);
    assert_eq!(store.read_instance(&m2, 0).unwrap(), second);
}

#[test]
fn a_crash_while_a_frame_streams_in_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let first = large_instance("1.2.3", 1, 1);
    let (m1, good_len) = {
        let store = open(dir.path(), StoreConfig::default());
        let (m1, _) = store_bytes(&store, &first, 1 << 20);
        (m1, packs_len(dir.path()))
    };
    // What a pack holds when the process dies while a frame streams in: the frame's first
    // bytes after the place kept for its record header, which is never written.
    let pack = pack_files(dir.path())[0].clone();
    let mut f = OpenOptions::new().append(true).open(&pack).unwrap();
    f.write_all(&[0; 64]).unwrap();
    f.write_all(&pattern(300_000, 9)).unwrap();
    drop(f);
    let store = open(dir.path(), StoreConfig::default());
    assert_eq!(store.recovery_messages().len(), 1);
    assert_eq!(packs_len(dir.path()), good_len);
    assert_eq!(store.read_instance(&m1, 0).unwrap(), first);
}

#[test]
fn concurrent_writers_stream_large_frames_into_packs_of_their_own() {
    let (_dir, store) =
        store_concurrently(3, 4, 64 << 10, |sop, seed| large_instance(sop, 1, seed));
    assert!(store.verify().unwrap().damaged.is_empty());
}

#[test]
fn repack_while_readers_read_and_writers_store() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        pack_size: 1 << 14,
        ..StoreConfig::default()
    };
    let store = open(dir.path(), config.clone());
    let before: Vec<(Manifest, Vec<u8>)> = (0..40u8)
        .map(|i| {
            let data = instance(&format!("1.{i}"), "BEFORE", 4, i);
            (store_bytes(&store, &data, 1000).0, data)
        })
        .collect();
    let plain = packs_len(dir.path());
    let repacking = AtomicBool::new(true);
    let mut events = Vec::new();
    let (report, reads, during) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut reads = 0;
            while reads < before.len() || repacking.load(Ordering::Relaxed) {
                let (m, data) = &before[reads % before.len()];
                assert_eq!(&store.read_instance(m, 0).unwrap(), data);
                reads += 1;
            }
            reads
        });
        let writer = s.spawn(|| {
            let mut during = Vec::new();
            for i in 0u8.. {
                if !repacking.load(Ordering::Relaxed) && i > 4 {
                    break;
                }
                // Every other instance streams its frames, holding a pack while they arrive.
                let data = if i % 2 == 0 {
                    instance(&format!("2.{i}"), "DURING", 2, i)
                } else {
                    large_instance(&format!("3.{i}"), 1, i)
                };
                during.push((store_bytes(&store, &data, 4096).0, data));
            }
            during
        });
        let report = store
            .gc(None, Some((Codec::Zstd, 3)), |event| {
                events.push(event);
                // Let the reader and the writer run between packs, as a busy archive would.
                std::thread::sleep(std::time::Duration::from_millis(2));
                Ok(())
            })
            .unwrap();
        repacking.store(false, Ordering::Relaxed);
        (report, reader.join().unwrap(), writer.join().unwrap())
    });
    assert!(report.missing.is_empty(), "{report:?}");
    assert!(report.packs_rewritten > 5, "{report:?}");
    assert!(report.bytes_after < report.bytes_before, "{report:?}");
    assert!(reads >= before.len());
    // Every pack written into was claimed before anything went into it.
    let claimed: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            GcEvent::Claim(id) => Some(*id),
            GcEvent::Rewritten { .. } => None,
        })
        .collect();
    assert!(!claimed.is_empty());
    assert!(
        packs_len(dir.path()) < plain + during.iter().map(|(_, d)| d.len() as u64).sum::<u64>()
    );
    assert!(store.verify().unwrap().damaged.is_empty());
    let all: Vec<_> = before.iter().chain(&during).collect();
    for (m, data) in &all {
        assert_eq!(&store.read_instance(m, 0).unwrap(), data);
    }
    assert_eq!(
        store.history(&HashMap::new(), true).unwrap().len(),
        all.len(),
        "every manifest record is kept, once"
    );
    drop(store);
    let store = open(dir.path(), config);
    assert!(store.recovery_messages().is_empty());
    for (m, data) in &all {
        assert_eq!(&store.read_instance(m, 0).unwrap(), data);
    }
    assert!(store.verify().unwrap().damaged.is_empty());
}

#[test]
fn received_at_is_utc_with_microseconds_across_leap_days_and_centuries() {
    use dicomvault_native::cas::utc_timestamp;
    use std::time::{Duration, UNIX_EPOCH};
    for (secs, micros, expected) in [
        (0, 0, "1970-01-01T00:00:00.000000Z"),
        (1_709_251_199, 1, "2024-02-29T23:59:59.000001Z"),
        (1_795_979_674, 123_456, "2026-11-29T19:14:34.123456Z"),
        (4_107_585_600, 500_000, "2100-03-01T12:00:00.500000Z"),
    ] {
        let time = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros);
        assert_eq!(utc_timestamp(time), expected);
    }
}

#[test]
fn the_packs_list_only_blobs_and_gc_reclaims_a_deleted_one() {
    let dir = tempfile::tempdir().unwrap();
    let sorted = |blobs: &[BlobRef]| {
        let mut v = blobs.to_vec();
        v.sort_by_key(|b| b.hash);
        v.dedup();
        v
    };
    let keep = instance("1.1", "Keep", 2, 1);
    let (mk, mo) = {
        let store = open(dir.path(), StoreConfig::default());
        let (mk, _) = store_bytes(&store, &keep, 1 << 20);
        let (mo, _) = store_bytes(&store, &instance("2.2", "Other", 2, 2), 1 << 20);
        Storage::from(store.clone())
            .tombstone(&[(mo.encode(), "2.2".to_string())])
            .unwrap();
        // The blob index also finds the manifest and tombstone records: they are no blobs.
        let all: Vec<BlobRef> = mk.blobs.iter().chain(&mo.blobs).copied().collect();
        assert_eq!(store.list(None, 100).unwrap(), sorted(&all));
        for blob in &mo.blobs {
            assert!(store.delete(&blob.hash).unwrap());
        }
        (mk, mo)
    };
    let store = open(dir.path(), StoreConfig::default());
    assert_eq!(store.list(None, 100).unwrap(), sorted(&mk.blobs));
    let report = store.gc(None, None, |_| Ok(())).unwrap();
    assert_eq!(report.records_dropped, mo.blobs.len() as u64, "{report:?}");
    assert_eq!(store.read_instance(&mk, 0).unwrap(), keep);
    assert_eq!(store.history(&HashMap::new(), true).unwrap().len(), 3);
    assert_eq!(store.list(None, 100).unwrap(), sorted(&mk.blobs));
    assert!(store.verify().unwrap().damaged.is_empty());
}
