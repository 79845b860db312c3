//! The log on object storage: each commit batch one segment object of pack records, written
//! once under `segments/<node>/<seq>`, from which an index is replayed and verified.
//!
//! Design. A node appends one segment per commit batch: a pack header, then the batch's small
//! blobs (at most [`SEGMENT_BLOB_MAX`] each, so a 10 KB header never costs an object of its
//! own) and its manifest and tombstone records, in the packs' record format (`crate::pack`):
//! every record checks itself (header CRC, payload CRC, BLAKE3), so `verify` and `reindex`
//! work from the bucket alone. The key is `segments/<node>/<seq, 20 digits>`: listed in key
//! order, a node's segments come in the order it wrote them. A segment is written whole by a
//! create-only PUT, so it is never torn and never replaced: a second process that takes the
//! same node number finds a position taken and fails (Busy) instead of overwriting — that
//! append and every later one, so that two processes never both go on writing one node's log.
//!
//! A node writes its segments one at a time: segment `n + 1` is put only once `n` was
//! acknowledged, so a reader that has applied a node's log up to `n` and lists after it can
//! never miss a segment that lands later below its position. A put that failed leaves the
//! position unknown (it may have landed: S3 may apply a request whose answer was lost, or one
//! it held past our timeout), so the next append lists the node's segments from it and
//! continues after the last. A batch whose put failed was not acknowledged; if it landed
//! anyway, its records are in the log, which a replay and a `reindex` apply, so the node's
//! index must apply them too: the append that finds it there says so
//! ([`ObjectLog::take_landed`]), and the index replays it before the segments after it.
//!
//! Across nodes there is no order but the records' stamps (microseconds, monotonic per
//! process): [`ObjectLog::history`] merges nodes' records by stamp, each node's in the order
//! it wrote them (a clock set back across a restart cannot reorder them). A record's place is
//! `(node, seq << SEGMENT_SHIFT | n)`, its segment and its number there (from 1): what an
//! index keeps as its mark per node to resume from, in the order the node wrote its records.
//!
//! Small blobs reach a segment through [`super::SegmentedBlobStore`], the blob store of a node
//! that writes this log: it holds them until the batch's commit and finds them again, on any
//! node, from the segments it has read.
//!
//! Left to build: a node that starts, or whose put failed, lists all its segments to find its
//! next position (the index's marks could say); where each small blob lies kept in the index
//! (a PostgreSQL table) rather than in every node's memory; replay streaming a k-way merge per
//! node instead of reading the whole log into memory; gc of segments whose every record is
//! dead (which is also what deletes a small blob).

use super::{object_error, ObjectBlobStore};
use crate::cas::blobs::BlobStore;
use crate::cas::history::{HistoryEvent, HistoryKind};
use crate::cas::Position;
use crate::cas::{hex, invalid, lock, next_stamp, raw_record, LogRecord, Result, StoreError};
use crate::manifest::{BlobRef, Hash, Manifest};
use crate::pack::{self, RecordHeader, RecordKind, PACK_HEADER_LEN, PACK_MAGIC, RECORD_HEADER_LEN};
use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};

/// Blobs up to this long may go into a segment; longer ones are objects of their own.
pub const SEGMENT_BLOB_MAX: usize = 64 << 10;

/// Bits of a record's position that number it within its segment.
const SEGMENT_SHIFT: u32 = 24;
/// Records of a segment are numbered from 1 to less than this (the last number is a damaged
/// segment's, past all its records).
const RECORD_NUMBERS: u64 = 1 << SEGMENT_SHIFT;

/// A segment's place: the node that wrote it and its sequence number there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId {
    pub node: u32,
    pub seq: u64,
}

impl SegmentId {
    /// The position of the segment's `n`th log record (from 1).
    pub fn position(&self, n: u64) -> Position {
        (self.node, self.seq << SEGMENT_SHIFT | n)
    }
}

/// A small blob held in a segment: its bytes are `blob.length` bytes from `offset` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentBlob {
    pub segment: SegmentId,
    pub offset: u64,
    pub blob: BlobRef,
}

/// One record of a segment, as read back.
#[derive(Debug, Clone)]
pub enum SegmentRecord {
    Blob(SegmentBlob),
    /// A manifest or a tombstone: its stamp, the manifest's hash, what it says.
    Log {
        stamp: u64,
        target: Hash,
        kind: HistoryKind,
    },
}

/// What [`ObjectLog::verify`] found.
#[derive(Debug, Default)]
pub struct LogReport {
    pub segments: usize,
    pub manifests: usize,
    pub tombstones: usize,
    pub small_blobs: usize,
    /// Objects read back whole and checked against their hash.
    pub objects: usize,
    /// Bytes of the blobs checked, in segments and objects.
    pub bytes: u64,
    /// Segments that fail their checks, and why.
    pub damaged: Vec<(SegmentId, String)>,
    /// (manifest hash, blob hash): blobs a live manifest references that neither a segment nor
    /// an object holds.
    pub missing: Vec<(Hash, Hash)>,
    /// Objects a live manifest references whose bytes are not the blob their key names.
    pub damaged_objects: Vec<(Hash, String)>,
}

/// One node's log in an object store (and every node's, to read).
pub struct ObjectLog {
    store: ObjectBlobStore,
    node: u32,
    next: Mutex<Next>,
    stamp: AtomicU64,
    /// Segments whose put had failed found written (see [`ObjectLog::take_landed`]).
    landed: Mutex<BTreeSet<u64>>,
}

/// Where a node's next segment goes.
enum Next {
    /// To be found again by listing (at open).
    Unknown,
    /// After the put of this segment failed: it may have landed all the same.
    Failed(u64),
    At(u64),
    /// Another process wrote a segment of this node's: this one writes no more (why).
    Taken(String),
}

impl ObjectLog {
    /// The node this log is written by.
    pub fn node(&self) -> u32 {
        self.node
    }

    /// The log node `node` writes.
    pub fn open(store: &ObjectBlobStore, node: u32) -> ObjectLog {
        ObjectLog {
            store: store.clone(),
            node,
            next: Mutex::new(Next::Unknown),
            stamp: AtomicU64::new(0),
            landed: Mutex::new(BTreeSet::new()),
        }
    }

    /// The key of segment `id`, to name it in a report.
    pub fn segment_key(&self, id: &SegmentId) -> String {
        self.key(id).to_string()
    }

    fn key(&self, id: &SegmentId) -> Key {
        self.store
            .inner
            .segments
            .clone()
            .join(id.node.to_string())
            .join(format!("{:020}", id.seq))
    }

    /// Writes one batch as this node's next segment: its small blobs, then its records.
    /// Returns the segment and where each blob lies in it.
    pub fn append(
        &self,
        blobs: &[&[u8]],
        records: &[LogRecord<'_>],
    ) -> Result<(SegmentId, Vec<SegmentBlob>)> {
        if let Some(big) = blobs.iter().find(|b| b.len() > SEGMENT_BLOB_MAX) {
            return Err(StoreError::Unsupported(format!(
                "a blob of {} bytes is an object of its own, not part of a segment",
                big.len()
            )));
        }
        if records.len() as u64 >= RECORD_NUMBERS {
            return Err(StoreError::Unsupported(format!(
                "{} records in one segment: positions number at most {}",
                records.len(),
                RECORD_NUMBERS - 1
            )));
        }
        // Held across the put: the node's segments are written one at a time.
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        // Whether this put retries the position of a put that failed, not found written.
        let mut retrying = false;
        let mut seq = match &*next {
            Next::At(seq) => *seq,
            Next::Unknown => self
                .segments(self.node, None, usize::MAX)?
                .last()
                .map_or(0, |last| last.seq + 1),
            Next::Failed(failed) => match self
                .segments(self.node, failed.checked_sub(1), usize::MAX)?
                .last()
            {
                Some(last) => {
                    self.landed_at(*failed);
                    last.seq + 1
                }
                None => {
                    retrying = true;
                    *failed
                }
            },
            Next::Taken(why) => return Err(StoreError::Busy(why.clone())),
        };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(PACK_MAGIC);
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        let mut placed = Vec::with_capacity(blobs.len());
        for blob in blobs {
            let header = raw_record(RecordKind::Blob, blob);
            placed.push(SegmentBlob {
                segment: SegmentId {
                    node: self.node,
                    seq,
                },
                offset: bytes.len() as u64 + RECORD_HEADER_LEN,
                blob: BlobRef {
                    hash: header.hash,
                    length: blob.len() as u64,
                },
            });
            bytes.extend_from_slice(&header.encode());
            bytes.extend_from_slice(blob);
        }
        for record in records {
            let payload = record.payload(next_stamp(&self.stamp));
            bytes.extend_from_slice(&raw_record(record.kind(), &payload).encode());
            bytes.extend_from_slice(&payload);
        }
        let payload = PutPayload::from(bytes);
        loop {
            let id = SegmentId {
                node: self.node,
                seq,
            };
            let create = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            *next = Next::Unknown;
            let key = self.key(&id);
            let put = self
                .store
                .run(self.store.objects().put_opts(&key, payload.clone(), create));
            match put {
                Ok(_) => {
                    *next = Next::At(seq + 1);
                    for at in &mut placed {
                        at.segment = id.clone();
                    }
                    return Ok((id, placed));
                }
                // The failed put landed after the listing (or S3 applied a first attempt of
                // this one, which it answered with an error and the client retried): a
                // segment as landed as one listed.
                Err(object_store::Error::AlreadyExists { .. }) if retrying => {
                    self.landed_at(seq);
                    retrying = false;
                    seq += 1;
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let why = format!(
                        "segment {key} exists: another process writes as node {} (every node \
                         needs a [storage] node of its own); this one writes no more",
                        self.node
                    );
                    *next = Next::Taken(why.clone());
                    return Err(StoreError::Busy(why));
                }
                Err(e) => {
                    *next = Next::Failed(seq);
                    return Err(object_error(e));
                }
            }
        }
    }

    fn landed_at(&self, seq: u64) {
        lock(&self.landed).insert(seq);
    }

    /// Whether a segment of this node's whose put had failed, and that an append then found
    /// written, lies before the log position `before` (its records' end in this node's log);
    /// each is told once. Its records are in the log and not indexed: the index replays them
    /// (a `reindex` and a restart's replay would) before it applies those at `before`.
    pub fn take_landed(&self, before: u64) -> bool {
        let mut landed = lock(&self.landed);
        let earlier: Vec<u64> = landed.range(..before >> SEGMENT_SHIFT).copied().collect();
        for seq in &earlier {
            landed.remove(seq);
        }
        !earlier.is_empty()
    }

    /// Every node that has written a segment, in order.
    pub fn nodes(&self) -> Result<Vec<u32>> {
        let listing = self
            .store
            .run(
                self.store
                    .objects()
                    .list_with_delimiter(Some(&self.store.inner.segments)),
            )
            .map_err(object_error)?;
        // What is not a number is not a node's log (nothing this archive wrote).
        let mut nodes: Vec<u32> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename()?.parse().ok())
            .collect();
        nodes.sort_unstable();
        Ok(nodes)
    }

    /// Up to `limit` of `node`'s segments after `after`, in order.
    pub fn segments(&self, node: u32, after: Option<u64>, limit: usize) -> Result<Vec<SegmentId>> {
        let dir = self.store.inner.segments.clone().join(node.to_string());
        let objects = self.store.objects();
        let mut listing = match after {
            Some(seq) => objects.list_with_offset(Some(&dir), &self.key(&SegmentId { node, seq })),
            None => objects.list(Some(&dir)),
        };
        let ordered = self.store.inner.ordered_listing;
        let mut ids: Vec<SegmentId> = self
            .store
            .run(async {
                let mut ids = Vec::new();
                while let Some(meta) = listing.next().await {
                    let meta = meta?;
                    let seq = meta.location.filename().and_then(|n| n.parse::<u64>().ok());
                    if let Some(seq) = seq {
                        ids.push(SegmentId { node, seq });
                        if ordered && ids.len() == limit {
                            break;
                        }
                    }
                }
                Ok::<_, object_store::Error>(ids)
            })
            .map_err(object_error)?;
        if !ordered {
            ids.sort_unstable();
            ids.truncate(limit);
        }
        Ok(ids)
    }

    /// A segment's records, every one checked: Damaged if any fails (a segment is written
    /// whole, so that is damage, never a torn write).
    pub fn read(&self, id: &SegmentId) -> Result<Vec<SegmentRecord>> {
        let key = self.key(id);
        let bytes = self
            .store
            .run(async { self.store.objects().get(&key).await?.bytes().await })
            .map_err(object_error)?;
        let damaged = |at: u64, why: &str| invalid(format!("segment {key} at byte {at}: {why}"));
        if bytes.len() < PACK_HEADER_LEN as usize || &bytes[..8] != PACK_MAGIC {
            return Err(damaged(0, "not a dicomvault segment"));
        }
        let mut records = Vec::new();
        let mut at = PACK_HEADER_LEN as usize;
        while at < bytes.len() {
            let header =
                RecordHeader::decode(&bytes[at..]).map_err(|why| damaged(at as u64, &why))?;
            let start = at + RECORD_HEADER_LEN as usize;
            let stored = bytes
                .get(start..start.saturating_add(header.stored_len as usize))
                .ok_or_else(|| damaged(at as u64, "record runs past the segment's end"))?;
            if crc32fast::hash(stored) != header.payload_crc {
                return Err(damaged(at as u64, "payload checksum mismatch"));
            }
            let payload = pack::decode_payload(&header, stored.to_vec())
                .map_err(|why| damaged(at as u64, &why))?;
            if blake3::hash(&payload).as_bytes() != &header.hash {
                return Err(damaged(at as u64, "payload hash mismatch"));
            }
            records.push(match header.kind {
                RecordKind::Blob => SegmentRecord::Blob(SegmentBlob {
                    segment: id.clone(),
                    offset: start as u64,
                    blob: BlobRef {
                        hash: header.hash,
                        length: header.raw_len,
                    },
                }),
                kind => {
                    let event = HistoryEvent::parse(kind, &payload, 0, 0)
                        .ok_or_else(|| damaged(at as u64, "unreadable log record"))?;
                    SegmentRecord::Log {
                        stamp: event.stamp,
                        target: event.target,
                        kind: event.kind,
                    }
                }
            });
            at = start + stored.len();
        }
        Ok(records)
    }

    /// A small blob's bytes, by a ranged GET of its segment, checked against its hash.
    pub fn read_blob(&self, at: &SegmentBlob) -> Result<Vec<u8>> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(at.offset..at.offset + at.blob.length)),
            ..GetOptions::default()
        };
        let key = self.key(&at.segment);
        let bytes = self
            .store
            .run(async {
                self.store
                    .objects()
                    .get_opts(&key, options)
                    .await?
                    .bytes()
                    .await
            })
            .map_err(object_error)?;
        if blake3::hash(&bytes).as_bytes() != &at.blob.hash {
            return Err(invalid(format!(
                "bytes {}.. of segment {key} are not blob {}",
                at.offset,
                hex(&at.blob.hash)
            )));
        }
        Ok(bytes.into())
    }

    /// Every node's segments, each read whole.
    fn all_segments(&self) -> Result<Vec<(SegmentId, Result<Vec<SegmentRecord>>)>> {
        let mut all = Vec::new();
        for node in self.nodes()? {
            for id in self.segments(node, None, usize::MAX)? {
                let records = self.read(&id);
                all.push((id, records));
            }
        }
        Ok(all)
    }

    /// The manifest and tombstone records of `nodes` after each one's mark in `after` (all of
    /// a node without one), in the order of their stamps, each at its position: what an index
    /// is replayed from. A segment that fails its checks is one damaged event, past all its
    /// records.
    pub fn history(&self, nodes: &[u32], after: &HashMap<u32, u64>) -> Result<Vec<HistoryEvent>> {
        // Sorted by stamp, made non-decreasing along each node's log: a node's records keep
        // the order it wrote them in, a damaged segment's event (its stamps unknown) included.
        let mut events: Vec<(u64, HistoryEvent)> = Vec::new();
        for &node in nodes {
            let mark = after.get(&node).copied().unwrap_or(0);
            // The segment of the mark may have been applied in part: it is read again.
            let from = (mark >> SEGMENT_SHIFT).checked_sub(1).filter(|_| mark > 0);
            let mut order = 0;
            for id in self.segments(node, from, usize::MAX)? {
                let records = match self.read(&id) {
                    Ok(records) => records,
                    Err(StoreError::Damaged(why)) => {
                        let (node, end) = id.position(RECORD_NUMBERS - 1);
                        let event = HistoryEvent::damaged(node, 0, end, None, why);
                        events.push((order, event));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let logged = records.into_iter().filter_map(|record| match record {
                    SegmentRecord::Log {
                        stamp,
                        target,
                        kind,
                    } => Some((stamp, target, kind)),
                    SegmentRecord::Blob(_) => None,
                });
                for (n, (stamp, target, kind)) in (1u64..).zip(logged) {
                    order = order.max(stamp);
                    let (node, end) = id.position(n);
                    if end > mark {
                        let event = HistoryEvent {
                            stamp,
                            pack: node,
                            end,
                            target,
                            kind,
                        };
                        events.push((order, event));
                    }
                }
            }
        }
        events.sort_by_key(|(order, e)| (*order, e.pack, e.end));
        Ok(events.into_iter().map(|(_, e)| e).collect())
    }

    /// Reads every segment and checks every record, and that every blob a manifest not
    /// tombstoned references is held: in a segment, or as an object whose bytes are read and
    /// checked against its hash.
    pub fn verify(&self) -> Result<LogReport> {
        let mut report = LogReport::default();
        let mut in_segments = HashSet::new();
        let mut manifests: HashMap<Hash, Vec<u8>> = HashMap::new();
        let mut tombstoned = HashSet::new();
        for (id, records) in self.all_segments()? {
            report.segments += 1;
            let records = match records {
                Ok(records) => records,
                Err(e) => {
                    report.damaged.push((id, e.to_string()));
                    continue;
                }
            };
            for record in records {
                match record {
                    SegmentRecord::Blob(at) => {
                        report.small_blobs += 1;
                        report.bytes += at.blob.length;
                        in_segments.insert(at.blob.hash);
                    }
                    SegmentRecord::Log {
                        target,
                        kind: HistoryKind::Manifest { manifest, .. },
                        ..
                    } => {
                        report.manifests += 1;
                        manifests.insert(target, manifest);
                    }
                    SegmentRecord::Log { target, .. } => {
                        report.tombstones += 1;
                        tombstoned.insert(target);
                    }
                }
            }
        }
        let mut objects = HashSet::new();
        let mut last = None;
        loop {
            let page = self.store.list(last.as_ref(), 1000)?;
            last = page.last().map(|b| b.hash);
            objects.extend(page.iter().map(|b| b.hash));
            if page.len() < 1000 {
                break;
            }
        }
        let mut live_objects = HashSet::new();
        for (target, bytes) in &manifests {
            if tombstoned.contains(target) {
                continue;
            }
            let manifest = Manifest::decode(bytes).map_err(|e| invalid(e.0))?;
            for blob in &manifest.blobs {
                if in_segments.contains(&blob.hash) {
                    continue;
                }
                if objects.contains(&blob.hash) {
                    live_objects.insert(blob.hash);
                } else {
                    report.missing.push((*target, blob.hash));
                }
            }
        }
        for hash in live_objects {
            report.objects += 1;
            match self.store.get(&hash) {
                Ok(bytes) => report.bytes += bytes.len() as u64,
                Err(StoreError::Damaged(why)) => report.damaged_objects.push((hash, why)),
                Err(e) => return Err(e),
            }
        }
        report.missing.sort_unstable();
        report.damaged_objects.sort_unstable();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::object::{ObjectBackend, ObjectStoreConfig};

    #[test]
    fn a_landed_segment_is_told_once_to_what_comes_after_it() {
        let store =
            ObjectBlobStore::open(&ObjectStoreConfig::new(ObjectBackend::InMemory)).unwrap();
        let log = ObjectLog::open(&store, 1);
        log.landed_at(5);
        let at = |seq: u64| SegmentId { node: 1, seq }.position(1).1;
        // A batch the applier took late, from before the segment: not yet.
        assert!(!log.take_landed(at(4)));
        assert!(!log.take_landed(at(5)));
        // The first batch after it: told, and only once.
        assert!(log.take_landed(at(6)));
        assert!(!log.take_landed(at(7)));
    }
}
