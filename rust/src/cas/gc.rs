//! Garbage collection and repacking: rewriting packs one at a time while the store is in use.

use super::recovery::{found_location, DamageReport};
use super::{
    blob_record, lock, Active, BlobStore, HistoryEvent, Location, Result, Store, StoreError,
};
use crate::manifest::{Hash, Manifest};
use crate::pack::{
    self, Codec, Damage, RecordHeader, RecordKind, PACK_HEADER_LEN, RECORD_HEADER_LEN,
};
use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// What [`Store::gc`] did.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub packs_rewritten: u64,
    /// Packs left as they were: another process appends to them, or the blob index has not
    /// caught up with them yet.
    pub packs_skipped: u64,
    /// Bytes of the packs rewritten, and of the packs written in their place.
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub blobs_kept: u64,
    pub records_dropped: u64,
    /// Live blobs the store does not hold.
    pub missing: Vec<Hash>,
    /// Records and stretches that could not be read intact: moved to the quarantine, not
    /// copied.
    pub damaged: Vec<DamageReport>,
}

/// What [`Store::gc`] reports as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcEvent {
    /// A new pack that will hold nothing but copies of records already in the log. Whoever
    /// replays the log must count it as applied throughout, durably, before the copies exist:
    /// replaying a copied tombstone would delete an instance stored again since.
    Claim(u32),
    /// A pack was rewritten and removed: its size, and what its copies take.
    Rewritten {
        pack: u32,
        bytes_before: u64,
        bytes_after: u64,
    },
}

/// What a gc keeps: every record, or what live manifests reference.
struct Keep {
    /// Live blobs and the hashes of live manifests.
    live: Option<(HashSet<Hash>, HashSet<Hash>)>,
}

impl Keep {
    fn new(live: Option<&[Manifest]>) -> Keep {
        Keep {
            live: live.map(|manifests| {
                let blobs = manifests
                    .iter()
                    .flat_map(|m| m.blobs.iter().map(|b| b.hash))
                    .collect();
                let hashes = manifests
                    .iter()
                    .map(|m| *blake3::hash(&m.encode()).as_bytes())
                    .collect();
                (blobs, hashes)
            }),
        }
    }

    fn blob(&self, hash: &Hash) -> bool {
        self.live
            .as_ref()
            .is_none_or(|(blobs, _)| blobs.contains(hash))
    }

    /// Manifest records of live manifests; tombstones go with the manifests they cancelled.
    fn history(&self, kind: RecordKind, payload: &[u8]) -> bool {
        let Some((_, manifests)) = &self.live else {
            return true;
        };
        kind == RecordKind::Manifest
            && HistoryEvent::parse(kind, payload, 0, 0)
                .is_some_and(|e| manifests.contains(&e.target))
    }
}

/// One run of [`Store::gc`]: the pack its copies go to and what it did so far.
struct Rewrite<'a, F: FnMut(GcEvent) -> Result<()>> {
    store: &'a Store,
    keep: &'a Keep,
    recode: Option<(Codec, i32)>,
    output: Option<Active>,
    report: GcReport,
    on_event: &'a mut F,
}

impl<F: FnMut(GcEvent) -> Result<()>> Rewrite<'_, F> {
    /// Copies what pack `id` keeps, points the blob index at the copies, removes the pack.
    fn pack(&mut self, id: u32) -> Result<()> {
        let store = self.store;
        let inner = &*store.inner;
        let Some(file) = store.closed_pack(id)? else {
            self.report.packs_skipped += 1;
            return Ok(());
        };
        let bytes_before = file.metadata()?.len();
        if inner.indexed_end(id)? != bytes_before {
            self.report.packs_skipped += 1;
            return Ok(());
        }
        let walk = pack::walk(&file, PACK_HEADER_LEN, bytes_before, false)?;
        // Stretches without a readable header, and records that fail their checks below: set
        // aside in the quarantine, never dropped.
        let mut damage: Vec<Damage> = walk.damaged.into_iter().chain(walk.torn).collect();
        // Only the record the blob index points at is a hash's copy: any other is a duplicate,
        // or a record known to be damaged.
        let state: Vec<(bool, bool)> = {
            let rtxn = inner.env.read_txn()?;
            let at = |db: heed::Database<heed::types::Bytes, heed::types::Bytes>, f| {
                let here = found_location(id, f);
                let at = db.get(&rtxn, &f.header.hash)?;
                Ok::<_, StoreError>(at.map(Location::decode).transpose()? == Some(here))
            };
            walk.found
                .iter()
                .map(|f| Ok((at(inner.blobs, f)?, at(inner.damaged, f)?)))
                .collect::<Result<_>>()?
        };
        let mut moved: Vec<(Hash, Location, Location)> = Vec::new();
        let mut dropped: Vec<(Hash, Location)> = Vec::new();
        let mut outputs: Vec<u32> = Vec::new();
        let mut bytes_after = 0;
        for (f, (current, known_damaged)) in walk.found.iter().zip(state) {
            let here = found_location(id, f);
            let hash = f.header.hash;
            let damaged = |why: String| Damage {
                offset: f.offset,
                len: f.header.record_len(),
                header: Some(f.header),
                why,
            };
            if known_damaged {
                damage.push(damaged("known to be damaged".into()));
                continue;
            }
            if !current || (f.header.kind == RecordKind::Blob && !self.keep.blob(&hash)) {
                self.report.records_dropped += 1;
                dropped.push((hash, here));
                continue;
            }
            let copy = pack::read_payload(&file, f.offset, &f.header).and_then(|stored| {
                if f.header.kind != RecordKind::Blob && !self.keep.history(f.header.kind, &stored) {
                    return Ok(None);
                }
                match self.recode {
                    Some((codec, level)) if f.header.kind == RecordKind::Blob => {
                        let raw = pack::decode_payload(&f.header, stored)?;
                        if blake3::hash(&raw).as_bytes() != &hash {
                            return Err("content does not match its hash".to_string());
                        }
                        blob_record(hash, &raw, codec, level)
                            .map(|(h, s)| Some((h, s.into_owned())))
                            .map_err(|e| e.to_string())
                    }
                    _ => Ok(Some((f.header, stored))),
                }
            });
            match copy {
                Ok(Some((header, stored))) => {
                    let to = self.append(&header, &stored, &mut outputs)?;
                    bytes_after += header.record_len();
                    if header.kind == RecordKind::Blob {
                        self.report.blobs_kept += 1;
                    }
                    moved.push((hash, here, to));
                }
                Ok(None) => {
                    self.report.records_dropped += 1;
                    dropped.push((hash, here));
                }
                Err(why) => {
                    damage.push(damaged(why));
                    dropped.push((hash, here));
                }
            }
        }
        for d in &damage {
            let mut report = DamageReport::new(id, d);
            report.quarantined = Some(inner.quarantine(&file, id, d.offset, d.len)?);
            self.report.damaged.push(report);
        }
        let mut ends = Vec::with_capacity(outputs.len());
        for &out in &outputs {
            let file = store.pack_file(out)?;
            file.sync_data()?;
            ends.push((out, file.metadata()?.len()));
        }
        // The copies' directory entries are durable before the old pack's removal can be.
        File::open(&inner.packs_dir)?.sync_all()?;
        let mut wtxn = inner.env.write_txn()?;
        let is_at = |wtxn: &heed::RwTxn, hash: &Hash, loc: &Location| -> Result<bool> {
            let at = inner.blobs.get(wtxn, hash)?;
            Ok(at.map(Location::decode).transpose()? == Some(*loc))
        };
        for (hash, from, to) in &moved {
            if is_at(&wtxn, hash, from)? {
                inner.blobs.put(&mut wtxn, hash, &to.encode())?;
            }
        }
        for (hash, from) in &dropped {
            if is_at(&wtxn, hash, from)? {
                inner.blobs.delete(&mut wtxn, hash)?;
            }
        }
        // What was known to be damaged in this pack is in the quarantine now.
        for d in &damage {
            if let Some(header) = &d.header {
                let at = inner.damaged.get(&wtxn, &header.hash)?;
                if at
                    .map(Location::decode)
                    .transpose()?
                    .is_some_and(|at| at.pack == id)
                {
                    inner.damaged.delete(&mut wtxn, &header.hash)?;
                }
            }
        }
        for (out, end) in &ends {
            inner
                .packs
                .put(&mut wtxn, &out.to_be_bytes(), &end.to_le_bytes())?;
        }
        inner.packs.delete(&mut wtxn, &id.to_be_bytes())?;
        wtxn.commit()?;
        inner.env.force_sync()?;
        store.remove_pack(id)?;
        self.report.packs_rewritten += 1;
        self.report.bytes_before += bytes_before;
        self.report.bytes_after += bytes_after;
        (self.on_event)(GcEvent::Rewritten {
            pack: id,
            bytes_before,
            bytes_after,
        })
    }

    /// Appends a copy to the gc's own output pack (claiming a new one when it is full).
    fn append(
        &mut self,
        header: &RecordHeader,
        stored: &[u8],
        outputs: &mut Vec<u32>,
    ) -> Result<Location> {
        let record_len = header.record_len();
        let limit = self.store.inner.config.pack_size;
        if self
            .output
            .as_ref()
            .is_none_or(|o| o.len > PACK_HEADER_LEN && o.len + record_len > limit)
        {
            let (id, file) = self.store.inner.create_next_pack()?;
            self.output = Some(Active {
                id,
                file,
                len: PACK_HEADER_LEN,
            });
            (self.on_event)(GcEvent::Claim(id))?;
        }
        let out = self.output.as_mut().expect("an output pack");
        if outputs.last() != Some(&out.id) {
            outputs.push(out.id);
        }
        let offset = out.len;
        out.file.write_all_at(&header.encode(), offset)?;
        out.file.write_all_at(stored, offset + RECORD_HEADER_LEN)?;
        out.len += record_len;
        Ok(Location {
            pack: out.id,
            offset,
            stored_len: header.stored_len,
            raw_len: header.raw_len,
        })
    }
}

impl Store {
    /// Rewrites the packs, one at a time, while the store goes on being read and appended to:
    /// with `live`, keeping only what those manifests reference (the store must be exclusive:
    /// an instance still arriving references blobs no indexed manifest does); without, keeping
    /// every record. With `recode`, every blob is stored anew with that codec and level
    /// (repacking), its content checked against its hash first.
    ///
    /// The packs open for appending when it starts are closed first (later records go to new
    /// packs, which it leaves alone, as it does those a streaming blob holds and those of other
    /// processes). Each pack's records are copied into packs of its own, fsynced, then the blob
    /// index is pointed at the copies in one transaction, and only then is the old pack
    /// removed: a reader that found the old place either still holds the pack open (an
    /// unlinked file stays readable) or, failing to open it, looks the blob up again.
    ///
    /// `on_event` hears of each pack it claims before writing into it and of each pack it has
    /// rewritten; an error from it stops the gc with the old pack still in place.
    pub fn gc(
        &self,
        live: Option<&[Manifest]>,
        recode: Option<(Codec, i32)>,
        mut on_event: impl FnMut(GcEvent) -> Result<()>,
    ) -> Result<GcReport> {
        if live.is_some() {
            self.require_exclusive("gc")?;
        }
        let inner = &*self.inner;
        let _running = match inner.gc.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(StoreError::Busy("a gc or repack is already running".into()))
            }
        };
        let keep = Keep::new(live);
        let existing = pack::list_packs(&inner.packs_dir)?;
        let still_open = {
            let mut a = lock(&inner.appender);
            for act in std::mem::take(&mut a.idle) {
                a.open.remove(&act.id);
            }
            a.open.clone()
        };
        // Whatever was appended to the packs just closed is now indexed, so the blob index
        // says which of their records are current.
        self.commit()?;
        let mut rewrite = Rewrite {
            store: self,
            keep: &keep,
            recode,
            output: None,
            report: GcReport::default(),
            on_event: &mut on_event,
        };
        for id in existing {
            if !still_open.contains(&id) {
                rewrite.pack(id)?;
            }
        }
        let mut report = rewrite.report;
        if let Some(live) = live {
            for blob in live.iter().flat_map(|m| &m.blobs) {
                if !self.contains(&blob.hash)? {
                    report.missing.push(blob.hash);
                }
            }
        }
        report.missing.sort_unstable();
        report.missing.dedup();
        Ok(report)
    }

    /// Pack `id`, with its lock held so that no other process adopts it for appending while it
    /// is rewritten; None when another process appends to it.
    fn closed_pack(&self, id: u32) -> Result<Option<Arc<File>>> {
        if lock(&self.inner.own).contains(&id) {
            // Locked since this process created or adopted it, and closed by `gc`.
            return self.pack_file(id).map(Some);
        }
        let file = File::open(pack::pack_path(&self.inner.packs_dir, id))?;
        Ok(pack::flock(&file, true, false)?.then(|| Arc::new(file)))
    }

    /// Forgets pack `id` and removes its file. The readers' lock is held across the unlink so
    /// that no reader opens the file after its entry is gone and keeps it in the map.
    fn remove_pack(&self, id: u32) -> Result<()> {
        let mut readers = self
            .inner
            .readers
            .write()
            .unwrap_or_else(|p| p.into_inner());
        readers.remove(&id);
        lock(&self.inner.own).remove(&id);
        Ok(fs::remove_file(pack::pack_path(&self.inner.packs_dir, id))?)
    }
}
