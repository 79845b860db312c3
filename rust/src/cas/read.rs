//! Reading instances back out of any blob store: a manifest's blobs in order, each checked.

use super::blobs::{check_length, BlobStore};
use super::{invalid, Result, StoreError};
use crate::manifest::{BlobRef, Manifest};
use crate::scan::SegmentKind;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Whole instances, frames and data sets, read through a [`BlobStore`]: every store has them.
pub trait ReadInstances: BlobStore {
    /// One of the blobs an instance is made of, checked against the manifest's length. A blob
    /// the store does not hold is damage here too.
    fn read_part(&self, blob: &BlobRef) -> Result<Vec<u8>> {
        let data = self.get(&blob.hash).map_err(missing_is_damage)?;
        check_length(blob, data.len())?;
        Ok(data)
    }

    /// The bytes of one of an instance's blobs from `skip` on: the whole blob, or (an instance
    /// read from the middle of a blob) a range of it.
    fn read_part_from(&self, blob: &BlobRef, skip: u64) -> Result<Vec<u8>> {
        if skip == 0 {
            return self.read_part(blob);
        }
        self.get_range(blob, skip..blob.length)
            .map_err(missing_is_damage)
    }

    /// Whether two stored instances hold the same data set, byte for byte, whatever their File
    /// Meta (a C-STORE's is made by the receiver: the same data set sent by two AEs, or
    /// imported once and sent once, differs only there). The blobs after the header segment
    /// are compared by hash; the header blobs are read. InvalidData if one cannot be read.
    fn same_data_set(&self, a: &Manifest, b: &Manifest) -> Result<bool> {
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
    fn check_instance(&self, manifest: &Manifest) -> Result<()> {
        manifest
            .blobs
            .iter()
            .try_for_each(|b| self.read_part(b).map(drop))
    }

    /// Hands the instance's bytes from `start` on to `f`, one blob at a time.
    fn for_each_chunk(
        &self,
        manifest: &Manifest,
        start: u64,
        mut f: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<()> {
        let mut at = 0u64;
        for blob in &manifest.blobs {
            let end = at + blob.length;
            if end > start {
                f(&self.read_part_from(blob, start.saturating_sub(at))?)?;
            }
            at = end;
        }
        Ok(())
    }

    fn read_instance(&self, manifest: &Manifest, start: u64) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(manifest.total_length.saturating_sub(start) as usize);
        self.for_each_chunk(manifest, start, |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }

    /// Writes the instance to `path` (through a temporary file, so a reader never sees half).
    fn export(&self, manifest: &Manifest, path: &Path) -> Result<()> {
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
    fn read_frame(&self, manifest: &Manifest, index: u32) -> Result<Vec<u8>> {
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

impl<B: BlobStore + ?Sized> ReadInstances for B {}

/// A blob a manifest references but the store does not hold: the instance is damaged.
fn missing_is_damage(e: StoreError) -> StoreError {
    match e {
        StoreError::NotFound(why) => invalid(format!("{why}: the instance is damaged")),
        e => e,
    }
}
