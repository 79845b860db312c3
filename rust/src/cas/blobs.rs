//! The blob-store seam: what the manifest layer needs from wherever blobs live.
//!
//! A blob is named by the BLAKE3 hash of its bytes, so a store holds each at most once and a
//! put of a blob it holds changes nothing. The packs ([`super::Store`]), memory
//! ([`super::MemoryBlobStore`]) and object stores ([`super::ObjectBlobStore`]: S3, SeaweedFS)
//! implement it; what an object store maps each call to is said on it. Instances are read
//! through it ([`super::ReadInstances`]) and streamed in through it ([`super::InstanceWriter`]);
//! the log of manifests and tombstones is each backend's own (the packs', see the module docs
//! of `cas`; an object store's segments, [`super::ObjectLog`]).

use super::Result;
use crate::manifest::{BlobRef, Hash};
use std::ops::Range;

/// Where blobs live. Every call is per blob (never per byte), so implementations may do a
/// round trip each.
pub trait BlobStore: Send + Sync {
    /// Stores `bytes` under `hash`, which must be their BLAKE3 hash, unless the store holds it
    /// already; returns whether it was written. Durable once [`BlobStore::flush`] returns
    /// (an object store's create-only PUT of `hex(hash)`).
    fn put(&self, hash: Hash, bytes: &[u8]) -> Result<bool>;

    /// Starts a blob whose bytes arrive in pieces and whose hash is known only at the end (an
    /// object store's multipart upload); None when this store takes blobs whole only (the
    /// packs when they compress), and the caller then buffers it and calls `put`.
    fn stream_blob(&self) -> Result<Option<Box<dyn BlobWriter>>>;

    /// A blob's bytes, checked as far as the store can (a pack record's checksum). NotFound
    /// when the store does not hold it; Damaged when what it holds fails its checks.
    fn get(&self, hash: &Hash) -> Result<Vec<u8>>;

    /// Bytes `range` of `blob`, whose length must be `blob.length` (Damaged otherwise);
    /// NotFound for a range past its end. Provided: the whole blob read and checked, then cut
    /// — what a store whose checksums cover whole blobs must do; an object store overrides it
    /// with a ranged GET.
    fn get_range(&self, blob: &BlobRef, range: Range<u64>) -> Result<Vec<u8>> {
        check_range(blob, &range)?;
        let mut data = self.get(&blob.hash)?;
        check_length(blob, data.len())?;
        data.truncate(range.end as usize);
        Ok(data.split_off(range.start as usize))
    }

    /// Whether the store holds the blob intact (a blob known to be damaged is not held, so
    /// that storing it again repairs it).
    fn contains(&self, hash: &Hash) -> Result<bool>;

    /// Up to `limit` of the blobs held, in the order of their hashes, from the first after
    /// `after` (an object store's ListObjectsV2 with StartAfter and MaxKeys): listing every
    /// blob is paging until a page comes back short.
    fn list(&self, after: Option<&Hash>, limit: usize) -> Result<Vec<BlobRef>>;

    /// Forgets a blob; returns whether the store held it. The caller sees to it that no live
    /// manifest references it.
    fn delete(&self, hash: &Hash) -> Result<bool>;

    /// Makes every blob put so far durable, as the store's sync mode says: what a commit
    /// waits for before an instance is acknowledged.
    fn flush(&self) -> Result<()>;
}

/// A blob being written as its bytes arrive. Dropped unfinished, it leaves nothing behind.
/// (Sync: an instance's writer may be held by an object shared between threads, a Python one.)
pub trait BlobWriter: Send + Sync {
    fn write(&mut self, bytes: &[u8]) -> Result<()>;

    /// Bytes written so far.
    fn written(&self) -> u64;

    /// Stores the blob under its hash; returns the hash and whether it was new (the bytes of a
    /// blob the store already holds are discarded).
    fn finish(self: Box<Self>) -> Result<(Hash, bool)>;
}

/// NotFound unless `range` lies within `blob`.
pub(super) fn check_range(blob: &BlobRef, range: &Range<u64>) -> Result<()> {
    if range.start > range.end || range.end > blob.length {
        return Err(super::StoreError::NotFound(format!(
            "bytes {}..{} are not in blob {} ({} bytes)",
            range.start,
            range.end,
            super::hex(&blob.hash),
            blob.length
        )));
    }
    Ok(())
}

/// Damaged unless `len`, the length of what was read for `blob`, is the one its reference says.
pub(super) fn check_length(blob: &BlobRef, len: usize) -> Result<()> {
    if len as u64 != blob.length {
        return Err(super::invalid(format!(
            "blob {} has {len} bytes, the manifest says {}",
            super::hex(&blob.hash),
            blob.length
        )));
    }
    Ok(())
}
