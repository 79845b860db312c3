//! What opening the store, `reindex` and `verify` find in the packs, and what they repair.

use super::{heed_error, invalid, Active, Inner, Location, Store};
use crate::manifest::Hash;
use crate::pack::{self, Found, PACK_HEADER_LEN};
use std::fs::{self, OpenOptions};
use std::io;
use std::sync::Arc;

/// Defects found by [`Store::verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub records_checked: u64,
    pub bytes_checked: u64,
    pub bad: Vec<(Hash, String)>,
}

impl Store {
    /// Re-reads every indexed record: header, checksum, decoded length and BLAKE3 hash.
    pub fn verify(&self) -> io::Result<VerifyReport> {
        self.commit()?;
        let mut entries = Vec::new();
        {
            let rtxn = self.inner.env.read_txn().map_err(heed_error)?;
            for item in self.inner.blobs.iter(&rtxn).map_err(heed_error)? {
                let (k, v) = item.map_err(heed_error)?;
                let hash: Hash = k
                    .try_into()
                    .map_err(|_| invalid("blob index key is not a hash"))?;
                entries.push((Location::decode(v)?, hash));
            }
        }
        entries.sort_by_key(|(loc, _)| (loc.pack, loc.offset));
        let mut report = VerifyReport::default();
        for (loc, hash) in entries {
            report.records_checked += 1;
            report.bytes_checked += loc.stored_len;
            if let Err(e) = self.read_found(&hash, loc, true) {
                report.bad.push((hash, e.to_string()));
            }
        }
        Ok(report)
    }

    /// Rebuilds the blob index from the packs alone.
    pub fn rebuild_blob_index(&self) -> io::Result<u64> {
        self.require_exclusive("reindex")?;
        self.commit()?;
        let inner = &*self.inner;
        let mut wtxn = inner.env.write_txn().map_err(heed_error)?;
        inner.blobs.clear(&mut wtxn).map_err(heed_error)?;
        inner.packs.clear(&mut wtxn).map_err(heed_error)?;
        let mut count = 0u64;
        for id in pack::list_packs(&inner.packs_dir)? {
            let file = self.pack_file(id)?;
            let (found, end, _) = pack::walk(&file, PACK_HEADER_LEN, true)?;
            for Found { offset, header } in found {
                let loc = Location {
                    pack: id,
                    offset,
                    stored_len: header.stored_len,
                    raw_len: header.raw_len,
                };
                inner
                    .blobs
                    .put(&mut wtxn, &header.hash, &loc.encode())
                    .map_err(heed_error)?;
                count += 1;
            }
            inner
                .packs
                .put(&mut wtxn, &id.to_be_bytes(), &end.to_le_bytes())
                .map_err(heed_error)?;
        }
        wtxn.commit().map_err(heed_error)?;
        inner.env.force_sync().map_err(heed_error)?;
        Ok(count)
    }
}

impl Inner {
    /// Indexes what lies beyond each unlocked pack's indexed length, cutting a torn last record,
    /// and adopts the newest pack with room as the active one.
    pub(super) fn recover(&mut self) -> io::Result<()> {
        let mut candidate: Option<Active> = None;
        for id in pack::list_packs(&self.packs_dir)? {
            let path = pack::pack_path(&self.packs_dir, id);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            if !pack::flock(&file, true, false)? {
                continue; // another process is appending to it
            }
            let len = file.metadata()?.len();
            if len < PACK_HEADER_LEN {
                // Created but never written: a crash between create and header write.
                drop(file);
                fs::remove_file(&path)?;
                self.recovery
                    .push(format!("removed empty pack {}", path.display()));
                continue;
            }
            pack::check_pack_header(&file)?;
            let indexed = self.indexed_end(id)?;
            let mut end = len;
            if len > indexed {
                let (found, valid_end, problem) = pack::walk(&file, indexed, true)?;
                let mut wtxn = self.env.write_txn().map_err(heed_error)?;
                for Found { offset, header } in &found {
                    let loc = Location {
                        pack: id,
                        offset: *offset,
                        stored_len: header.stored_len,
                        raw_len: header.raw_len,
                    };
                    self.blobs
                        .put(&mut wtxn, &header.hash, &loc.encode())
                        .map_err(heed_error)?;
                }
                if let Some(why) = problem {
                    file.set_len(valid_end)?;
                    file.sync_all()?;
                    self.recovery.push(format!(
                        "cut torn tail of {} at byte {valid_end} ({} bytes dropped: {why})",
                        path.display(),
                        len - valid_end
                    ));
                    end = valid_end;
                }
                self.packs
                    .put(&mut wtxn, &id.to_be_bytes(), &end.to_le_bytes())
                    .map_err(heed_error)?;
                wtxn.commit().map_err(heed_error)?;
                self.env.force_sync().map_err(heed_error)?;
            } else if len < indexed {
                self.recovery.push(format!(
                    "{} is shorter ({len} bytes) than the blob index says ({indexed}): run verify",
                    path.display()
                ));
            }
            if end < self.config.pack_size {
                candidate = Some(Active {
                    id,
                    file: Arc::new(file),
                    len: end,
                });
            }
        }
        if let Some(act) = candidate {
            self.readers
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .insert(act.id, act.file.clone());
            self.own
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .insert(act.id);
            let appender = self.appender.get_mut().unwrap_or_else(|p| p.into_inner());
            appender.open.insert(act.id);
            appender.idle.push(act);
        }
        Ok(())
    }
}
