//! The manifest of a stored instance: the ordered blobs whose concatenation is the instance,
//! byte for byte, and which of them hold the header, each frame and the trailer.

use crate::scan::SegmentKind;

const MAGIC: &[u8; 4] = b"DVM1";

pub type Hash = [u8; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    pub hash: Hash,
    pub length: u64,
}

/// A run of consecutive blobs that form one segment (a frame may span several blobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub kind: SegmentKind,
    pub first_blob: u32,
    pub blob_count: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub total_length: u64,
    /// Offset of the data set after preamble and File Meta.
    pub dataset_offset: u64,
    pub transfer_syntax: String,
    pub encapsulated: bool,
    /// Frames can be read one by one (see `scan::PixelData::frames_resolved`).
    pub frames_resolved: bool,
    pub deflated: bool,
    pub truncated: bool,
    pub blobs: Vec<BlobRef>,
    pub segments: Vec<Segment>,
}

/// Why manifest bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError(pub String);

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid manifest: {}", self.0)
    }
}

impl std::error::Error for ManifestError {}

fn kind_code(kind: SegmentKind) -> (u8, u32) {
    match kind {
        SegmentKind::Header => (0, 0),
        SegmentKind::Frame(n) => (1, n),
        SegmentKind::Trailer => (2, 0),
        SegmentKind::Opaque => (3, 0),
    }
}

impl Manifest {
    pub fn frame_count(&self) -> u32 {
        self.segments
            .iter()
            .filter(|s| matches!(s.kind, SegmentKind::Frame(_)))
            .count() as u32
    }

    /// The blobs holding frame `index`, in order.
    pub fn frame_blobs(&self, index: u32) -> Option<&[BlobRef]> {
        let s = self
            .segments
            .iter()
            .find(|s| s.kind == SegmentKind::Frame(index))?;
        let first = s.first_blob as usize;
        self.blobs.get(first..first + s.blob_count as usize)
    }

    pub fn encode(&self) -> Vec<u8> {
        let ts = self.transfer_syntax.as_bytes();
        let mut out =
            Vec::with_capacity(40 + ts.len() + self.blobs.len() * 40 + self.segments.len() * 13);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.total_length.to_le_bytes());
        out.extend_from_slice(&self.dataset_offset.to_le_bytes());
        let flags = u8::from(self.encapsulated)
            | u8::from(self.frames_resolved) << 1
            | u8::from(self.deflated) << 2
            | u8::from(self.truncated) << 3;
        out.push(flags);
        out.push(ts.len().min(255) as u8);
        out.extend_from_slice(&ts[..ts.len().min(255)]);
        out.extend_from_slice(&(self.blobs.len() as u32).to_le_bytes());
        for b in &self.blobs {
            out.extend_from_slice(&b.hash);
            out.extend_from_slice(&b.length.to_le_bytes());
        }
        out.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for s in &self.segments {
            let (code, frame) = kind_code(s.kind);
            out.push(code);
            out.extend_from_slice(&frame.to_le_bytes());
            out.extend_from_slice(&s.first_blob.to_le_bytes());
            out.extend_from_slice(&s.blob_count.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(ManifestError("bad magic".into()));
        }
        let total_length = r.u64()?;
        let dataset_offset = r.u64()?;
        let flags = r.u8()?;
        let ts_len = r.u8()? as usize;
        let transfer_syntax = String::from_utf8(r.take(ts_len)?.to_vec())
            .map_err(|_| ManifestError("transfer syntax is not UTF-8".into()))?;
        let blob_count = r.u32()? as usize;
        // Bounded by the input: each blob reference takes 40 bytes.
        if blob_count > bytes.len() / 40 {
            return Err(ManifestError(format!(
                "blob count {blob_count} exceeds the manifest"
            )));
        }
        let mut blobs = Vec::with_capacity(blob_count);
        for _ in 0..blob_count {
            let hash: Hash = r.take(32)?.try_into().expect("32 bytes");
            blobs.push(BlobRef {
                hash,
                length: r.u64()?,
            });
        }
        let segment_count = r.u32()? as usize;
        if segment_count > bytes.len() / 13 {
            return Err(ManifestError(format!(
                "segment count {segment_count} exceeds the manifest"
            )));
        }
        let mut segments = Vec::with_capacity(segment_count);
        for _ in 0..segment_count {
            let code = r.u8()?;
            let frame = r.u32()?;
            let kind = match code {
                0 => SegmentKind::Header,
                1 => SegmentKind::Frame(frame),
                2 => SegmentKind::Trailer,
                3 => SegmentKind::Opaque,
                other => return Err(ManifestError(format!("unknown segment kind {other}"))),
            };
            let first_blob = r.u32()?;
            let blob_count = r.u32()?;
            if first_blob as usize + blob_count as usize > blobs.len() {
                return Err(ManifestError("segment refers past the blob list".into()));
            }
            segments.push(Segment {
                kind,
                first_blob,
                blob_count,
            });
        }
        if r.at != bytes.len() {
            return Err(ManifestError("trailing bytes".into()));
        }
        // Lengths read from the record can add up past u64::MAX (found by fuzzing): such a
        // manifest is invalid, not one whose wrapped sum happens to equal its total.
        let Some(sum) = blobs
            .iter()
            .try_fold(0u64, |sum, b| sum.checked_add(b.length))
        else {
            return Err(ManifestError("blob lengths overflow".into()));
        };
        if sum != total_length {
            return Err(ManifestError(format!(
                "blobs hold {sum} bytes, the instance {total_length}"
            )));
        }
        Ok(Manifest {
            total_length,
            dataset_offset,
            transfer_syntax,
            encapsulated: flags & 1 != 0,
            frames_resolved: flags & 2 != 0,
            deflated: flags & 4 != 0,
            truncated: flags & 8 != 0,
            blobs,
            segments,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ManifestError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| ManifestError("truncated".into()))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, ManifestError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ManifestError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, ManifestError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = Manifest {
            total_length: 30,
            dataset_offset: 5,
            transfer_syntax: "1.2.840.10008.1.2.5".into(),
            encapsulated: true,
            frames_resolved: true,
            deflated: false,
            truncated: false,
            blobs: vec![
                BlobRef {
                    hash: [1; 32],
                    length: 10,
                },
                BlobRef {
                    hash: [2; 32],
                    length: 20,
                },
            ],
            segments: vec![
                Segment {
                    kind: SegmentKind::Header,
                    first_blob: 0,
                    blob_count: 1,
                },
                Segment {
                    kind: SegmentKind::Frame(0),
                    first_blob: 1,
                    blob_count: 1,
                },
            ],
        };
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(m.frame_blobs(0).unwrap()[0].hash, [2; 32]);
        for cut in 0..bytes.len() {
            assert!(
                Manifest::decode(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
    }
}
