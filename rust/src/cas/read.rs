//! Reading blobs, frames and whole instances back out of the packs, each record checked.

use super::{hex, invalid, Location, Result, Store, StoreError};
use crate::manifest::{BlobRef, Hash, Manifest};
use crate::pack;
use crate::scan::SegmentKind;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

impl Store {
    /// Reads and checks one record: header, checksum, hash and (for blobs) decoded length.
    pub(super) fn read_record(
        &self,
        hash: &Hash,
        loc: &Location,
        verify_hash: bool,
    ) -> Result<Vec<u8>> {
        let file = self.pack_file(loc.pack)?;
        let header = pack::read_record_header(&file, loc.offset, file.metadata()?.len())
            .map_err(|why| invalid(format!("blob {}: {why}", hex(hash))))?;
        if header.hash != *hash
            || header.stored_len != loc.stored_len
            || header.raw_len != loc.raw_len
        {
            return Err(invalid(format!(
                "blob {}: the pack holds another record at its place",
                hex(hash)
            )));
        }
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

    /// A blob's bytes, its record's checksum and length checked. NotFound when the store does
    /// not hold it; Damaged when its record is.
    pub fn read_blob(&self, hash: &Hash) -> Result<Vec<u8>> {
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

    /// One of the blobs an instance is made of, checked against the manifest's length. A blob
    /// the store does not hold is damage here too.
    pub fn read_part(&self, blob: &BlobRef) -> Result<Vec<u8>> {
        let data = self.read_blob(&blob.hash).map_err(|e| match e {
            StoreError::NotFound(why) => invalid(format!("{why}: the instance is damaged")),
            e => e,
        })?;
        if data.len() as u64 != blob.length {
            return Err(invalid(format!(
                "blob {} has {} bytes, the manifest says {}",
                hex(&blob.hash),
                data.len(),
                blob.length
            )));
        }
        Ok(data)
    }

    /// Whether two stored instances hold the same data set, byte for byte, whatever their File
    /// Meta (a C-STORE's is made by the receiver: the same data set sent by two AEs, or
    /// imported once and sent once, differs only there). The blobs after the header segment
    /// are compared by hash; the header blobs are read. InvalidData if one cannot be read.
    pub fn same_data_set(&self, a: &Manifest, b: &Manifest) -> Result<bool> {
        if a == b {
            return Ok(true);
        }
        if a.total_length - a.dataset_offset != b.total_length - b.dataset_offset {
            return Ok(false);
        }
        let header_blobs = |m: &Manifest| match m.segments.first() {
            Some(s) if s.kind == SegmentKind::Header => s.blob_count as usize,
            _ => m.blobs.len(),
        };
        let (ha, hb) = (header_blobs(a), header_blobs(b));
        let data_set = |m: &Manifest, blobs: usize| -> Result<Vec<u8>> {
            let mut bytes = Vec::new();
            for blob in &m.blobs[..blobs] {
                bytes.extend_from_slice(&self.read_part(blob)?);
            }
            Ok(bytes.split_off((m.dataset_offset as usize).min(bytes.len())))
        };
        if a.blobs[ha..] == b.blobs[hb..] {
            Ok(data_set(a, ha)? == data_set(b, hb)?)
        } else {
            Ok(data_set(a, a.blobs.len())? == data_set(b, b.blobs.len())?)
        }
    }

    /// Reads every blob of an instance and checks it, keeping nothing: so that a response can
    /// fail before its first byte rather than in the middle.
    pub fn check_instance(&self, manifest: &Manifest) -> Result<()> {
        manifest
            .blobs
            .iter()
            .try_for_each(|b| self.read_part(b).map(drop))
    }

    /// A blob's bytes even when its record fails its checksum: what is left of it, to index a
    /// damaged instance by its header, never to serve. The flag says they were salvaged.
    pub fn salvage_blob(&self, hash: &Hash) -> Result<(Vec<u8>, bool)> {
        match self.read_blob(hash) {
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

    /// Hands the instance's bytes from `start` on to `f`, one blob at a time.
    pub fn for_each_chunk(
        &self,
        manifest: &Manifest,
        start: u64,
        mut f: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<()> {
        let mut at = 0u64;
        for blob in &manifest.blobs {
            let end = at + blob.length;
            if end > start {
                let data = self.read_part(blob)?;
                let skip = start.saturating_sub(at) as usize;
                f(&data[skip..])?;
            }
            at = end;
        }
        Ok(())
    }

    pub fn read_instance(&self, manifest: &Manifest, start: u64) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(manifest.total_length.saturating_sub(start) as usize);
        self.for_each_chunk(manifest, start, |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }

    /// Writes the instance to `path` (through a temporary file, so a reader never sees half).
    pub fn export(&self, manifest: &Manifest, path: &Path) -> Result<()> {
        let tmp = path.with_extension("dvtmp");
        let file = File::create(&tmp)?;
        let mut offset = 0u64;
        let written = self.for_each_chunk(manifest, 0, |chunk| {
            file.write_all_at(chunk, offset)?;
            offset += chunk.len() as u64;
            Ok(())
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(fs::rename(&tmp, path)?)
    }

    /// The pixel bytes of one frame: native values, or the encapsulated frame's fragments
    /// concatenated (item headers removed).
    pub fn read_frame(&self, manifest: &Manifest, index: u32) -> Result<Vec<u8>> {
        if !manifest.frames_resolved {
            return Err(StoreError::Unsupported(
                "the frames of this instance cannot be told apart (no offset table, no frame markers)"
                    .into(),
            ));
        }
        let blobs = manifest.frame_blobs(index).ok_or_else(|| {
            StoreError::NotFound(format!(
                "frame {index} is not in the instance ({} frames)",
                manifest.frame_count()
            ))
        })?;
        let mut data = Vec::new();
        for b in blobs {
            data.extend_from_slice(&self.read_part(b)?);
        }
        if !manifest.encapsulated {
            return Ok(data);
        }
        let mut out = Vec::with_capacity(data.len());
        let mut at = 0usize;
        while at + 8 <= data.len() {
            let length =
                u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
            let end = (at + 8)
                .checked_add(length)
                .filter(|&e| e <= data.len())
                .ok_or_else(|| invalid("fragment runs past its frame"))?;
            out.extend_from_slice(&data[at + 8..end]);
            at = end;
        }
        Ok(out)
    }
}
