//! What opening the store, `reindex` and `verify` find in the packs, and what they repair.
//!
//! The packs are the archive's log and hold the only copy of what was acknowledged, so nothing
//! here deletes a byte of them. A damaged record is skipped by its length and reported; when its
//! header is intact its hash is known as damaged (so `contains` does not find it and a re-sent
//! copy is stored again, and what is left of it can still be salvaged). Only a torn tail — bytes
//! after the last valid record that no valid record follows — is taken out of its pack, and
//! moved to `<root>/quarantine/` before the pack is cut, so that appending resumes at a
//! verified record boundary.

use super::{Active, Inner, Location, Result, Store};
use crate::manifest::Hash;
use crate::pack::{self, Damage, Found, RecordKind, Walk, PACK_HEADER_LEN};
use heed::RwTxn;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// A damaged record or stretch of a pack, as `verify`, `reindex` and opening report it.
#[derive(Debug, Clone)]
pub struct DamageReport {
    pub pack: u32,
    pub offset: u64,
    pub len: u64,
    /// The record's hash and kind, when its header is intact.
    pub hash: Option<Hash>,
    pub kind: Option<RecordKind>,
    pub why: String,
    /// A valid copy of the record is elsewhere in the packs: nothing depends on this one.
    pub superseded: bool,
    /// Where its bytes were moved (a torn tail, or damage a gc took out of a pack).
    pub quarantined: Option<PathBuf>,
    /// The object it is, on object storage (a segment, a blob's object); `pack` and `offset`
    /// then say nothing.
    pub object: Option<String>,
}

impl DamageReport {
    pub(super) fn new(pack: u32, damage: &Damage) -> DamageReport {
        DamageReport {
            pack,
            offset: damage.offset,
            len: damage.len,
            hash: damage.header.map(|h| h.hash),
            kind: damage.header.map(|h| h.kind),
            why: damage.why.clone(),
            superseded: false,
            quarantined: None,
            object: None,
        }
    }

    /// Object `key` on object storage, which fails its checks for `why`; `hash` when it is a
    /// blob's object.
    pub fn in_object(key: String, hash: Option<Hash>, why: String) -> DamageReport {
        DamageReport {
            pack: 0,
            offset: 0,
            len: 0,
            hash,
            kind: hash.map(|_| RecordKind::Blob),
            why,
            superseded: false,
            quarantined: None,
            object: Some(key),
        }
    }

    /// Where it lies, in a line: a pack and an offset, or an object's key.
    pub fn place(&self) -> String {
        match &self.object {
            Some(key) => format!("object {key}"),
            None => format!("pack {} at byte {}", self.pack, self.offset),
        }
    }

    /// One line for a log or a report.
    pub fn message(&self) -> String {
        let what = match (self.kind, &self.hash) {
            (Some(kind), Some(hash)) => {
                format!("{kind:?} record {}", super::hex(hash)).to_lowercase()
            }
            _ => "a record whose header cannot be read".to_string(),
        };
        let mut line = match &self.object {
            Some(key) => format!("object {key}: {what}: {}", self.why),
            None => format!(
                "pack {} bytes {}..{}: {what}: {}",
                self.pack,
                self.offset,
                self.offset + self.len,
                self.why
            ),
        };
        if self.superseded {
            line.push_str(" (a valid copy is stored elsewhere)");
        }
        if let Some(path) = &self.quarantined {
            line.push_str(&format!(" (moved to {})", path.display()));
        }
        line
    }
}

/// What [`Store::verify`] checked and found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub records_checked: u64,
    pub bytes_checked: u64,
    pub damaged: Vec<DamageReport>,
}

/// What [`Store::rebuild_blob_index`] indexed and found.
#[derive(Debug, Clone, Default)]
pub struct RebuildReport {
    pub records: u64,
    pub damaged: Vec<DamageReport>,
}

impl Store {
    /// Re-reads every record the blob index has taken into account, in every pack: header,
    /// checksum, decoded length and BLAKE3 hash. A record found damaged is reported and known
    /// as damaged from now on (a re-sent copy is then stored again, not de-duplicated against
    /// it); a blob index entry that points at no valid record is reported and dropped.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.commit()?;
        let inner = &*self.inner;
        let mut report = VerifyReport::default();
        // Per pack walked: how far, and where its valid records start.
        let mut walked: HashMap<u32, (u64, HashSet<u64>)> = HashMap::new();
        for id in pack::list_packs(&inner.packs_dir)? {
            let Some(file) = self.listed_pack(id, false)? else {
                continue; // removed by a gc since it was listed
            };
            // Records beyond what the blob index took into account are still being appended.
            let to = inner.indexed_end(id)?.min(file.metadata()?.len());
            let mut walk = pack::walk(&file, PACK_HEADER_LEN, to, false)?;
            let mut good = HashSet::with_capacity(walk.found.len());
            for f in &walk.found {
                report.records_checked += 1;
                report.bytes_checked += f.header.stored_len;
                let at = found_location(id, f);
                match self.read_record(&f.header.hash, &at, true) {
                    Ok(_) => {
                        good.insert(f.offset);
                    }
                    Err(e) => walk.damaged.push(Damage {
                        offset: f.offset,
                        len: f.header.record_len(),
                        header: Some(f.header),
                        why: e.to_string(),
                    }),
                }
            }
            walk.damaged.extend(walk.torn.take());
            walk.damaged.sort_by_key(|d| d.offset);
            if !walk.damaged.is_empty() {
                let mut wtxn = inner.env.write_txn()?;
                inner.mark_damaged(&mut wtxn, id, &walk.damaged, &mut report.damaged)?;
                wtxn.commit()?;
            }
            walked.insert(id, (to, good));
        }
        let pointing_nowhere = {
            let rtxn = inner.env.read_txn()?;
            let mut out = Vec::new();
            for item in inner.blobs.iter(&rtxn)? {
                let (key, value) = item?;
                let loc = Location::decode(value)?;
                let Some((to, good)) = walked.get(&loc.pack) else {
                    continue; // a pack created since the walk
                };
                if loc.offset < *to && !good.contains(&loc.offset) {
                    out.push((key.to_vec(), loc));
                }
            }
            out
        };
        if !pointing_nowhere.is_empty() {
            let mut wtxn = inner.env.write_txn()?;
            for (key, loc) in pointing_nowhere {
                let still = inner.blobs.get(&wtxn, &key)?;
                if still.map(Location::decode).transpose()? != Some(loc) {
                    continue;
                }
                inner.blobs.delete(&mut wtxn, &key)?;
                report.damaged.push(DamageReport {
                    pack: loc.pack,
                    offset: loc.offset,
                    len: loc.stored_len,
                    hash: key.as_slice().try_into().ok(),
                    kind: None,
                    why: "the blob index points at no valid record".into(),
                    superseded: false,
                    quarantined: None,
                    object: None,
                });
            }
            wtxn.commit()?;
        }
        Ok(report)
    }

    /// Rebuilds the blob index from the packs alone: every valid record indexed, every
    /// damaged one reported (and known as damaged), torn tails moved to the quarantine.
    pub fn rebuild_blob_index(&self) -> Result<RebuildReport> {
        self.require_exclusive("reindex")?;
        self.commit()?;
        let inner = &*self.inner;
        let mut report = RebuildReport::default();
        let mut wtxn = inner.env.write_txn()?;
        inner.blobs.clear(&mut wtxn)?;
        inner.packs.clear(&mut wtxn)?;
        inner.damaged.clear(&mut wtxn)?;
        for id in pack::list_packs(&inner.packs_dir)? {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(pack::pack_path(&inner.packs_dir, id))?;
            let len = file.metadata()?.len();
            let walk = pack::walk(&file, PACK_HEADER_LEN, len, true)?;
            report.records += inner.index_walk(&mut wtxn, id, &file, &walk, &mut report.damaged)?;
        }
        wtxn.commit()?;
        inner.env.force_sync()?;
        Ok(report)
    }
}

impl Inner {
    /// Indexes what lies beyond each unlocked pack's indexed length (the whole pack again when
    /// it is shorter than the blob index says), sets torn tails aside, and adopts the newest
    /// pack with room as the active one.
    pub(super) fn recover(&mut self) -> Result<()> {
        let mut candidate: Option<Active> = None;
        for id in pack::list_packs(&self.packs_dir)? {
            let path = pack::pack_path(&self.packs_dir, id);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            if !pack::flock(&file, true, false)? {
                continue; // another process is appending to it
            }
            let len = file.metadata()?.len();
            if len < PACK_HEADER_LEN {
                // Created but its header never written whole: no record can be in it.
                drop(file);
                fs::remove_file(&path)?;
                self.recovery
                    .push(format!("removed empty pack {}", path.display()));
                continue;
            }
            if let Err(e) = pack::check_pack_header(&file) {
                self.recovery.push(format!(
                    "pack {id}: {e} (its header is damaged): its records are read all the same"
                ));
            }
            let indexed = self.indexed_end(id)?;
            let mut end = len;
            if len != indexed {
                let shrunk = len < indexed;
                let walk = pack::walk(
                    &file,
                    if shrunk { PACK_HEADER_LEN } else { indexed },
                    len,
                    true,
                )?;
                let mut wtxn = self.env.write_txn()?;
                if shrunk {
                    self.recovery.push(format!(
                        "pack {id} is shorter ({len} bytes) than the blob index says ({indexed}): walked again"
                    ));
                    self.forget_pack(&mut wtxn, id)?;
                }
                let mut damaged = Vec::new();
                self.index_walk(&mut wtxn, id, &file, &walk, &mut damaged)?;
                wtxn.commit()?;
                self.env.force_sync()?;
                self.recovery
                    .extend(damaged.iter().map(DamageReport::message));
                end = walk.end;
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

    /// Takes a walk of pack `id` into the blob index: its valid records found, its damaged
    /// ones known as damaged, its torn tail moved to the quarantine and cut (`file` must be
    /// open for writing), its indexed end recorded. Returns how many records it indexed.
    fn index_walk(
        &self,
        wtxn: &mut RwTxn,
        id: u32,
        file: &File,
        walk: &Walk,
        reports: &mut Vec<DamageReport>,
    ) -> Result<u64> {
        for f in &walk.found {
            self.blobs
                .put(wtxn, &f.header.hash, &found_location(id, f).encode())?;
            self.damaged.delete(wtxn, &f.header.hash)?;
        }
        self.mark_damaged(wtxn, id, &walk.damaged, reports)?;
        if let Some(torn) = &walk.torn {
            let mut report = DamageReport::new(id, torn);
            report.why = format!("torn tail cut ({})", torn.why);
            report.quarantined = Some(self.quarantine(file, id, torn.offset, torn.len)?);
            file.set_len(torn.offset)?;
            file.sync_all()?;
            reports.push(report);
        }
        self.packs
            .put(wtxn, &id.to_be_bytes(), &walk.end.to_le_bytes())?;
        Ok(walk.found.len() as u64)
    }

    /// Records damaged records of pack `id` as such: a record whose hash has a valid copy
    /// elsewhere is superseded; otherwise the blob index forgets the hash (if it pointed here)
    /// and `damaged` remembers where it lies.
    pub(super) fn mark_damaged(
        &self,
        wtxn: &mut RwTxn,
        id: u32,
        damaged: &[Damage],
        reports: &mut Vec<DamageReport>,
    ) -> Result<()> {
        for damage in damaged {
            let mut report = DamageReport::new(id, damage);
            if let Some(header) = &damage.header {
                let here = Location {
                    pack: id,
                    offset: damage.offset,
                    stored_len: header.stored_len,
                    raw_len: header.raw_len,
                };
                let indexed = self.blobs.get(wtxn, &header.hash)?;
                match indexed.map(Location::decode).transpose()? {
                    Some(at) if at != here => report.superseded = true,
                    _ => {
                        self.blobs.delete(wtxn, &header.hash)?;
                        self.damaged.put(wtxn, &header.hash, &here.encode())?;
                    }
                }
            }
            reports.push(report);
        }
        Ok(())
    }

    /// Drops every blob index entry that points into pack `id` (before walking it again).
    fn forget_pack(&self, wtxn: &mut RwTxn, id: u32) -> Result<()> {
        for db in [self.blobs, self.damaged] {
            let mut keys = Vec::new();
            for item in db.iter(wtxn)? {
                let (key, value) = item?;
                if Location::decode(value)?.pack == id {
                    keys.push(key.to_vec());
                }
            }
            for key in keys {
                db.delete(wtxn, &key)?;
            }
        }
        Ok(())
    }

    /// Copies `len` bytes of pack `id` from `offset` into a new file under the quarantine
    /// directory, durably, and returns its path.
    pub(super) fn quarantine(
        &self,
        file: &File,
        id: u32,
        offset: u64,
        len: u64,
    ) -> Result<PathBuf> {
        fs::create_dir_all(&self.quarantine_dir)?;
        let base = format!("pack-{id:08}.dvp@{offset}");
        let (path, mut out) = (0..)
            .map(|n| match n {
                0 => self.quarantine_dir.join(&base),
                n => self.quarantine_dir.join(format!("{base}.{n}")),
            })
            .find_map(
                |path| match OpenOptions::new().write(true).create_new(true).open(&path) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => None,
                    opened => Some(opened.map(|f| (path, f))),
                },
            )
            .expect("an unused name")?;
        let mut buf = vec![0u8; (len as usize).min(1 << 20)];
        let mut at = offset;
        while at < offset + len {
            let n = buf.len().min((offset + len - at) as usize);
            file.read_exact_at(&mut buf[..n], at)?;
            out.write_all(&buf[..n])?;
            at += n as u64;
        }
        out.sync_all()?;
        File::open(&self.quarantine_dir)?.sync_all()?;
        Ok(path)
    }
}

pub(super) fn found_location(pack: u32, f: &Found) -> Location {
    Location {
        pack,
        offset: f.offset,
        stored_len: f.header.stored_len,
        raw_len: f.header.raw_len,
    }
}
