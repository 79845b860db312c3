//! Builds small DICOM byte streams for the scanner and store tests, and stores them.

#![allow(dead_code)]

use dicomvault_native::cas::{Storage, Store, StoreConfig};
use dicomvault_native::manifest::Manifest;
use std::fs;
use std::path::Path;

pub struct Builder {
    pub bytes: Vec<u8>,
    pub explicit: bool,
    pub big_endian: bool,
}

impl Builder {
    pub fn new(explicit: bool, big_endian: bool) -> Self {
        Builder {
            bytes: Vec::new(),
            explicit,
            big_endian,
        }
    }

    pub fn part10(transfer_syntax: &str) -> Self {
        let mut b = Builder::new(true, false);
        b.bytes.extend_from_slice(&[0u8; 128]);
        b.bytes.extend_from_slice(b"DICM");
        let mut ts = transfer_syntax.as_bytes().to_vec();
        if ts.len() % 2 == 1 {
            ts.push(0);
        }
        let mut meta = Builder::new(true, false);
        meta.element(0x0002_0001, b"OB", &[0, 1]);
        meta.element(0x0002_0010, b"UI", &ts);
        b.element(0x0002_0000, b"UL", &(meta.bytes.len() as u32).to_le_bytes());
        b.bytes.extend_from_slice(&meta.bytes);
        let (explicit, big) = match transfer_syntax {
            "1.2.840.10008.1.2" => (false, false),
            "1.2.840.10008.1.2.2" => (true, true),
            _ => (true, false),
        };
        b.explicit = explicit;
        b.big_endian = big;
        b
    }

    fn u16(&mut self, v: u16) {
        let b = if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.bytes.extend_from_slice(&b);
    }

    fn u32(&mut self, v: u32) {
        let b = if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        };
        self.bytes.extend_from_slice(&b);
    }

    pub fn tag(&mut self, tag: u32) {
        self.u16((tag >> 16) as u16);
        self.u16(tag as u16);
    }

    pub fn header(&mut self, tag: u32, vr: &[u8; 2], length: u32) {
        self.tag(tag);
        if self.explicit {
            self.bytes.extend_from_slice(vr);
            if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT" | b"OF") {
                self.bytes.extend_from_slice(&[0, 0]);
                self.u32(length);
            } else {
                self.u16(length as u16);
            }
        } else {
            self.u32(length);
        }
    }

    pub fn element(&mut self, tag: u32, vr: &[u8; 2], value: &[u8]) -> &mut Self {
        self.header(tag, vr, value.len() as u32);
        self.bytes.extend_from_slice(value);
        self
    }

    pub fn text(&mut self, tag: u32, vr: &[u8; 2], value: &str) -> &mut Self {
        let mut v = value.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(if vr == b"UI" { 0 } else { b' ' });
        }
        self.element(tag, vr, &v)
    }

    pub fn us(&mut self, tag: u32, value: u16) -> &mut Self {
        let b = if self.big_endian {
            value.to_be_bytes()
        } else {
            value.to_le_bytes()
        };
        self.element(tag, b"US", &b)
    }

    /// An undefined-length sequence with one undefined-length item holding `inner` elements.
    pub fn sequence(&mut self, tag: u32, inner: &[u8]) -> &mut Self {
        self.header(tag, b"SQ", 0xFFFF_FFFF);
        self.tag(0xFFFE_E000);
        self.u32(0xFFFF_FFFF);
        self.bytes.extend_from_slice(inner);
        self.tag(0xFFFE_E00D);
        self.u32(0);
        self.tag(0xFFFE_E0DD);
        self.u32(0);
        self
    }

    pub fn image_header(&mut self, rows: u16, columns: u16, frames: u32) -> &mut Self {
        self.us(0x0028_0002, 1);
        self.text(0x0028_0008, b"IS", &frames.to_string());
        self.us(0x0028_0010, rows);
        self.us(0x0028_0011, columns);
        self.us(0x0028_0100, 16)
    }

    pub fn native_pixels(&mut self, data: &[u8]) -> &mut Self {
        self.element(0x7FE0_0010, b"OW", data)
    }

    /// Encapsulated Pixel Data: a Basic Offset Table then the fragments.
    pub fn encapsulated(&mut self, offsets: &[u32], fragments: &[&[u8]]) -> &mut Self {
        self.header(0x7FE0_0010, b"OB", 0xFFFF_FFFF);
        self.tag(0xFFFE_E000);
        self.u32((offsets.len() * 4) as u32);
        for o in offsets {
            self.u32(*o);
        }
        for f in fragments {
            self.tag(0xFFFE_E000);
            self.u32(f.len() as u32);
            self.bytes.extend_from_slice(f);
        }
        self.tag(0xFFFE_E0DD);
        self.u32(0);
        self
    }
}

/// A pseudo-random byte pattern, different per seed.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed as usize * 7) % 251) as u8)
        .collect()
}

/// A Part 10 instance with `frames` native 16x16 frames of a seeded pattern.
pub fn instance(sop: &str, name: &str, frames: u32, seed: u8) -> Vec<u8> {
    let mut b = Builder::part10("1.2.840.10008.1.2.1");
    b.text(0x0008_0018, b"UI", sop)
        .text(0x0010_0010, b"PN", name)
        .image_header(16, 16, frames)
        .native_pixels(&pattern(16 * 16 * 2 * frames as usize, seed));
    b.bytes
}

/// An instance with 512x512 16-bit frames: each frame is a blob large enough to be streamed.
pub fn large_instance(sop: &str, frames: u32, seed: u8) -> Vec<u8> {
    let mut b = Builder::part10("1.2.840.10008.1.2.1");
    b.text(0x0008_0018, b"UI", sop)
        .text(0x0010_0010, b"PN", "LARGE")
        .image_header(512, 512, frames)
        .native_pixels(&pattern(512 * 512 * 2 * frames as usize, seed));
    b.bytes
}

pub fn open(root: &Path, config: StoreConfig) -> Store {
    Store::open(root, config).unwrap()
}

pub fn store_bytes(store: &Store, data: &[u8], chunk: usize) -> (Manifest, u64) {
    let storage = Storage::from(store.clone());
    let mut w = storage.writer(storage.file_options());
    for piece in data.chunks(chunk) {
        w.write(piece).unwrap();
    }
    let ingested = w.finish().unwrap();
    storage
        .persist(&[(ingested.manifest.encode(), b"note".to_vec())])
        .unwrap();
    (ingested.manifest, ingested.new_bytes)
}

pub fn pack_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(root.join("packs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}
