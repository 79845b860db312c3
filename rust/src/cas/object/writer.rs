//! A blob streaming into an object store: held while it fits in a part, then a multipart
//! upload to a temporary key copied to the blob's once its hash is known (see the module docs
//! of `object`).

use super::{object_error, ObjectBlobStore};
use crate::cas::blobs::{BlobStore, BlobWriter};
use crate::cas::Result;
use crate::manifest::Hash;
use object_store::path::Path as Key;
use object_store::{CopyMode, CopyOptions, MultipartUpload, ObjectStoreExt, PutPayload};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use tokio::task::JoinHandle;

/// A multipart upload under `uploads/`, with its parts in flight.
struct Upload {
    key: Key,
    // Only ever used through `&mut` (the mutex makes the writer Sync, as BlobWriter must be).
    multipart: Mutex<Box<dyn MultipartUpload>>,
    parts: Vec<JoinHandle<object_store::Result<()>>>,
}

impl Upload {
    fn multipart(&mut self) -> &mut dyn MultipartUpload {
        self.multipart
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
    }
}

/// A blob streaming in: held until it outgrows a part, then uploaded part by part.
pub(super) struct ObjectBlobWriter {
    store: ObjectBlobStore,
    hasher: blake3::Hasher,
    /// Bytes not yet sent as a part.
    pending: Vec<u8>,
    written: u64,
    upload: Option<Upload>,
}

impl ObjectBlobWriter {
    pub(super) fn new(store: ObjectBlobStore) -> ObjectBlobWriter {
        ObjectBlobWriter {
            store,
            hasher: blake3::Hasher::new(),
            pending: Vec::new(),
            written: 0,
            upload: None,
        }
    }

    /// Sends `pending` as the upload's next part (starting the upload first if need be).
    fn send_part(&mut self) -> Result<()> {
        let store = &self.store;
        if self.upload.is_none() {
            let key = store.inner.uploads.clone().join(unique_name());
            let multipart = store
                .run(store.objects().put_multipart(&key))
                .map_err(object_error)?;
            self.upload = Some(Upload {
                key,
                multipart: Mutex::new(multipart),
                parts: Vec::new(),
            });
        }
        let upload = self.upload.as_mut().expect("started");
        let part = std::mem::take(&mut self.pending);
        let sending = upload.multipart().put_part(PutPayload::from(part));
        upload.parts.push(store.inner.runtime.spawn(sending));
        Ok(())
    }

    /// Completes the upload and copies it to `hash`'s key unless an object is there: whether
    /// it was new. The temporary object is deleted either way.
    fn complete(&mut self, hash: &Hash) -> Result<bool> {
        let store = self.store.clone();
        let mut upload = self.upload.take().expect("started");
        let stored = store.run(async {
            let completed = async {
                for part in upload.parts.drain(..) {
                    part.await??;
                }
                upload.multipart().complete().await
            }
            .await;
            if let Err(e) = completed {
                let _ = upload.multipart().abort().await;
                return Err(e);
            }
            let create = CopyOptions {
                mode: CopyMode::Create,
                ..CopyOptions::default()
            };
            let copied = match store
                .objects()
                .copy_opts(&upload.key, &store.key(hash), create)
                .await
            {
                Ok(()) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                Err(e) => Err(e),
            };
            let removed = store.objects().delete(&upload.key).await;
            let new = copied?;
            removed?;
            Ok::<_, object_store::Error>(new)
        });
        stored.map_err(object_error)
    }
}

impl BlobWriter for ObjectBlobWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        let part_size = self.store.inner.part_size;
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = rest.len().min(part_size - self.pending.len());
            self.pending.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            // A full part is sent only once more follows: the last part may be the only one.
            if self.pending.len() == part_size && !rest.is_empty() {
                self.send_part()?;
            }
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn finish(mut self: Box<Self>) -> Result<(Hash, bool)> {
        let hash = *self.hasher.finalize().as_bytes();
        if self.upload.is_none() {
            let bytes = std::mem::take(&mut self.pending);
            return Ok((hash, self.store.put(hash, &bytes)?));
        }
        if !self.pending.is_empty() {
            self.send_part()?;
        }
        Ok((hash, self.complete(&hash)?))
    }
}

impl Drop for ObjectBlobWriter {
    /// An unfinished upload is aborted in the background (its parts are discarded by the
    /// service); a completed one was taken by `complete`.
    fn drop(&mut self) {
        if let Some(mut upload) = self.upload.take() {
            self.store.inner.runtime.spawn(async move {
                for part in upload.parts.drain(..) {
                    part.abort();
                }
                let _ = upload.multipart().abort().await;
            });
        }
    }
}

/// A name no other writer, in this process or another node's, picks.
fn unique_name() -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    // RandomState's keys are random (drawn once per thread, then stepped).
    let process = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!(
        "{process:016x}-{}-{:x}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}
