//! The log on object storage: segments written once per batch and node, read back, replayed
//! across nodes by stamp and verified from the bucket alone, and the small blobs a node commits
//! in them read on another; in memory, in a directory and on a real SeaweedFS.

mod common;
#[path = "common/seaweedfs.rs"]
mod seaweedfs;

use common::{instance, large_instance, pattern};
use dicomvault_native::cas::{
    BlobStore, HistoryKind, InstanceWriter, LogRecord, ObjectBackend, ObjectBlobStore, ObjectLog,
    ObjectStoreConfig, ReadInstances, SegmentId, SegmentRecord, SegmentedBlobStore, Storage,
    StoreError, SEGMENT_BLOB_MAX,
};
use dicomvault_native::manifest::{Hash, Manifest};
use dicomvault_native::scan::ScanOptions;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `case` on a fresh store of every backend this machine has (SeaweedFS: see
/// `seaweedfs`), with the directory of the local one.
fn on_every_backend(case: impl Fn(ObjectBlobStore, Option<&std::path::Path>)) {
    case(
        ObjectBlobStore::open(&ObjectStoreConfig::new(ObjectBackend::InMemory)).unwrap(),
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let local = ObjectBackend::LocalFileSystem(dir.path().into());
    case(
        ObjectBlobStore::open(&ObjectStoreConfig::new(local)).unwrap(),
        Some(dir.path()),
    );
    if let Some(server) = seaweedfs::seaweedfs() {
        static LOGS: AtomicUsize = AtomicUsize::new(0);
        let config = ObjectStoreConfig {
            prefix: format!("log/{}", LOGS.fetch_add(1, Ordering::Relaxed)),
            ..ObjectStoreConfig::new(ObjectBackend::S3(server.s3_config()))
        };
        case(ObjectBlobStore::open(&config).unwrap(), None);
    }
}

fn ingest<S: BlobStore + Clone + 'static>(store: &S, data: &[u8]) -> Manifest {
    let options = ScanOptions {
        wanted: Vec::new(),
        transfer_syntax: None,
        allow_truncated: false,
    };
    let mut w = InstanceWriter::new(store.clone(), options);
    w.write(data).unwrap();
    w.finish().unwrap().manifest
}

fn hash(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

/// (stamp, node, position, target, whether a manifest) of every record the log's history
/// holds after `marks`.
fn replayed(log: &ObjectLog, marks: &[(u32, u64)]) -> Vec<(u64, u32, u64, Hash, bool)> {
    let after: HashMap<u32, u64> = marks.iter().copied().collect();
    log.history(&log.nodes().unwrap(), &after)
        .unwrap()
        .into_iter()
        .map(|e| {
            let manifest = matches!(e.kind, HistoryKind::Manifest { .. });
            (e.stamp, e.pack, e.end, e.target, manifest)
        })
        .collect()
}

#[test]
fn batches_read_back_as_written_in_segments_listed_in_order() {
    on_every_backend(|store, _| {
        let log = ObjectLog::open(&store, 7);
        let (a, b) = (pattern(10_000, 1), pattern(SEGMENT_BLOB_MAX, 2));
        let manifest = b"manifest bytes".as_slice();
        let (first, placed) = log
            .append(
                &[&a, &b],
                &[LogRecord::Manifest {
                    manifest,
                    annotations: b"notes",
                }],
            )
            .unwrap();
        assert_eq!(first.seq, 0);
        assert_eq!(log.read_blob(&placed[0]).unwrap(), a);
        assert_eq!(log.read_blob(&placed[1]).unwrap(), b);
        let (second, _) = log
            .append(
                &[],
                &[LogRecord::Tombstone {
                    manifest,
                    key: "1.2.3",
                }],
            )
            .unwrap();
        assert_eq!(second.seq, 1);
        assert_eq!(log.nodes().unwrap(), [7]);
        assert_eq!(
            log.segments(7, None, 10).unwrap(),
            [first.clone(), second.clone()]
        );
        assert_eq!(
            log.segments(7, Some(0), 10).unwrap(),
            std::slice::from_ref(&second)
        );
        assert_eq!(
            log.segments(7, None, 1).unwrap(),
            std::slice::from_ref(&first)
        );
        let records = log.read(&first).unwrap();
        assert_eq!(records.len(), 3);
        assert!(matches!(&records[0], SegmentRecord::Blob(at) if *at == placed[0]));
        assert!(matches!(&records[1], SegmentRecord::Blob(at) if *at == placed[1]));
        match &records[2] {
            SegmentRecord::Log {
                target,
                kind:
                    HistoryKind::Manifest {
                        annotations,
                        manifest: m,
                    },
                ..
            } => {
                assert_eq!(*target, hash(manifest));
                assert_eq!(
                    (annotations.as_slice(), m.as_slice()),
                    (b"notes".as_slice(), manifest)
                );
            }
            other => panic!("{other:?}"),
        }
        match &log.read(&second).unwrap()[..] {
            [SegmentRecord::Log {
                target,
                kind: HistoryKind::Tombstone { key },
                ..
            }] => assert_eq!((*target, key.as_str()), (hash(manifest), "1.2.3")),
            other => panic!("{other:?}"),
        }
        // A blob too long for a segment is an object of its own.
        let long = pattern(SEGMENT_BLOB_MAX + 1, 3);
        assert!(matches!(
            log.append(&[&long], &[]),
            Err(StoreError::Unsupported(_))
        ));
        // A process that starts later continues after the last segment.
        let restarted = ObjectLog::open(&store, 7);
        assert_eq!(restarted.append(&[], &[]).unwrap().0.seq, 2);
    });
}

#[test]
fn a_position_taken_by_another_writer_is_never_overwritten() {
    on_every_backend(|store, _| {
        // Two processes that both write as node 7 (a misconfiguration): each continues after
        // the last segment it knows of, and one finds its next position taken.
        let one = ObjectLog::open(&store, 7);
        let other = ObjectLog::open(&store, 7);
        assert_eq!(one.append(&[b"one"], &[]).unwrap().0.seq, 0);
        let (taken, _) = other.append(&[b"other"], &[]).unwrap();
        assert_eq!(taken.seq, 1);
        assert!(matches!(
            one.append(&[b"lost"], &[]),
            Err(StoreError::Busy(_))
        ));
        match &one.read(&taken).unwrap()[..] {
            [SegmentRecord::Blob(at)] => assert_eq!(one.read_blob(at).unwrap(), b"other"),
            other => panic!("{other:?}"),
        }
        // The one that found its position taken writes no more, so that the two never both
        // go on writing one node's log (and advancing its mark in the index).
        assert!(matches!(
            one.append(&[b"again"], &[]),
            Err(StoreError::Busy(_))
        ));
        assert_eq!(other.append(&[b"on"], &[]).unwrap().0.seq, 2);
        assert_eq!(one.segments(7, None, 10).unwrap().len(), 3);
    });
}

#[test]
fn replay_merges_the_nodes_by_stamp_and_verify_finds_what_is_missing() {
    on_every_backend(|store, dir| {
        let (a, b) = (ObjectLog::open(&store, 1), ObjectLog::open(&store, 2));
        let manifests: Vec<Manifest> = (0..3u8)
            .map(|i| ingest(&store, &instance(&format!("1.2.{i}"), "P^Q", 2, i)))
            .collect();
        let encoded: Vec<Vec<u8>> = manifests.iter().map(Manifest::encode).collect();
        let record = |i: usize| LogRecord::Manifest {
            manifest: &encoded[i],
            annotations: b"",
        };
        // The header blob of instance 2 goes into its segment instead of an object.
        let header = store.get(&manifests[2].blobs[0].hash).unwrap();
        assert!(header.len() <= SEGMENT_BLOB_MAX);
        a.append(&[], &[record(0)]).unwrap();
        b.append(&[], &[record(1)]).unwrap();
        a.append(&[&header], &[record(2)]).unwrap();
        assert!(store.delete(&manifests[2].blobs[0].hash).unwrap());
        b.append(
            &[],
            &[LogRecord::Tombstone {
                manifest: &encoded[0],
                key: "1.2.0",
            }],
        )
        .unwrap();
        let events = replayed(&a, &[]);
        let order: Vec<(u32, Hash, bool)> = events
            .iter()
            .map(|(_, node, _, target, m)| (*node, *target, *m))
            .collect();
        assert_eq!(
            order,
            [
                (1, hash(&encoded[0]), true),
                (2, hash(&encoded[1]), true),
                (1, hash(&encoded[2]), true),
                (2, hash(&encoded[0]), false),
            ]
        );
        assert!(events.windows(2).all(|w| w[0].0 < w[1].0), "stamps ascend");
        // Each node's positions ascend in the order it wrote; a replay resumes after a node's
        // mark, the other nodes' records all there.
        let positions: Vec<(u32, u64)> = events.iter().map(|e| (e.1, e.2)).collect();
        assert!(positions[0].1 < positions[2].1 && positions[1].1 < positions[3].1);
        let resumed = replayed(&a, &[positions[0], positions[1]]);
        assert_eq!(
            resumed.iter().map(|e| (e.1, e.2)).collect::<Vec<_>>(),
            [positions[2], positions[3]]
        );
        let resumed = replayed(&a, &[positions[2]]);
        assert_eq!(
            resumed.iter().map(|e| (e.1, e.2)).collect::<Vec<_>>(),
            [positions[1], positions[3]]
        );
        let report = a.verify().unwrap();
        assert_eq!(
            (
                report.segments,
                report.manifests,
                report.tombstones,
                report.small_blobs
            ),
            (4, 3, 1, 1)
        );
        assert!(
            report.damaged.is_empty()
                && report.missing.is_empty()
                && report.damaged_objects.is_empty(),
            "{report:?}"
        );
        // A frame of instance 1 lost: verify names it. Instance 0's are not needed (deleted).
        let lost = manifests[1].frame_blobs(1).unwrap()[0].hash;
        assert!(store.delete(&lost).unwrap());
        assert!(store
            .delete(&manifests[0].frame_blobs(0).unwrap()[0].hash)
            .unwrap());
        // And one whose object holds other bytes: verify reads every live object.
        let frame = manifests[1].frame_blobs(0).unwrap()[0];
        assert!(store.delete(&frame.hash).unwrap());
        assert!(store
            .put(frame.hash, &pattern(frame.length as usize, 99))
            .unwrap());
        let report = a.verify().unwrap();
        assert_eq!(report.missing, [(hash(&encoded[1]), lost)]);
        assert_eq!(report.damaged_objects.len(), 1);
        assert_eq!(report.damaged_objects[0].0, frame.hash);
        // A segment whose bytes changed is damaged, and verify says which.
        if let Some(dir) = dir {
            let path = dir.join("segments/2/00000000000000000000");
            let mut bytes = std::fs::read(&path).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            std::fs::write(&path, bytes).unwrap();
            let damaged = SegmentId { node: 2, seq: 0 };
            assert!(matches!(a.read(&damaged), Err(StoreError::Damaged(_))));
            let report = a.verify().unwrap();
            assert_eq!(report.damaged.len(), 1);
            assert_eq!(report.damaged[0].0, damaged);
            // Its records cannot be replayed: one damaged event past all of them.
            let events = a.history(&[1, 2], &HashMap::new()).unwrap();
            let damaged: Vec<_> = events
                .iter()
                .filter(|e| matches!(e.kind, HistoryKind::Damaged { .. }))
                .collect();
            assert_eq!(damaged.len(), 1);
            assert_eq!(damaged[0].pack, 2);
            assert!(damaged[0].end > positions[1].1 && damaged[0].end < positions[3].1);
            // A node still opens, and reads the small blobs of the segments that are intact.
            let reader = SegmentedBlobStore::open(&store, 3).unwrap();
            assert_eq!(reader.get(&manifests[2].blobs[0].hash).unwrap(), header);
        }
    });
}

#[test]
fn an_instance_committed_on_one_node_is_read_on_another() {
    on_every_backend(|objects, _| {
        // Both nodes are up before either writes.
        let a = SegmentedBlobStore::open(&objects, 1).unwrap();
        let b = SegmentedBlobStore::open(&objects, 2).unwrap();
        let data = large_instance("1.2.3", 2, 5);
        let manifest = ingest(&a, &data);
        let small: Vec<_> = manifest
            .blobs
            .iter()
            .filter(|blob| blob.length as usize <= SEGMENT_BLOB_MAX)
            .collect();
        assert!(!small.is_empty(), "the header is a small blob");
        a.commit(&[LogRecord::Manifest {
            manifest: &manifest.encode(),
            annotations: b"",
        }])
        .unwrap();
        for blob in &small {
            assert!(
                !objects.contains(&blob.hash).unwrap(),
                "in the segment, not an object"
            );
        }
        assert_eq!(b.read_instance(&manifest, 0).unwrap(), data);
        assert_eq!(
            b.read_instance(&manifest, manifest.dataset_offset).unwrap(),
            data[manifest.dataset_offset as usize..]
        );
        let report = b.log().verify().unwrap();
        assert_eq!(
            (report.segments, report.manifests, report.small_blobs),
            (1, 1, small.len())
        );
        assert!(
            report.damaged.is_empty()
                && report.missing.is_empty()
                && report.damaged_objects.is_empty(),
            "{report:?}"
        );
        // The same instance through node b: nothing new, nothing but its record to write.
        let again = ingest(&b, &data);
        assert_eq!(again, manifest);
        b.commit(&[]).unwrap();
        assert_eq!(b.log().verify().unwrap().small_blobs, small.len());
    });
}

#[test]
fn the_archive_storage_on_objects_resumes_within_a_segment() {
    on_every_backend(|objects, _| {
        let storage = Storage::on_objects(&objects, 3, Vec::new()).unwrap();
        let manifests: Vec<Vec<u8>> = (0..2u8)
            .map(|i| ingest(&storage, &instance(&format!("1.2.{i}"), "P^Q", 1, i)).encode())
            .collect();
        let records: Vec<LogRecord<'_>> = manifests
            .iter()
            .map(|manifest| LogRecord::Manifest {
                manifest,
                annotations: b"",
            })
            .collect();
        // One batch, one segment: two positions of node 3, in the order written.
        let positions = storage.append_log(&records).unwrap();
        assert_eq!(positions.len(), 2);
        assert!(positions[0].0 == 3 && positions[1].0 == 3 && positions[0].1 < positions[1].1);
        let after = |marks: &[(u32, u64)]| -> Vec<(u32, u64, Hash)> {
            let marks: HashMap<u32, u64> = marks.iter().copied().collect();
            let events = storage.history(&marks, false).unwrap();
            events
                .into_iter()
                .map(|e| (e.pack, e.end, e.target))
                .collect()
        };
        let all = after(&[]);
        assert_eq!(
            all,
            [
                (3, positions[0].1, hash(&manifests[0])),
                (3, positions[1].1, hash(&manifests[1]))
            ]
        );
        assert_eq!(after(&[positions[0]]), all[1..]);
        assert!(after(&[positions[1]]).is_empty());
        // Another process on the same objects reads the instances back whole.
        let other = Storage::on_objects(&objects, 4, Vec::new()).unwrap();
        for (i, encoded) in manifests.iter().enumerate() {
            let manifest = Manifest::decode(encoded).unwrap();
            let data = instance(&format!("1.2.{i}"), "P^Q", 1, i as u8);
            assert_eq!(other.read_instance(&manifest, 0).unwrap(), data);
        }
    });
}
