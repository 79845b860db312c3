//! Streaming one instance into the store: blobs cut at the scanner's segment boundaries.

use super::{lock, Active, Result, Store, EARLY_SYNC, MAX_BLOB, STREAM_BLOB};
use crate::manifest::{BlobRef, Hash, Manifest, Segment};
use crate::pack::{Codec, RecordHeader, RecordKind, RECORD_HEADER_LEN};
use crate::scan::{FeedError, Parser, ScanOptions, SegmentKind, Sink, Summary};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

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

impl StreamingBlob {
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

    /// Writes the record header; returns the blob's hash and whether it was new (a blob the
    /// store already has is taken back out of the pack).
    fn finish(mut self) -> Result<(Hash, bool)> {
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

/// The result of streaming one instance into the store.
pub struct Ingested {
    pub summary: Summary,
    pub manifest: Manifest,
    /// Bytes of blobs this instance added (0 for a re-sent instance: everything de-duplicated).
    pub new_bytes: u64,
}

/// Cuts the stream into blobs at the scanner's segment boundaries (and every [`MAX_BLOB`]
/// bytes), hashing and appending each as it completes; a large blob of a store that keeps
/// blobs as they are goes into its pack while it arrives instead.
struct BlobSink {
    store: Store,
    buf: Vec<u8>,
    stream: Option<StreamingBlob>,
    blobs: Vec<BlobRef>,
    segments: Vec<Segment>,
    segment_start: u32,
    new_bytes: u64,
}

impl BlobSink {
    fn blob_len(&self) -> usize {
        self.stream
            .as_ref()
            .map_or(self.buf.len(), |s| s.len as usize)
    }

    fn flush_blob(&mut self) -> Result<()> {
        let (hash, length, new) = match self.stream.take() {
            Some(stream) => {
                let length = stream.len;
                let (hash, new) = stream.finish()?;
                (hash, length, new)
            }
            None if self.buf.is_empty() => return Ok(()),
            None => {
                let hash = *blake3::hash(&self.buf).as_bytes();
                let new = self.store.put_blob(hash, &self.buf)?;
                let length = self.buf.len() as u64;
                self.buf.clear();
                (hash, length, new)
            }
        };
        if new {
            self.new_bytes += length;
        }
        self.blobs.push(BlobRef { hash, length });
        Ok(())
    }
}

impl Sink for BlobSink {
    fn data(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.blob_len() == MAX_BLOB {
                self.flush_blob()?;
            }
            let n = bytes.len().min(MAX_BLOB - self.blob_len());
            match &mut self.stream {
                Some(stream) => stream.write(&bytes[..n])?,
                None => {
                    self.buf.extend_from_slice(&bytes[..n]);
                    if self.buf.len() >= STREAM_BLOB && self.store.inner.config.codec == Codec::Raw
                    {
                        let mut stream = self.store.stream_blob()?;
                        stream.write(&self.buf)?;
                        self.buf.clear();
                        self.stream = Some(stream);
                    }
                }
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }

    fn cut(&mut self, kind: SegmentKind) -> io::Result<()> {
        self.flush_blob()?;
        let count = self.blobs.len() as u32 - self.segment_start;
        if count > 0 {
            self.segments.push(Segment {
                kind,
                first_blob: self.segment_start,
                blob_count: count,
            });
            self.segment_start = self.blobs.len() as u32;
        }
        Ok(())
    }
}

/// Streams one instance into the store: feed it chunks as they arrive, then `finish`.
pub struct InstanceWriter {
    parser: Parser,
    sink: BlobSink,
}

impl InstanceWriter {
    pub fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), FeedError> {
        self.parser.feed(bytes, &mut self.sink)
    }

    pub fn finish(mut self) -> std::result::Result<Ingested, FeedError> {
        let summary = self.parser.finish(&mut self.sink)?;
        let pixel = summary.pixel_data.as_ref();
        let manifest = Manifest {
            total_length: summary.total_length,
            dataset_offset: summary.dataset_offset,
            transfer_syntax: summary.transfer_syntax.clone(),
            encapsulated: pixel.is_some_and(|p| p.encapsulated()),
            frames_resolved: pixel.is_some_and(|p| p.frames_resolved) && !summary.deflated,
            deflated: summary.deflated,
            truncated: summary.truncated_at.is_some(),
            blobs: self.sink.blobs,
            segments: self.sink.segments,
        };
        Ok(Ingested {
            summary,
            manifest,
            new_bytes: self.sink.new_bytes,
        })
    }
}

impl Store {
    /// Starts streaming one instance into the store.
    pub fn writer(&self, options: ScanOptions) -> InstanceWriter {
        InstanceWriter {
            parser: Parser::new(options),
            sink: BlobSink {
                store: self.clone(),
                buf: Vec::new(),
                stream: None,
                blobs: Vec::new(),
                segments: Vec::new(),
                segment_start: 0,
                new_bytes: 0,
            },
        }
    }

    /// Options for ingesting a file: its transfer syntax comes from File Meta, truncation of a
    /// file that has File Meta is recorded rather than refused.
    pub fn file_options(&self) -> ScanOptions {
        ScanOptions {
            wanted: self.inner.config.wanted.clone(),
            transfer_syntax: None,
            allow_truncated: true,
        }
    }

    /// Streams a file into the store (not yet durable: see [`Store::persist`]).
    pub fn ingest_file(&self, path: &Path) -> std::result::Result<Ingested, FeedError> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        let mut writer = self.writer(self.file_options());
        // One read for files that fit a blob; larger ones stream in blob-sized chunks.
        let mut buf = vec![0u8; (size as usize).clamp(1, MAX_BLOB)];
        let mut offset = 0u64;
        loop {
            let n = file.read_at(&mut buf, offset)?;
            if n == 0 {
                break;
            }
            writer.write(&buf[..n])?;
            offset += n as u64;
        }
        writer.finish()
    }

    /// Starts a blob whose bytes are written into a pack as they arrive; the pack is held by
    /// the blob (no other record interleaves) until it is finished or dropped.
    fn stream_blob(&self) -> Result<StreamingBlob> {
        let act = self.take_pack(
            &mut lock(&self.inner.appender),
            RECORD_HEADER_LEN + MAX_BLOB as u64,
        )?;
        Ok(StreamingBlob {
            store: self.clone(),
            offset: act.len,
            early_synced: act.len,
            pack: Some(act),
            hasher: blake3::Hasher::new(),
            crc: crc32fast::Hasher::new(),
            len: 0,
        })
    }
}
