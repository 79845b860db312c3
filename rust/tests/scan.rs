mod common;

use common::{pattern, Builder};
use dicomvault_native::scan::{self, FeedError, Parser, ScanOptions, SegmentKind, Sink, Summary};
use std::io;

/// Records the segments a parse produces.
#[derive(Default)]
struct Segments {
    current: Vec<u8>,
    done: Vec<(SegmentKind, Vec<u8>)>,
}

impl Sink for Segments {
    fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.current.extend_from_slice(bytes);
        Ok(())
    }
    fn cut(&mut self, kind: SegmentKind) -> io::Result<()> {
        if !self.current.is_empty() {
            self.done.push((kind, std::mem::take(&mut self.current)));
        }
        Ok(())
    }
}

fn options(wanted: &[(u32, &[u8; 2])]) -> ScanOptions {
    ScanOptions {
        wanted: wanted.iter().map(|(t, v)| (*t, **v)).collect(),
        transfer_syntax: None,
        allow_truncated: false,
    }
}

type Parsed = (Summary, Vec<(SegmentKind, Vec<u8>)>);

/// Parses `data` fed in chunks of `chunk` bytes.
fn parse(data: &[u8], chunk: usize, options: ScanOptions) -> Result<Parsed, FeedError> {
    let mut parser = Parser::new(options);
    let mut sink = Segments::default();
    for piece in data.chunks(chunk.max(1)) {
        parser.feed(piece, &mut sink)?;
    }
    let summary = parser.finish(&mut sink)?;
    Ok((summary, sink.done))
}

fn value(summary: &Summary, tag: u32) -> Vec<u8> {
    summary
        .element(tag)
        .map(|e| e.value.clone())
        .unwrap_or_default()
}

fn native_file() -> (Vec<u8>, Vec<u8>) {
    let mut inner = Builder::new(true, false);
    inner.text(0x0008_1150, b"UI", "1.2.3");
    let pixels = pattern(4 * 4 * 2 * 3, 1);
    let mut b = Builder::part10("1.2.840.10008.1.2.1");
    b.text(0x0008_0016, b"UI", "1.2.840.10008.5.1.4.1.1.2")
        .text(0x0008_0018, b"UI", "1.2.3.4.5")
        .sequence(0x0008_1140, &inner.bytes)
        .text(0x0010_0010, b"PN", "Doe^John")
        .image_header(4, 4, 3)
        .native_pixels(&pixels)
        .element(0xFFFC_FFFC, b"OB", &[0, 0, 0, 0]);
    (b.bytes, pixels)
}

#[test]
fn native_multiframe_file_is_segmented_by_frame() {
    let (data, pixels) = native_file();
    let (summary, segments) = parse(&data, data.len(), options(&[(0x0010_0010, b"PN")])).unwrap();
    assert!(summary.preamble);
    assert_eq!(summary.transfer_syntax, "1.2.840.10008.1.2.1");
    assert_eq!(value(&summary, 0x0010_0010), b"Doe^John");
    assert_eq!(value(&summary, 0x0008_0018), b"1.2.3.4.5\0");
    assert_eq!(value(&summary, 0x0028_0010), b"4");
    let pixel = summary.pixel_data.clone().unwrap();
    assert_eq!(
        (
            pixel.frame_size,
            pixel.number_of_frames,
            pixel.frames_resolved
        ),
        (32, 3, true)
    );
    assert_eq!(
        &data[pixel.value_offset as usize..][..pixels.len()],
        &pixels[..]
    );
    let kinds: Vec<_> = segments.iter().map(|s| s.0).collect();
    assert_eq!(
        kinds,
        vec![
            SegmentKind::Header,
            SegmentKind::Frame(0),
            SegmentKind::Frame(1),
            SegmentKind::Frame(2),
            SegmentKind::Trailer
        ]
    );
    assert_eq!(segments[2].1, pixels[32..64]);
    let joined: Vec<u8> = segments.iter().flat_map(|s| s.1.clone()).collect();
    assert_eq!(
        joined, data,
        "segments must reassemble the stream byte for byte"
    );
    assert_eq!(summary.total_length, data.len() as u64);
}

#[test]
fn chunk_size_does_not_change_the_result() {
    let (data, _) = native_file();
    let (whole, whole_segments) =
        parse(&data, data.len(), options(&[(0x0010_0010, b"PN")])).unwrap();
    for chunk in [1, 2, 3, 7, 64, 133] {
        let (s, segments) = parse(&data, chunk, options(&[(0x0010_0010, b"PN")])).unwrap();
        assert_eq!(s.elements, whole.elements, "chunk {chunk}");
        assert_eq!(s.pixel_data, whole.pixel_data, "chunk {chunk}");
        assert_eq!(segments, whole_segments, "chunk {chunk}");
    }
}

#[test]
fn implicit_little_endian_bare_data_set_uses_the_assumed_vr() {
    let mut b = Builder::new(false, false);
    b.text(0x0008_0018, b"UI", "9.8.7")
        .us(0x0028_0010, 512)
        .text(0x0010_0020, b"LO", "PID1");
    let opts = ScanOptions {
        transfer_syntax: Some("1.2.840.10008.1.2".into()),
        ..options(&[(0x0010_0020, b"LO")])
    };
    let (s, _) = parse(&b.bytes, 5, opts).unwrap();
    assert_eq!(value(&s, 0x0028_0010), b"512");
    assert_eq!(value(&s, 0x0010_0020), b"PID1");
    assert_eq!(s.dataset_offset, 0);
}

#[test]
fn explicit_big_endian_numbers_are_read_big_endian() {
    let mut b = Builder::part10("1.2.840.10008.1.2.2");
    b.text(0x0008_0018, b"UI", "1.2")
        .image_header(2, 3, 1)
        .native_pixels(&pattern(12, 2));
    let (s, _) = parse(&b.bytes, 11, options(&[])).unwrap();
    assert_eq!(value(&s, 0x0028_0011), b"3");
    assert_eq!(s.pixel_data.unwrap().frame_size, 12);
}

#[test]
fn a_bare_file_without_meta_is_detected() {
    let mut b = Builder::new(true, true);
    b.text(0x0008_0016, b"UI", "1.2")
        .text(0x0008_0018, b"UI", "3.4");
    let (s, _) = parse(&b.bytes, 3, options(&[])).unwrap();
    assert_eq!(s.transfer_syntax, "1.2.840.10008.1.2.2");
    assert!(s.transfer_syntax_detected);
    assert_eq!(value(&s, 0x0008_0018), b"3.4\0");
}

#[test]
fn encapsulated_frames_follow_the_basic_offset_table() {
    let frags: [&[u8]; 3] = [&[0xFF, 0xD8, 1, 2], &[3, 4], &[0xFF, 0xD8, 5, 6, 7, 8]];
    // Frame 0 = fragments 0 and 1 (items of 12 and 10 bytes), frame 1 starts at offset 22.
    let mut b = Builder::part10("1.2.840.10008.1.2.4.50");
    b.image_header(1, 1, 2).encapsulated(&[0, 22], &frags);
    let (s, segments) = parse(&b.bytes, 9, options(&[])).unwrap();
    let p = s.pixel_data.unwrap();
    assert!(p.encapsulated() && p.frames_resolved);
    assert_eq!(p.basic_offset_table, vec![0, 22]);
    assert_eq!(
        p.fragments.iter().map(|f| f.frame).collect::<Vec<_>>(),
        vec![0, 0, 1]
    );
    let kinds: Vec<_> = segments.iter().map(|s| s.0).collect();
    assert_eq!(
        kinds,
        vec![
            SegmentKind::Header,
            SegmentKind::Frame(0),
            SegmentKind::Frame(1),
            SegmentKind::Trailer
        ]
    );
    assert_eq!(segments[1].1.len(), 12 + 10);
}

#[test]
fn without_offset_table_jpeg_markers_start_frames() {
    let frags: [&[u8]; 4] = [&[0xFF, 0xD8, 1, 2], &[3, 4], &[0xFF, 0xD8, 5, 6], &[9, 9]];
    let mut b = Builder::part10("1.2.840.10008.1.2.4.50");
    b.image_header(1, 1, 2).encapsulated(&[], &frags);
    let (s, _) = parse(&b.bytes, 4096, options(&[])).unwrap();
    let p = s.pixel_data.unwrap();
    assert_eq!(
        p.fragments.iter().map(|f| f.frame).collect::<Vec<_>>(),
        vec![0, 0, 1, 1]
    );
    assert!(p.frames_resolved);
}

#[test]
fn rle_fragments_are_one_frame_each_and_a_count_mismatch_is_unresolved() {
    let frags: [&[u8]; 3] = [&[0, 0, 0, 1], &[0, 0, 0, 2], &[0, 0, 0, 3]];
    let mut b = Builder::part10("1.2.840.10008.1.2.5");
    b.image_header(1, 1, 3).encapsulated(&[], &frags);
    let (s, _) = parse(&b.bytes, 4096, options(&[])).unwrap();
    assert!(s.pixel_data.unwrap().frames_resolved);
    let mut b = Builder::part10("1.2.840.10008.1.2.5");
    b.image_header(1, 1, 2).encapsulated(&[], &frags);
    let (s, _) = parse(&b.bytes, 4096, options(&[])).unwrap();
    assert!(!s.pixel_data.unwrap().frames_resolved);
}

#[test]
fn un_with_undefined_length_is_read_as_implicit_little_endian() {
    let mut inner = Builder::new(false, false);
    inner.text(0x0008_0100, b"SH", "CODE");
    let mut b = Builder::part10("1.2.840.10008.1.2.1");
    b.header(0x0009_1010, b"UN", 0xFFFF_FFFF);
    b.tag(0xFFFE_E000);
    b.bytes.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    b.bytes.extend_from_slice(&inner.bytes);
    b.tag(0xFFFE_E00D);
    b.bytes.extend_from_slice(&0u32.to_le_bytes());
    b.tag(0xFFFE_E0DD);
    b.bytes.extend_from_slice(&0u32.to_le_bytes());
    b.text(0x0010_0020, b"LO", "after");
    let (s, _) = parse(&b.bytes, 3, options(&[(0x0010_0020, b"LO")])).unwrap();
    assert_eq!(value(&s, 0x0010_0020), b"after ");
}

#[test]
fn not_dicom_is_refused_at_byte_zero() {
    let err = scan::scan_bytes(
        b"hello, this is a text file and not a DICOM data set at all...",
        options(&[]),
    )
    .unwrap_err();
    assert_eq!(err.offset, 0);
    assert!(err.message.contains("not DICOM"));
}

#[test]
fn an_invalid_vr_names_its_offset() {
    let mut b = Builder::part10("1.2.840.10008.1.2.1");
    b.text(0x0008_0018, b"UI", "1.2");
    let at = b.bytes.len() as u64;
    b.bytes
        .extend_from_slice(&[0x10, 0x00, 0x10, 0x00, b'p', b'n', 2, 0, b'A', b'B']);
    let err = scan::scan_bytes(&b.bytes, options(&[])).unwrap_err();
    assert_eq!(err.offset, at);
    assert!(err.message.contains("invalid VR"), "{}", err.message);
}

#[test]
fn truncation_is_an_error_unless_allowed() {
    let (data, _) = native_file();
    let cut = &data[..data.len() - 40];
    let err = scan::scan_bytes(cut, options(&[])).unwrap_err();
    assert!(err.message.contains("truncated"), "{}", err.message);
    let s = scan::scan_bytes(
        cut,
        ScanOptions {
            allow_truncated: true,
            ..options(&[])
        },
    )
    .unwrap();
    assert_eq!(s.truncated_at, Some(cut.len() as u64));
    assert!(!s.pixel_data.unwrap().frames_resolved);
}

#[test]
fn hostile_lengths_and_nesting_give_errors_not_panics() {
    // A wanted element claiming 4 GB, then the stream ends.
    let mut b = Builder::part10("1.2.840.10008.1.2.1");
    b.header(0x0010_0010, b"UT", 0xFFFF_FFF0);
    b.bytes.extend_from_slice(b"short");
    assert!(scan::scan_bytes(&b.bytes, options(&[(0x0010_0010, b"UT")])).is_err());
    // Sequences nested far deeper than any real data set.
    let mut b = Builder::part10("1.2.840.10008.1.2.1");
    for _ in 0..200 {
        b.header(0x0008_1140, b"SQ", 0xFFFF_FFFF);
        b.tag(0xFFFE_E000);
        b.bytes.extend_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    }
    let err = scan::scan_bytes(
        &b.bytes,
        ScanOptions {
            allow_truncated: true,
            ..options(&[])
        },
    )
    .unwrap_err();
    assert!(err.message.contains("nested deeper"), "{}", err.message);
}

#[test]
fn deflated_data_set_is_scanned_through_inflation() {
    use flate2::write::DeflateEncoder;
    use std::io::Write;
    let mut body = Builder::new(true, false);
    body.text(0x0008_0018, b"UI", "5.6.7")
        .text(0x0010_0010, b"PN", "Deflated^Patient");
    let mut enc = DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&body.bytes).unwrap();
    let mut b = Builder::part10("1.2.840.10008.1.2.1.99");
    b.bytes.extend_from_slice(&enc.finish().unwrap());
    let (s, segments) = parse(&b.bytes, 13, options(&[(0x0010_0010, b"PN")])).unwrap();
    assert!(s.deflated);
    assert_eq!(value(&s, 0x0010_0010), b"Deflated^Patient");
    let joined: Vec<u8> = segments.iter().flat_map(|s| s.1.clone()).collect();
    assert_eq!(joined, b.bytes);
}

#[test]
fn scanning_a_file_skips_pixels_yet_finds_the_same() {
    let (data, _) = native_file();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.dcm");
    std::fs::write(&path, &data).unwrap();
    let from_file = scan::scan_file(&path, options(&[(0x0010_0010, b"PN")])).unwrap();
    let (in_memory, _) = parse(&data, data.len(), options(&[(0x0010_0010, b"PN")])).unwrap();
    assert_eq!(from_file.elements, in_memory.elements);
    assert_eq!(from_file.pixel_data, in_memory.pixel_data);
    assert_eq!(from_file.total_length, data.len() as u64);
    // A file cut inside its pixel data is reported truncated, not read past its end.
    std::fs::write(&path, &data[..data.len() - 50]).unwrap();
    let cut = scan::scan_file(
        &path,
        ScanOptions {
            allow_truncated: true,
            ..options(&[])
        },
    )
    .unwrap();
    assert_eq!(cut.truncated_at, Some(data.len() as u64 - 50));
}
