//! Streaming one instance into a blob store: blobs cut at the scanner's segment boundaries.

use super::blobs::{BlobStore, BlobWriter};
use super::{Result, Storage, MAX_BLOB, STREAM_BLOB};
use crate::manifest::{BlobRef, Manifest, Segment};
use crate::scan::{FeedError, Parser, ScanOptions, SegmentKind, Sink, Summary};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The result of streaming one instance into the store.
pub struct Ingested {
    pub summary: Summary,
    pub manifest: Manifest,
    /// Bytes of blobs this instance added (0 for a re-sent instance: everything de-duplicated).
    pub new_bytes: u64,
}

/// Cuts the stream into blobs at the scanner's segment boundaries (and every [`MAX_BLOB`]
/// bytes), hashing and putting each as it completes; a large blob goes into the store while it
/// arrives instead, when the store can take it so.
struct BlobSink<B> {
    store: B,
    buf: Vec<u8>,
    stream: Option<Box<dyn BlobWriter>>,
    /// The store takes blobs whole only: large ones are buffered too.
    whole_blobs: bool,
    blobs: Vec<BlobRef>,
    segments: Vec<Segment>,
    segment_start: u32,
    new_bytes: u64,
}

impl<B: BlobStore> BlobSink<B> {
    fn blob_len(&self) -> usize {
        self.stream
            .as_ref()
            .map_or(self.buf.len(), |s| s.written() as usize)
    }

    fn flush_blob(&mut self) -> Result<()> {
        let (hash, length, new) = match self.stream.take() {
            Some(stream) => {
                let length = stream.written();
                let (hash, new) = stream.finish()?;
                (hash, length, new)
            }
            None if self.buf.is_empty() => return Ok(()),
            None => {
                let hash = *blake3::hash(&self.buf).as_bytes();
                let new = self.store.put(hash, &self.buf)?;
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

impl<B: BlobStore> Sink for BlobSink<B> {
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
                    if self.buf.len() >= STREAM_BLOB && !self.whole_blobs {
                        match self.store.stream_blob()? {
                            Some(mut stream) => {
                                stream.write(&self.buf)?;
                                self.buf.clear();
                                self.stream = Some(stream);
                            }
                            None => self.whole_blobs = true,
                        }
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

/// Streams one instance into a blob store: feed it chunks as they arrive, then `finish`.
pub struct InstanceWriter<B: BlobStore = Storage> {
    parser: Parser,
    sink: BlobSink<B>,
}

impl<B: BlobStore> InstanceWriter<B> {
    /// Starts streaming one instance into `store`.
    pub fn new(store: B, options: ScanOptions) -> InstanceWriter<B> {
        InstanceWriter {
            parser: Parser::new(options),
            sink: BlobSink {
                store,
                buf: Vec::new(),
                stream: None,
                whole_blobs: false,
                blobs: Vec::new(),
                segments: Vec::new(),
                segment_start: 0,
                new_bytes: 0,
            },
        }
    }

    pub fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), FeedError> {
        self.parser.feed(bytes, &mut self.sink)
    }

    /// Streams a whole file in, then finishes.
    pub fn write_file(mut self, path: &Path) -> std::result::Result<Ingested, FeedError> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        // One read for files that fit a blob; larger ones stream in blob-sized chunks.
        let mut buf = vec![0u8; (size as usize).clamp(1, MAX_BLOB)];
        let mut offset = 0u64;
        loop {
            let n = file.read_at(&mut buf, offset)?;
            if n == 0 {
                break;
            }
            self.write(&buf[..n])?;
            offset += n as u64;
        }
        self.finish()
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
