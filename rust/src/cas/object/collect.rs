//! gc on an object store: blobs no live manifest references moved to `trash/`, and deleted
//! from there once a grace period has passed.
//!
//! Why a trash. Two writers of one blob store it once: the second's create-only put finds the
//! object there and writes nothing. So a writer can come to reference an object gc has just
//! found unreferenced, between gc's look at what is live and its delete, and no listing closes
//! that race. gc therefore never deletes an unreferenced blob outright: it copies it to
//! `trash/<hash>` and deletes the original; reads fall back to the trash; a later gc puts a
//! trashed blob back if a live manifest references it by then, and deletes it only when none
//! does a grace period after it was trashed. An object is trashed only once it was last
//! written more than the grace period ago, so the blobs of an instance still arriving (put,
//! not yet committed) are left alone; a blob trashed while its writer was still at work is
//! put back by the next gc. What this rests on: no writer takes longer than the grace period
//! of the trash from putting (or finding) a blob to the commit of the instance that
//! references it, and the caller's live set covers the log not yet indexed as well as the
//! index. Both cutoffs are taken from when the caller started reading what is live, not from
//! when each pass runs: a long first pass does not shorten the grace of the second.
//! The object store's clock dates the objects (a trashed one by its copy, which S3 writes
//! anew); the cutoff is this machine's: the grace period should dwarf any skew between them.

use super::{key_hash, object_error, ObjectBlobStore};
use crate::cas::Result;
use crate::manifest::Hash;
use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::ObjectStoreExt;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// What [`ObjectBlobStore::collect`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Blob objects looked at under `blobs/`.
    pub blobs: u64,
    /// Unreferenced blobs moved to the trash, and their bytes.
    pub trashed: u64,
    pub trashed_bytes: u64,
    /// Unreferenced blobs written within the grace period: left for a later gc.
    pub recent: u64,
    /// Trashed blobs a live manifest references: put back.
    pub restored: u64,
    /// Trashed blobs deleted, and their bytes.
    pub deleted: u64,
    pub deleted_bytes: u64,
    /// Completed uploads a crash left under `uploads/`, deleted.
    pub stale_uploads: u64,
}

/// An object under a prefix whose name is a blob's hash.
struct Listed {
    key: Key,
    hash: Hash,
    size: u64,
    written: SystemTime,
}

/// How finely an object store dates objects: S3 to the second.
const DATED_TO: Duration = Duration::from_secs(1);

impl Listed {
    /// Whether the object was surely written before `time`, its date being rounded down.
    fn written_before(&self, time: SystemTime) -> bool {
        self.written + DATED_TO <= time
    }
}

impl ObjectBlobStore {
    /// Moves to the trash every blob object `live` does not name that was written before
    /// `trash_before`; then puts back the trashed blobs `live` names and deletes those
    /// trashed before `delete_before`; then deletes stale uploads (older than the same). The
    /// caller takes both times from when it started reading what is live, less the grace
    /// periods; one process at a time, holding the archive's maintenance lock.
    pub fn collect(
        &self,
        live: &HashSet<Hash>,
        trash_before: SystemTime,
        delete_before: SystemTime,
    ) -> Result<Collected> {
        let mut report = Collected::default();
        for blob in self.listed(&self.inner.blobs)? {
            report.blobs += 1;
            if live.contains(&blob.hash) {
                continue;
            }
            if !blob.written_before(trash_before) {
                report.recent += 1;
                continue;
            }
            let trash = self.trash_key(&blob.hash);
            self.run(async {
                self.objects().copy(&blob.key, &trash).await?;
                self.objects().delete(&blob.key).await
            })
            .map_err(object_error)?;
            report.trashed += 1;
            report.trashed_bytes += blob.size;
        }
        for blob in self.listed(&self.inner.trash)? {
            if live.contains(&blob.hash) {
                let home = self.key(&blob.hash);
                self.run(async {
                    match self.objects().copy_if_not_exists(&blob.key, &home).await {
                        Ok(()) | Err(object_store::Error::AlreadyExists { .. }) => {}
                        Err(e) => return Err(e),
                    }
                    self.objects().delete(&blob.key).await
                })
                .map_err(object_error)?;
                report.restored += 1;
            } else if blob.written_before(delete_before) {
                self.run(self.objects().delete(&blob.key))
                    .map_err(object_error)?;
                report.deleted += 1;
                report.deleted_bytes += blob.size;
            }
        }
        let stale = SystemTime::now()
            .duration_since(delete_before)
            .unwrap_or_default();
        report.stale_uploads = self.remove_stale_uploads(stale)? as u64;
        Ok(report)
    }

    /// The objects under `dir` named by a blob's hash.
    fn listed(&self, dir: &Key) -> Result<Vec<Listed>> {
        self.run(async {
            let mut found = Vec::new();
            let mut listing = self.objects().list(Some(dir));
            while let Some(meta) = listing.next().await {
                let meta = meta?;
                if let Some(hash) = key_hash(&meta.location) {
                    found.push(Listed {
                        hash,
                        size: meta.size,
                        written: meta.last_modified.into(),
                        key: meta.location,
                    });
                }
            }
            Ok(found)
        })
        .map_err(object_error)
    }
}
