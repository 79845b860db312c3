//! A node's blobs on object storage with its log: large blobs objects of their own, small ones
//! written in the segment of the commit batch that references them.
//!
//! Small blobs ([`SEGMENT_BLOB_MAX`] bytes at most) put since the last commit are held in
//! memory and written by [`SegmentedBlobStore::commit`] in one segment with the batch's
//! manifest and tombstone records (or by `flush`, in a segment of their own): a C-STORE whose
//! commit returned is durable, blobs and records together. Where each small blob lies is known
//! from the segments read so far: every node's, read when the store opens, and again when a
//! blob is looked for and not found (another node may have written it since). That map is in
//! memory; on PostgreSQL it is a table the index keeps (see the `log` module docs).
//!
//! A segment is never rewritten, so a small blob in one cannot be deleted on its own: `delete`
//! refuses it (Unsupported) until gc rewrites segments whose records are dead.

use super::log::{ObjectLog, SegmentBlob, SegmentId, SegmentRecord, SEGMENT_BLOB_MAX};
use super::ObjectBlobStore;
use crate::cas::blobs::{check_length, check_range, BlobStore, BlobWriter};
use crate::cas::{hex, lock, LogRecord, Result, StoreError};
use crate::manifest::{BlobRef, Hash};
use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, Range};
use std::sync::{Arc, Mutex};

/// A handle on a node's blobs and log; clones share them.
#[derive(Clone)]
pub struct SegmentedBlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    objects: ObjectBlobStore,
    log: ObjectLog,
    state: Mutex<State>,
    /// Held by a commit from taking the pending blobs to knowing whether their segment was
    /// written: a blob another writer found pending is durable once its own commit returns.
    committing: Mutex<()>,
}

#[derive(Default)]
struct State {
    /// The small blobs of the segments read, in hash order.
    known: BTreeMap<Hash, SegmentBlob>,
    /// Per node, the last segment read.
    read_up_to: HashMap<u32, u64>,
    /// Small blobs put since the last commit.
    pending: BTreeMap<Hash, Arc<[u8]>>,
}

impl SegmentedBlobStore {
    /// `node`'s store, knowing the small blobs of every segment written so far.
    pub fn open(objects: &ObjectBlobStore, node: u32) -> Result<SegmentedBlobStore> {
        let store = SegmentedBlobStore {
            inner: Arc::new(Inner {
                objects: objects.clone(),
                log: ObjectLog::open(objects, node),
                state: Mutex::new(State::default()),
                committing: Mutex::new(()),
            }),
        };
        store.catch_up()?;
        Ok(store)
    }

    /// The objects beneath: large blobs.
    pub fn objects(&self) -> &ObjectBlobStore {
        &self.inner.objects
    }

    /// The log this store's batches are written to.
    pub fn log(&self) -> &ObjectLog {
        &self.inner.log
    }

    /// Writes the small blobs put so far and `records` as one segment of this node's log.
    pub fn commit(&self, records: &[LogRecord<'_>]) -> Result<SegmentId> {
        let _committing = lock(&self.inner.committing);
        self.write_segment(records)
    }

    /// [`SegmentedBlobStore::commit`], for a caller that holds `committing`.
    fn write_segment(&self, records: &[LogRecord<'_>]) -> Result<SegmentId> {
        let pending = std::mem::take(&mut lock(&self.inner.state).pending);
        let blobs: Vec<&[u8]> = pending.values().map(|b| &b[..]).collect();
        match self.inner.log.append(&blobs, records) {
            Ok((id, placed)) => {
                let mut state = lock(&self.inner.state);
                state
                    .known
                    .extend(placed.into_iter().map(|at| (at.blob.hash, at)));
                Ok(id)
            }
            Err(e) => {
                // Not written: they go with the next commit, which a writer that found one of
                // them pending makes before it acknowledges anything.
                lock(&self.inner.state).pending.extend(pending);
                Err(e)
            }
        }
    }

    /// Reads the segments every node wrote since they were last read, for their small blobs.
    fn catch_up(&self) -> Result<()> {
        let log = &self.inner.log;
        for node in log.nodes()? {
            let after = lock(&self.inner.state).read_up_to.get(&node).copied();
            for id in log.segments(node, after, usize::MAX)? {
                let records = match log.read(&id) {
                    Ok(records) => records,
                    // Its blobs are lost to reads (verify names it); the later ones are not.
                    Err(StoreError::Damaged(_)) => Vec::new(),
                    Err(e) => return Err(e),
                };
                let blobs: Vec<SegmentBlob> = records
                    .into_iter()
                    .filter_map(|record| match record {
                        SegmentRecord::Blob(at) => Some(at),
                        SegmentRecord::Log { .. } => None,
                    })
                    .collect();
                let mut state = lock(&self.inner.state);
                state
                    .known
                    .extend(blobs.into_iter().map(|at| (at.blob.hash, at)));
                state.read_up_to.insert(node, id.seq);
            }
        }
        Ok(())
    }

    /// Where a small blob is: held pending, or in a segment (looked for again in the segments
    /// written since, when `refresh`).
    fn small(&self, hash: &Hash, refresh: bool) -> Result<Option<Small>> {
        let find = |state: &State| {
            if let Some(bytes) = state.pending.get(hash) {
                Some(Small::Pending(bytes.clone()))
            } else {
                state.known.get(hash).cloned().map(Small::InSegment)
            }
        };
        if let Some(found) = find(&lock(&self.inner.state)) {
            return Ok(Some(found));
        }
        if !refresh {
            return Ok(None);
        }
        self.catch_up()?;
        Ok(find(&lock(&self.inner.state)))
    }

    /// A blob that is neither an object nor a small blob found: NotFound, after looking in the
    /// segments written since.
    fn small_bytes(&self, hash: &Hash, missing: StoreError) -> Result<Vec<u8>> {
        match self.small(hash, true)? {
            Some(Small::Pending(bytes)) => Ok(bytes.to_vec()),
            Some(Small::InSegment(at)) => self.inner.log.read_blob(&at),
            None => Err(missing),
        }
    }
}

enum Small {
    Pending(Arc<[u8]>),
    InSegment(SegmentBlob),
}

impl BlobStore for SegmentedBlobStore {
    /// A small blob is held until the next commit (unless it is held already); a large one is
    /// an object's create-only PUT.
    fn put(&self, hash: Hash, bytes: &[u8]) -> Result<bool> {
        if bytes.len() > SEGMENT_BLOB_MAX {
            return self.inner.objects.put(hash, bytes);
        }
        let mut state = lock(&self.inner.state);
        if state.known.contains_key(&hash) || state.pending.contains_key(&hash) {
            return Ok(false);
        }
        state.pending.insert(hash, bytes.into());
        Ok(true)
    }

    /// Blobs stream only past the size of a segment's: objects of their own.
    fn stream_blob(&self) -> Result<Option<Box<dyn BlobWriter>>> {
        self.inner.objects.stream_blob()
    }

    fn get(&self, hash: &Hash) -> Result<Vec<u8>> {
        if let Some(found) = self.small(hash, false)? {
            return match found {
                Small::Pending(bytes) => Ok(bytes.to_vec()),
                Small::InSegment(at) => self.inner.log.read_blob(&at),
            };
        }
        match self.inner.objects.get(hash) {
            Err(missing @ StoreError::NotFound(_)) => self.small_bytes(hash, missing),
            got => got,
        }
    }

    fn get_range(&self, blob: &BlobRef, range: Range<u64>) -> Result<Vec<u8>> {
        check_range(blob, &range)?;
        if self.small(&blob.hash, false)?.is_none() {
            match self.inner.objects.get_range(blob, range.clone()) {
                Err(StoreError::NotFound(_)) => {}
                got => return got,
            }
        }
        // A small blob is read whole (and checked), then cut.
        let bytes = self.small_bytes(
            &blob.hash,
            StoreError::NotFound(format!("blob {} is not in the store", hex(&blob.hash))),
        )?;
        check_length(blob, bytes.len())?;
        Ok(bytes[range.start as usize..range.end as usize].to_vec())
    }

    /// Looked for again in the segments written since, before saying no: another node may
    /// have written it.
    fn contains(&self, hash: &Hash) -> Result<bool> {
        Ok(self.small(hash, false)?.is_some()
            || self.inner.objects.contains(hash)?
            || self.small(hash, true)?.is_some())
    }

    /// The objects' listing and the small blobs known, merged in hash order.
    fn list(&self, after: Option<&Hash>, limit: usize) -> Result<Vec<BlobRef>> {
        let mut all: BTreeMap<Hash, u64> = self
            .inner
            .objects
            .list(after, limit)?
            .into_iter()
            .map(|b| (b.hash, b.length))
            .collect();
        {
            let state = lock(&self.inner.state);
            let start = after.map_or(Bound::Unbounded, Bound::Excluded);
            let range: (Bound<&Hash>, Bound<&Hash>) = (start, Bound::Unbounded);
            all.extend(
                state
                    .known
                    .range::<Hash, _>(range)
                    .take(limit)
                    .map(|(h, at)| (*h, at.blob.length)),
            );
            all.extend(
                state
                    .pending
                    .range::<Hash, _>(range)
                    .take(limit)
                    .map(|(h, b)| (*h, b.len() as u64)),
            );
        }
        Ok(all
            .into_iter()
            .take(limit)
            .map(|(hash, length)| BlobRef { hash, length })
            .collect())
    }

    /// An object is deleted; a small blob in a segment cannot be (Unsupported).
    fn delete(&self, hash: &Hash) -> Result<bool> {
        if self.small(hash, false)?.is_some() {
            return Err(StoreError::Unsupported(format!(
                "blob {} is in a log segment, which only gc rewrites",
                hex(hash)
            )));
        }
        self.inner.objects.delete(hash)
    }

    /// Writes the small blobs put so far in a segment of their own.
    fn flush(&self) -> Result<()> {
        // Waits out a commit in flight first: it may hold blobs a caller found pending, and
        // give them back if it fails.
        let _committing = lock(&self.inner.committing);
        if lock(&self.inner.state).pending.is_empty() {
            return Ok(());
        }
        self.write_segment(&[]).map(drop)
    }
}
