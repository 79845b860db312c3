//! The packs as a blob store: blobs appended as pack records and found through the blob index.
//!
//! A put appends a record (compressed when the store's codec says so and it saves space); a
//! large blob is streamed into a pack it holds alone while its bytes arrive; a get reads one
//! record and checks its header and checksum, and a range read reads the whole record, its
//! checksum covering the payload whole. A delete only drops the blob index's entry: the
//! record stays in its pack until a gc rewrites the pack without it (a `reindex` before that
//! finds it again), since packs are append-only. `flush` is the store's group commit.

use super::blobs::{BlobStore, BlobWriter};
use super::{
    blob_record, hex, invalid, lock, Active, Location, Result, Store, StoreError, EARLY_SYNC,
    MAX_BLOB,
};
use crate::manifest::{BlobRef, Hash};
use crate::pack::{self, Codec, RecordHeader, RecordKind, RECORD_HEADER_LEN};
use std::fs::File;
use std::ops::Bound;
use std::os::unix::fs::FileExt;

impl BlobStore for Store {
    fn put(&self, hash: Hash, bytes: &[u8]) -> Result<bool> {
        if self.contains(&hash)? {
            return Ok(false);
        }
        let (header, stored) = blob_record(
            hash,
            bytes,
            self.inner.config.codec,
            self.inner.config.level,
        )?;
        Ok(self.append(header, &stored, true)?.is_some())
    }

    /// Only when blobs are kept as they are: a compressed record is written whole.
    fn stream_blob(&self) -> Result<Option<Box<dyn BlobWriter>>> {
        if self.inner.config.codec != Codec::Raw {
            return Ok(None);
        }
        let act = self.take_pack(
            &mut lock(&self.inner.appender),
            RECORD_HEADER_LEN + MAX_BLOB as u64,
        )?;
        Ok(Some(Box::new(StreamingBlob {
            store: self.clone(),
            offset: act.len,
            early_synced: act.len,
            pack: Some(act),
            hasher: blake3::Hasher::new(),
            crc: crc32fast::Hasher::new(),
            len: 0,
        })))
    }

    /// Its record's header and checksum checked (not its hash: `verify` does that).
    fn get(&self, hash: &Hash) -> Result<Vec<u8>> {
        match self.location(hash)? {
            Some(loc) => self.read_found(hash, loc, false),
            None => Err(match self.damaged_location(hash)? {
                Some(at) => invalid(format!(
                    "blob {} is damaged (pack {} at byte {}): its record fails its checks",
                    hex(hash),
                    at.pack,
                    at.offset
                )),
                None => StoreError::NotFound(format!("blob {} is not in the store", hex(hash))),
            }),
        }
    }

    fn contains(&self, hash: &Hash) -> Result<bool> {
        Ok(self.location(hash)?.is_some())
    }

    /// The blob index holds manifest and tombstone records too: each entry's record header
    /// says which are blobs.
    fn list(&self, after: Option<&Hash>, limit: usize) -> Result<Vec<BlobRef>> {
        // What was appended reaches the blob index first, so that it is listed.
        self.commit()?;
        let mut out = Vec::with_capacity(limit.min(4096));
        let mut from = after.copied();
        while out.len() < limit {
            let page: Vec<(Hash, Location)> = {
                let rtxn = self.inner.env.read_txn()?;
                let start = from
                    .as_ref()
                    .map_or(Bound::Unbounded, |h| Bound::Excluded(&h[..]));
                let mut page = Vec::new();
                for item in self.inner.blobs.range(&rtxn, &(start, Bound::Unbounded))? {
                    let (key, value) = item?;
                    let hash: Hash = key
                        .try_into()
                        .map_err(|_| invalid("blob index key has the wrong size"))?;
                    page.push((hash, Location::decode(value)?));
                    if page.len() == limit - out.len() {
                        break;
                    }
                }
                page
            };
            let Some(&(last, _)) = page.last() else {
                break;
            };
            // Read outside the transaction: a long list must not pin old pages of the index.
            for (hash, loc) in &page {
                if self.record_kind(hash, *loc)? == Some(RecordKind::Blob) {
                    out.push(BlobRef {
                        hash: *hash,
                        length: loc.raw_len,
                    });
                }
            }
            from = Some(last);
        }
        Ok(out)
    }

    fn delete(&self, hash: &Hash) -> Result<bool> {
        // What was appended reaches the blob index first, so that no commit puts it back.
        self.commit()?;
        let inner = &*self.inner;
        let mut wtxn = inner.env.write_txn()?;
        let held = inner.blobs.delete(&mut wtxn, hash)?;
        inner.damaged.delete(&mut wtxn, hash)?;
        wtxn.commit()?;
        Ok(held)
    }

    fn flush(&self) -> Result<()> {
        self.commit()
    }
}

impl Store {
    /// Reads and checks one record: header, checksum, hash and (for blobs) decoded length.
    pub(super) fn read_record(
        &self,
        hash: &Hash,
        loc: &Location,
        verify_hash: bool,
    ) -> Result<Vec<u8>> {
        let file = self.pack_file(loc.pack)?;
        let header = record_header(&file, hash, loc)?;
        let stored = pack::read_payload(&file, loc.offset, &header)
            .map_err(|why| invalid(format!("blob {}: {why}", hex(hash))))?;
        let raw = pack::decode_payload(&header, stored)
            .map_err(|why| invalid(format!("blob {}: {why}", hex(hash))))?;
        if verify_hash && blake3::hash(&raw).as_bytes() != hash {
            return Err(invalid(format!(
                "blob {}: content does not match its hash",
                hex(hash)
            )));
        }
        Ok(raw)
    }

    /// The kind of the record the blob index points at for `hash` (found where a gc moved it);
    /// None when a gc dropped it meanwhile.
    fn record_kind(&self, hash: &Hash, mut loc: Location) -> Result<Option<RecordKind>> {
        loop {
            let header = self
                .pack_file(loc.pack)
                .and_then(|file| record_header(&file, hash, &loc));
            match header {
                Err(e) if e.is_missing_file() => match self.location(hash)? {
                    Some(moved) if moved != loc => loc = moved,
                    _ => return Ok(None),
                },
                found => return found.map(|h| Some(h.kind)),
            }
        }
    }

    /// A blob's bytes even when its record fails its checksum: what is left of it, to index a
    /// damaged instance by its header, never to serve. The flag says they were salvaged.
    pub fn salvage_blob(&self, hash: &Hash) -> Result<(Vec<u8>, bool)> {
        match self.get(hash) {
            Err(StoreError::Damaged(_)) => {}
            read => return read.map(|data| (data, false)),
        }
        let loc = match self.location(hash)? {
            Some(loc) => loc,
            None => self
                .damaged_location(hash)?
                .ok_or_else(|| invalid(format!("blob {} cannot be salvaged", hex(hash))))?,
        };
        let file = self.pack_file(loc.pack)?;
        let header = pack::read_record_header(&file, loc.offset, file.metadata()?.len())
            .map_err(|why| invalid(format!("blob {}: {why}", hex(hash))))?;
        let mut stored = vec![0u8; header.stored_len as usize];
        file.read_exact_at(&mut stored, loc.offset + pack::RECORD_HEADER_LEN)?;
        let raw = pack::decode_payload(&header, stored)
            .map_err(|why| invalid(format!("blob {}: {why}", hex(hash))))?;
        Ok((raw, true))
    }

    /// Where a record known to be damaged lies.
    pub(super) fn damaged_location(&self, hash: &Hash) -> Result<Option<Location>> {
        let rtxn = self.inner.env.read_txn()?;
        self.inner
            .damaged
            .get(&rtxn, hash)?
            .map(Location::decode)
            .transpose()
    }

    /// [`Store::read_record`] at `loc`, or where the record went: a gc that moved it and
    /// removed its pack after `loc` was looked up has pointed the blob index at its copy.
    pub(super) fn read_found(
        &self,
        hash: &Hash,
        mut loc: Location,
        verify_hash: bool,
    ) -> Result<Vec<u8>> {
        loop {
            match self.read_record(hash, &loc, verify_hash) {
                Err(e) if e.is_missing_file() => match self.location(hash)? {
                    Some(moved) if moved != loc => loc = moved,
                    _ => return Err(e),
                },
                read => return read,
            }
        }
    }
}

/// The header of the record at `loc` of `file`, checked to be the one the blob index means.
fn record_header(file: &File, hash: &Hash, loc: &Location) -> Result<RecordHeader> {
    let header = pack::read_record_header(file, loc.offset, file.metadata()?.len())
        .map_err(|why| invalid(format!("blob {}: {why}", hex(hash))))?;
    if header.hash != *hash || header.stored_len != loc.stored_len || header.raw_len != loc.raw_len
    {
        return Err(invalid(format!(
            "blob {}: the pack holds another record at its place",
            hex(hash)
        )));
    }
    Ok(header)
}

/// A blob written into a pack as its bytes arrive. Its record header goes in last, once the
/// hash is known: a crash before that leaves a torn tail that opening the store cuts, and the
/// pack held meanwhile has no other record after it.
struct StreamingBlob {
    store: Store,
    pack: Option<Active>,
    /// Where the record starts in the pack.
    offset: u64,
    /// How far into the pack an early sync was requested.
    early_synced: u64,
    hasher: blake3::Hasher,
    crc: crc32fast::Hasher,
    len: u64,
}

impl BlobWriter for StreamingBlob {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let act = self.pack.as_ref().expect("a streaming blob holds its pack");
        let end = self.offset + RECORD_HEADER_LEN + self.len;
        act.file.write_all_at(bytes, end)?;
        self.hasher.update(bytes);
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
        // Whole pages only: a partial page synced now would be written again.
        let settled = (end + bytes.len() as u64) & !4095;
        if settled >= self.early_synced + EARLY_SYNC {
            self.store.inner.sync_early(&act.file);
            self.early_synced = settled;
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.len
    }

    /// Writes the record header; a blob the store already has is taken back out of the pack.
    fn finish(mut self: Box<Self>) -> Result<(Hash, bool)> {
        let hash = *self.hasher.finalize().as_bytes();
        let mut act = self.pack.take().expect("a streaming blob holds its pack");
        let store = self.store.clone();
        let known = store.contains(&hash);
        let mut a = lock(&store.inner.appender);
        if !matches!(known, Ok(false)) || a.lookup.contains_key(&hash) {
            let _ = act.file.set_len(self.offset);
            a.idle.push(act);
            return known.map(|_| (hash, false));
        }
        let header = RecordHeader {
            kind: RecordKind::Blob,
            codec: Codec::Raw,
            raw_len: self.len,
            stored_len: self.len,
            hash,
            payload_crc: self.crc.clone().finalize(),
        };
        if let Err(e) = act.file.write_all_at(&header.encode(), self.offset) {
            let _ = act.file.set_len(self.offset);
            a.idle.push(act);
            return Err(e.into());
        }
        act.len = self.offset + header.record_len();
        store.inner.sync_early(&act.file);
        a.appended(&act, hash, self.offset, &header);
        a.idle.push(act);
        Ok((hash, true))
    }
}

impl Drop for StreamingBlob {
    fn drop(&mut self) {
        // Abandoned (a broken association, a write error): the pack ends where it did.
        if let Some(act) = self.pack.take() {
            let _ = act.file.set_len(self.offset);
            lock(&self.store.inner.appender).idle.push(act);
        }
    }
}
