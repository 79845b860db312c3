//! Pack files: append-only files of self-describing records.
//!
//! A pack starts with a 16-byte header (magic, format version, pack id). Each record is a 64-byte
//! header followed by its payload:
//!
//! | bytes  | field                                                        |
//! |--------|--------------------------------------------------------------|
//! | 0..4   | magic `DVRC`                                                 |
//! | 4      | kind: 0 blob, 1 manifest, 2 tombstone                        |
//! | 5      | codec: 0 stored as is, 1 zstd                                |
//! | 6..8   | reserved, zero                                               |
//! | 8..16  | length of the payload once decoded (little endian)           |
//! | 16..24 | length of the payload as stored                              |
//! | 24..56 | BLAKE3 hash of the decoded payload                           |
//! | 56..60 | CRC-32 of bytes 0..56                                        |
//! | 60..64 | CRC-32 of the stored payload                                 |
//!
//! Every record can therefore be found, checked and decoded from the pack alone, which is what
//! lets the index be rebuilt from the packs and a torn tail be detected and cut.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const PACK_MAGIC: &[u8; 8] = b"DVPACK\0\x01";
pub const PACK_HEADER_LEN: u64 = 16;
pub const RECORD_MAGIC: &[u8; 4] = b"DVRC";
pub const RECORD_HEADER_LEN: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Blob = 0,
    Manifest = 1,
    Tombstone = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub codec: Codec,
    pub raw_len: u64,
    pub stored_len: u64,
    pub hash: [u8; 32],
    pub payload_crc: u32,
}

impl RecordHeader {
    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN as usize] {
        let mut h = [0u8; RECORD_HEADER_LEN as usize];
        h[0..4].copy_from_slice(RECORD_MAGIC);
        h[4] = self.kind as u8;
        h[5] = self.codec as u8;
        h[8..16].copy_from_slice(&self.raw_len.to_le_bytes());
        h[16..24].copy_from_slice(&self.stored_len.to_le_bytes());
        h[24..56].copy_from_slice(&self.hash);
        let crc = crc32fast::hash(&h[0..56]);
        h[56..60].copy_from_slice(&crc.to_le_bytes());
        h[60..64].copy_from_slice(&self.payload_crc.to_le_bytes());
        h
    }

    pub fn decode(h: &[u8]) -> Result<RecordHeader, String> {
        if h.len() < RECORD_HEADER_LEN as usize || &h[0..4] != RECORD_MAGIC {
            return Err("no record magic".into());
        }
        let crc = u32::from_le_bytes(h[56..60].try_into().expect("4 bytes"));
        if crc != crc32fast::hash(&h[0..56]) {
            return Err("record header checksum mismatch".into());
        }
        let kind = match h[4] {
            0 => RecordKind::Blob,
            1 => RecordKind::Manifest,
            2 => RecordKind::Tombstone,
            k => return Err(format!("unknown record kind {k}")),
        };
        let codec = match h[5] {
            0 => Codec::Raw,
            1 => Codec::Zstd,
            c => return Err(format!("unknown codec {c}")),
        };
        Ok(RecordHeader {
            kind,
            codec,
            raw_len: u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")),
            stored_len: u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
            hash: h[24..56].try_into().expect("32 bytes"),
            payload_crc: u32::from_le_bytes(h[60..64].try_into().expect("4 bytes")),
        })
    }

    /// Saturating: a header that declares a length no file can hold is found to run past
    /// the end of its pack, never wraps around to a small one.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN.saturating_add(self.stored_len)
    }
}

pub fn pack_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("pack-{id:08}.dvp"))
}

/// Pack ids found in `dir`, ascending.
pub fn list_packs(dir: &Path) -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name
            .strip_prefix("pack-")
            .and_then(|s| s.strip_suffix(".dvp"))
        {
            if let Ok(id) = id.parse() {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Creates pack `id`, failing if it exists (so that processes never share a pack id).
pub fn create_pack(dir: &Path, id: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(pack_path(dir, id))?;
    let mut header = [0u8; PACK_HEADER_LEN as usize];
    header[0..8].copy_from_slice(PACK_MAGIC);
    header[8..12].copy_from_slice(&1u32.to_le_bytes());
    header[12..16].copy_from_slice(&id.to_le_bytes());
    file.write_all_at(&header, 0)?;
    Ok(file)
}

pub fn check_pack_header(file: &File) -> io::Result<()> {
    let mut header = [0u8; PACK_HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0)?;
    if &header[0..8] != PACK_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a dicomvault pack",
        ));
    }
    Ok(())
}

/// Takes or tries an advisory lock on a whole file (released when the file is closed).
pub fn flock(file: &File, exclusive: bool, wait: bool) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    if !wait {
        op |= libc::LOCK_NB;
    }
    // SAFETY: flock on a valid, open file descriptor has no memory-safety preconditions.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Reads the header of the record at `offset`, checking that its payload lies inside `end`.
pub fn read_record_header(file: &File, offset: u64, end: u64) -> Result<RecordHeader, String> {
    if offset + RECORD_HEADER_LEN > end {
        return Err("record header runs past the end of the pack".into());
    }
    let mut h = [0u8; RECORD_HEADER_LEN as usize];
    file.read_exact_at(&mut h, offset)
        .map_err(|e| e.to_string())?;
    let header = RecordHeader::decode(&h)?;
    if offset
        .checked_add(header.record_len())
        .is_none_or(|e| e > end)
    {
        return Err("record payload runs past the end of the pack".into());
    }
    Ok(header)
}

/// Reads a record's stored payload and checks it against the header's CRC. The length was
/// checked against the pack's size by [`read_record_header`].
pub fn read_payload(file: &File, offset: u64, header: &RecordHeader) -> Result<Vec<u8>, String> {
    let mut payload = vec![0u8; header.stored_len as usize];
    file.read_exact_at(&mut payload, offset + RECORD_HEADER_LEN)
        .map_err(|e| e.to_string())?;
    if crc32fast::hash(&payload) != header.payload_crc {
        return Err("payload checksum mismatch".into());
    }
    Ok(payload)
}

/// Turns a stored payload back into the bytes that were hashed.
pub fn decode_payload(header: &RecordHeader, stored: Vec<u8>) -> Result<Vec<u8>, String> {
    match header.codec {
        Codec::Raw => Ok(stored),
        Codec::Zstd => {
            let out = zstd::bulk::decompress(&stored, header.raw_len as usize)
                .map_err(|e| format!("zstd: {e}"))?;
            if out.len() as u64 != header.raw_len {
                return Err("decoded length differs from the header".into());
            }
            Ok(out)
        }
    }
}

/// One record found by [`walk`].
#[derive(Debug, Clone, Copy)]
pub struct Found {
    pub offset: u64,
    pub header: RecordHeader,
}

/// A stretch of a pack that holds no whole, valid record: a record whose payload fails its
/// checksum (its header, hence its hash and length, intact), or bytes between two records that
/// no valid header starts (a damaged header: its length is unknown).
#[derive(Debug, Clone)]
pub struct Damage {
    pub offset: u64,
    pub len: u64,
    pub header: Option<RecordHeader>,
    pub why: String,
}

/// What [`walk`] found in a pack.
#[derive(Debug, Clone, Default)]
pub struct Walk {
    pub found: Vec<Found>,
    /// Damaged records and stretches, each followed by a valid record (never a tail).
    pub damaged: Vec<Damage>,
    /// What follows the last valid record when no valid record comes after it: the tail a
    /// crash tore (or damage at the very end; both are set aside, never taken for records).
    pub torn: Option<Damage>,
    /// Where the valid part ends: `to`, or where the torn tail starts.
    pub end: u64,
}

/// Walks the records of a pack between `from` (a record boundary) and `to`, checking each
/// header and (if `check_payload`) its payload's checksum. The record format is
/// self-describing, so damage never ends the walk: a record whose payload fails is skipped
/// by its length, and past a header that cannot be read the walk resumes at the next valid
/// record header. Only a stretch with no valid record after it is a torn tail.
pub fn walk(file: &File, from: u64, to: u64, check_payload: bool) -> io::Result<Walk> {
    let mut walk = Walk {
        end: to,
        ..Walk::default()
    };
    let mut offset = from;
    while offset < to {
        let header = match read_record_header(file, offset, to) {
            Ok(header) => header,
            Err(why) => match next_record(file, offset + 1, to)? {
                Some(next) => {
                    walk.damaged.push(Damage {
                        offset,
                        len: next - offset,
                        header: None,
                        why,
                    });
                    offset = next;
                    continue;
                }
                None => {
                    walk.torn = Some(Damage {
                        offset,
                        len: to - offset,
                        header: None,
                        why,
                    });
                    walk.end = offset;
                    break;
                }
            },
        };
        if check_payload {
            if let Err(why) = read_payload(file, offset, &header) {
                walk.damaged.push(Damage {
                    offset,
                    len: header.record_len(),
                    header: Some(header),
                    why,
                });
                offset += header.record_len();
                continue;
            }
        }
        walk.found.push(Found { offset, header });
        offset += header.record_len();
    }
    Ok(walk)
}

/// The offset of the first valid record header (checksum right, payload inside `to`) at or
/// after `from`.
fn next_record(file: &File, from: u64, to: u64) -> io::Result<Option<u64>> {
    const WINDOW: u64 = 1 << 20;
    let mut buf = Vec::new();
    let mut start = from;
    while start + RECORD_HEADER_LEN <= to {
        // Each window overlaps the next by a header, so no header is missed at its edge;
        // candidates in the overlap are left to the next window.
        let len = (WINDOW + RECORD_HEADER_LEN).min(to - start);
        buf.resize(len as usize, 0);
        file.read_exact_at(&mut buf, start)?;
        for at in memchr::memmem::find_iter(&buf, RECORD_MAGIC) {
            if at as u64 >= WINDOW {
                break;
            }
            let offset = start + at as u64;
            let Some(bytes) = buf.get(at..at + RECORD_HEADER_LEN as usize) else {
                break;
            };
            let fits = RecordHeader::decode(bytes).is_ok_and(|h| {
                offset
                    .checked_add(h.record_len())
                    .is_some_and(|end| end <= to)
            });
            if fits {
                return Ok(Some(offset));
            }
        }
        start += WINDOW;
    }
    Ok(None)
}
