//! The archive's storage as one handle over its two backends: local packs, or an object store
//! (S3) holding large blobs as objects and each commit batch as a segment of the node's log.
//!
//! Both are a [`BlobStore`] (what instances are streamed in and read through) with a log of
//! manifest and tombstone records the index is made from. A record's place in the log is a
//! position `(log, end)` the index keeps as its replay mark: for packs, the pack and the offset
//! just past the record; for an object store, the node that wrote it and its segment and
//! number there (see `object::log`). gc is the backend's own: packs are rewritten
//! ([`Store::gc`]), unreferenced objects collected ([`Storage::collect`]); what only the packs
//! can do (repacking, rebuilding the blob index) is refused on an object store.

use super::blobs::{BlobStore, BlobWriter};
use super::history::{HistoryEvent, HistoryKind};
use super::ingest::{Ingested, InstanceWriter};
use super::object::{Collected, ObjectBlobStore, SegmentedBlobStore};
use super::{invalid, DamageReport, LogRecord, Result, Store, StoreError, VerifyReport};
use crate::manifest::{BlobRef, Hash, Manifest};
use crate::scan::{FeedError, ScanOptions};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// Where a log record ends: (pack, offset) or (node, segment and record).
pub type Position = (u32, u64);

/// The archive's storage; cheap to clone and safe to share between threads.
#[derive(Clone)]
pub enum Storage {
    Packs(Store),
    Objects(Objects),
}

/// A node's blobs and log on an object store.
#[derive(Clone)]
pub struct Objects {
    blobs: SegmentedBlobStore,
    wanted: Arc<[(u32, [u8; 2])]>,
}

impl From<Store> for Storage {
    fn from(store: Store) -> Storage {
        Storage::Packs(store)
    }
}

impl Storage {
    /// Node `node`'s storage on `objects` (every node of an archive has its own number: two
    /// processes writing as one node fail their commits, Busy, instead of overwriting).
    pub fn on_objects(
        objects: &ObjectBlobStore,
        node: u32,
        mut wanted: Vec<(u32, [u8; 2])>,
    ) -> Result<Storage> {
        super::add_identity_tags(&mut wanted);
        Ok(Storage::Objects(Objects {
            blobs: SegmentedBlobStore::open(objects, node)?,
            wanted: wanted.into(),
        }))
    }

    fn blobs(&self) -> &dyn BlobStore {
        match self {
            Storage::Packs(store) => store,
            Storage::Objects(objects) => &objects.blobs,
        }
    }

    /// The packs, for what only they can do.
    pub fn packs(&self, what: &str) -> Result<&Store> {
        match self {
            Storage::Packs(store) => Ok(store),
            Storage::Objects(_) => Err(StoreError::Unsupported(format!(
                "{what} is not built for an archive on object storage yet ([storage] backend = \
                 \"s3\")"
            ))),
        }
    }

    /// The tags whose values ingest collects.
    pub fn wanted(&self) -> &[(u32, [u8; 2])] {
        match self {
            Storage::Packs(store) => &store.config().wanted,
            Storage::Objects(objects) => &objects.wanted,
        }
    }

    /// What opening the store found and repaired.
    pub fn recovery_messages(&self) -> &[String] {
        match self {
            Storage::Packs(store) => store.recovery_messages(),
            Storage::Objects(_) => &[],
        }
    }

    /// StorageFull below the packs' free-space reserve (an object store has none to keep).
    pub fn check_space(&self) -> Result<()> {
        match self {
            Storage::Packs(store) => store.check_space(),
            Storage::Objects(_) => Ok(()),
        }
    }

    /// Starts streaming one instance in.
    pub fn writer(&self, options: ScanOptions) -> InstanceWriter<Storage> {
        InstanceWriter::new(self.clone(), options)
    }

    /// Options for ingesting a file: its transfer syntax comes from File Meta, truncation of a
    /// file that has File Meta is recorded rather than refused.
    pub fn file_options(&self) -> ScanOptions {
        ScanOptions {
            wanted: self.wanted().to_vec(),
            transfer_syntax: None,
            allow_truncated: true,
        }
    }

    /// Streams a file in (not yet durable: see [`Storage::append_log`]).
    pub fn ingest_file(&self, path: &Path) -> std::result::Result<Ingested, FeedError> {
        self.writer(self.file_options()).write_file(path)
    }

    /// Appends `records` to the log in their order and makes them, and every blob put
    /// before, durable; returns where each ends.
    pub fn append_log(&self, records: &[LogRecord<'_>]) -> Result<Vec<Position>> {
        match self {
            Storage::Packs(store) => store.append_log(records),
            Storage::Objects(objects) => {
                let segment = objects.blobs.commit(records)?;
                Ok((1..=records.len() as u64)
                    .map(|n| segment.position(n))
                    .collect())
            }
        }
    }

    /// Appends the manifest records of accepted instances (with the caller's annotations:
    /// receive time, source) and makes them and their blobs durable; returns where each ends.
    pub fn persist(&self, items: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<Position>> {
        let records: Vec<LogRecord<'_>> = items
            .iter()
            .map(|(manifest, annotations)| LogRecord::Manifest {
                manifest,
                annotations,
            })
            .collect();
        self.append_log(&records)
    }

    /// Records that instances (manifest, index key) were deleted, so that rebuilding or
    /// replaying the index from the log does not bring them back, and makes that durable.
    pub fn tombstone(&self, items: &[(Vec<u8>, String)]) -> Result<Vec<Position>> {
        let records: Vec<LogRecord<'_>> = items
            .iter()
            .map(|(manifest, key)| LogRecord::Tombstone { manifest, key })
            .collect();
        self.append_log(&records)
    }

    /// Manifest and tombstone records after the `after` marks, oldest first, that are this
    /// process's to replay: in the packs no other process is appending to (see
    /// [`Store::history`]); on an object store, this node's own log. Another node's records
    /// are that node's to index, as it writes them or when it restarts: replayed here they
    /// could race its applier and bring back an instance it has just deleted.
    ///
    /// `every_node` reads every node's log on an object store: to rebuild the index from the
    /// bucket alone, with every node stopped.
    pub fn history(
        &self,
        after: &HashMap<u32, u64>,
        every_node: bool,
    ) -> Result<Vec<HistoryEvent>> {
        match self {
            Storage::Packs(store) => store.history(after, true),
            Storage::Objects(objects) => {
                let log = objects.blobs.log();
                let nodes = if every_node {
                    log.nodes()?
                } else {
                    vec![log.node()]
                };
                log.history(&nodes, after)
            }
        }
    }

    /// On an object store, whether a segment of this node's whose put had failed, found
    /// written since, lies before the log position `before` (`ObjectLog::take_landed`);
    /// never on packs, whose appends are not in doubt.
    pub fn take_landed(&self, before: u64) -> bool {
        match self {
            Storage::Packs(_) => false,
            Storage::Objects(objects) => objects.blobs.log().take_landed(before),
        }
    }

    /// gc on an object store (see [`ObjectBlobStore::collect`]): live are the blobs that
    /// `manifests` (the index's) reference and those of every node's log records after the
    /// `marks` the index has applied — a killed node's acknowledged instances are indexed only
    /// once it restarts, and their blobs must outlive that. A damaged segment past the marks
    /// refuses the gc: what its manifests reference is unknown.
    pub fn collect(
        &self,
        manifests: &[Manifest],
        marks: &HashMap<u32, u64>,
        trash_before: SystemTime,
        delete_before: SystemTime,
    ) -> Result<Collected> {
        let objects = match self {
            Storage::Packs(_) => {
                return Err(StoreError::Unsupported(
                    "collecting objects is gc on object storage; packs are rewritten".into(),
                ))
            }
            Storage::Objects(objects) => objects,
        };
        let mut live: HashSet<Hash> = manifests
            .iter()
            .flat_map(|m| m.blobs.iter().map(|b| b.hash))
            .collect();
        let log = objects.blobs.log();
        for event in log.history(&log.nodes()?, marks)? {
            match &event.kind {
                HistoryKind::Manifest { manifest, .. } => {
                    let manifest =
                        Manifest::decode(manifest).map_err(|e| invalid(e.to_string()))?;
                    live.extend(manifest.blobs.iter().map(|b| b.hash));
                }
                HistoryKind::Tombstone { .. } => {}
                HistoryKind::Damaged { why, .. } => {
                    return Err(StoreError::Damaged(format!(
                        "gc refused: node {}'s log has a damaged segment not indexed yet \
                         ({why}); run verify",
                        event.pack
                    )))
                }
            }
        }
        objects
            .blobs
            .objects()
            .collect(&live, trash_before, delete_before)
    }

    /// A checkpoint: for packs, everything forced to disk. Nothing on an object store, which
    /// acknowledges a write once durable: what was committed is, and small blobs still held
    /// go with the next commit (written now, those of a refused instance would only be
    /// garbage).
    pub fn sync(&self) -> Result<()> {
        match self {
            Storage::Packs(store) => store.sync(),
            Storage::Objects(_) => Ok(()),
        }
    }

    /// Pack count, bytes in packs and records in the blob index (none on an object store).
    pub fn pack_stats(&self) -> Result<(u64, u64, u64)> {
        match self {
            Storage::Packs(store) => store.stats(),
            Storage::Objects(_) => Ok((0, 0, 0)),
        }
    }

    /// Re-reads and checks everything stored: every pack record; or every segment of every
    /// node and every object a live manifest of the log references.
    pub fn verify(&self) -> Result<VerifyReport> {
        let objects = match self {
            Storage::Packs(store) => return store.verify(),
            Storage::Objects(objects) => objects,
        };
        let log = objects.blobs.log();
        let report = log.verify()?;
        let segments = report
            .damaged
            .iter()
            .map(|(id, why)| DamageReport::in_object(log.segment_key(id), None, why.clone()));
        let key = |hash: &Hash| objects.blobs.objects().blob_key(hash);
        let blobs = report
            .damaged_objects
            .iter()
            .map(|(hash, why)| DamageReport::in_object(key(hash), Some(*hash), why.clone()));
        let missing = report.missing.iter().map(|(manifest, hash)| {
            let why = format!("missing: manifest {} references it", super::hex(manifest));
            DamageReport::in_object(key(hash), Some(*hash), why)
        });
        Ok(VerifyReport {
            records_checked: (report.manifests
                + report.tombstones
                + report.small_blobs
                + report.objects) as u64,
            bytes_checked: report.bytes,
            damaged: segments.chain(blobs).chain(missing).collect(),
        })
    }

    /// A blob's bytes even when it fails its checks (packs only: what is left of a damaged
    /// record); the flag says they were salvaged.
    pub fn salvage_blob(&self, hash: &Hash) -> Result<(Vec<u8>, bool)> {
        match self {
            Storage::Packs(store) => store.salvage_blob(hash),
            Storage::Objects(objects) => objects.blobs.get(hash).map(|bytes| (bytes, false)),
        }
    }
}

impl BlobStore for Storage {
    fn put(&self, hash: Hash, bytes: &[u8]) -> Result<bool> {
        self.blobs().put(hash, bytes)
    }

    fn stream_blob(&self) -> Result<Option<Box<dyn BlobWriter>>> {
        self.blobs().stream_blob()
    }

    fn get(&self, hash: &Hash) -> Result<Vec<u8>> {
        self.blobs().get(hash)
    }

    fn get_range(&self, blob: &BlobRef, range: Range<u64>) -> Result<Vec<u8>> {
        self.blobs().get_range(blob, range)
    }

    fn contains(&self, hash: &Hash) -> Result<bool> {
        self.blobs().contains(hash)
    }

    fn list(&self, after: Option<&Hash>, limit: usize) -> Result<Vec<BlobRef>> {
        self.blobs().list(after, limit)
    }

    fn delete(&self, hash: &Hash) -> Result<bool> {
        self.blobs().delete(hash)
    }

    fn flush(&self) -> Result<()> {
        self.blobs().flush()
    }
}
