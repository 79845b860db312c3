//! Blobs held in memory: the second [`BlobStore`], for tests and scratch archives, and the
//! reference for what a backend must do (it passes the same suite as the packs).

use super::blobs::{check_length, check_range, BlobStore, BlobWriter};
use super::{hex, lock, Result, StoreError};
use crate::manifest::{BlobRef, Hash};
use std::collections::BTreeMap;
use std::ops::{Bound, Range};
use std::sync::{Arc, Mutex};

/// A handle on blobs held in memory, in the order of their hashes; clones share them.
#[derive(Clone, Default)]
pub struct MemoryBlobStore {
    blobs: Arc<Mutex<BTreeMap<Hash, Arc<[u8]>>>>,
}

impl MemoryBlobStore {
    pub fn new() -> MemoryBlobStore {
        MemoryBlobStore::default()
    }

    fn blob(&self, hash: &Hash) -> Result<Arc<[u8]>> {
        lock(&self.blobs)
            .get(hash)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("blob {} is not in the store", hex(hash))))
    }
}

impl BlobStore for MemoryBlobStore {
    fn put(&self, hash: Hash, bytes: &[u8]) -> Result<bool> {
        let mut blobs = lock(&self.blobs);
        if blobs.contains_key(&hash) {
            return Ok(false);
        }
        blobs.insert(hash, bytes.into());
        Ok(true)
    }

    fn stream_blob(&self) -> Result<Option<Box<dyn BlobWriter>>> {
        Ok(Some(Box::new(MemoryBlobWriter {
            store: self.clone(),
            hasher: blake3::Hasher::new(),
            bytes: Vec::new(),
        })))
    }

    fn get(&self, hash: &Hash) -> Result<Vec<u8>> {
        Ok(self.blob(hash)?.to_vec())
    }

    /// Copies only the range.
    fn get_range(&self, blob: &BlobRef, range: Range<u64>) -> Result<Vec<u8>> {
        check_range(blob, &range)?;
        let held = self.blob(&blob.hash)?;
        check_length(blob, held.len())?;
        Ok(held[range.start as usize..range.end as usize].to_vec())
    }

    fn contains(&self, hash: &Hash) -> Result<bool> {
        Ok(lock(&self.blobs).contains_key(hash))
    }

    fn list(&self, after: Option<&Hash>, limit: usize) -> Result<Vec<BlobRef>> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(lock(&self.blobs)
            .range::<Hash, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|(hash, bytes)| BlobRef {
                hash: *hash,
                length: bytes.len() as u64,
            })
            .collect())
    }

    fn delete(&self, hash: &Hash) -> Result<bool> {
        Ok(lock(&self.blobs).remove(hash).is_some())
    }

    /// Nothing in memory outlives the process anyway.
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// A streamed blob, gathered until it is finished (its hash names it only then).
struct MemoryBlobWriter {
    store: MemoryBlobStore,
    hasher: blake3::Hasher,
    bytes: Vec<u8>,
}

impl BlobWriter for MemoryBlobWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn written(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn finish(self: Box<Self>) -> Result<(Hash, bool)> {
        let hash = *self.hasher.finalize().as_bytes();
        Ok((hash, self.store.put(hash, &self.bytes)?))
    }
}
