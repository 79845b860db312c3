//! JPEG Lossless encoding of one image frame (ITU-T T.81 Annex H, process 14, first-order
//! prediction: selection value 1, point transform 0): what the transcoder makes the JPEG
//! Lossless syntaxes (1.2.840.10008.1.2.4.57 and .70) from.
//!
//! The code stream is SOI, SOF3, DHT, one interleaved SOS for all components, EOI: no restart
//! intervals, no APPn markers. Each component has its own Huffman table, built from the
//! frame's own difference categories (T.81 K.2), so nothing is assumed about the image.
//!
//! JPEG has no signed samples: unsigned ones are coded as their Bits Stored low bits, with
//! that precision; signed ones as the whole two's complement word, sign-extended from Bits
//! Stored, with the precision of Bits Allocated. That is what DCMTK's encoder does: decoders
//! (DCMTK's, pydicom's) give back P bits and do not sign-extend, so this way every one of them
//! gives the words native pixel data holds, and a small negative sample's difference from a
//! small positive neighbour stays small.

use std::fmt;

/// One frame's native pixel data, as DICOM stores it little endian.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// Samples color-by-pixel (Planar Configuration 0), `bits_allocated / 8` bytes each.
    pub samples: &'a [u8],
    pub rows: u16,
    pub columns: u16,
    /// Samples per Pixel: 1 or 3.
    pub samples_per_pixel: u8,
    /// 8 or 16.
    pub bits_allocated: u8,
    /// 1 to 16, at most `bits_allocated`.
    pub bits_stored: u8,
    /// Pixel Representation 1: two's complement samples.
    pub signed: bool,
}

/// Why a frame cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// Samples per Pixel other than 1 or 3.
    SamplesPerPixel(u8),
    /// Bits Allocated other than 8 or 16.
    BitsAllocated(u8),
    /// Bits Stored of 0, or above Bits Allocated.
    BitsStored { stored: u8, allocated: u8 },
    /// Rows or Columns of 0: JPEG would take the height from a DNL marker.
    EmptyFrame { rows: u16, columns: u16 },
    /// The sample bytes are not the frame's size.
    Length { expected: usize, actual: usize },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::SamplesPerPixel(n) => {
                write!(
                    f,
                    "JPEG Lossless is made for 1 or 3 samples per pixel, not {n}"
                )
            }
            EncodeError::BitsAllocated(n) => {
                write!(
                    f,
                    "JPEG Lossless is made for 8 or 16 bits allocated, not {n}"
                )
            }
            EncodeError::BitsStored { stored, allocated } => write!(
                f,
                "bits stored {stored} is not within 1 to bits allocated ({allocated})"
            ),
            EncodeError::EmptyFrame { rows, columns } => {
                write!(
                    f,
                    "a frame of {rows} rows and {columns} columns has no samples"
                )
            }
            EncodeError::Length { expected, actual } => write!(
                f,
                "the frame is {expected} bytes of samples, {actual} were given"
            ),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Selection value 1: each sample is predicted from the one to its left (T.81 Table H.1).
const PREDICTOR: u8 = 1;
/// Difference categories SSSS 0 to 16 (T.81 Table H.2).
const CATEGORIES: usize = 17;
/// The longest Huffman code T.81 allows (the DHT marker counts codes of 1 to 16 bits).
const MAX_CODE_LENGTH: usize = 16;

/// The JPEG Lossless code stream of `frame`.
pub fn encode(frame: &Frame<'_>) -> Result<Vec<u8>, EncodeError> {
    let samples = samples(frame)?;
    // T.81 allows P of 2 to 16 for lossless coding; a 1-bit sample is coded with P = 2.
    let precision = if frame.signed {
        frame.bits_allocated
    } else {
        frame.bits_stored.max(2)
    };
    let components = usize::from(frame.samples_per_pixel);
    let differences = differences(&samples, usize::from(frame.columns), components, precision);

    let mut frequencies = vec![[0u64; CATEGORIES]; components];
    for (i, &difference) in differences.iter().enumerate() {
        frequencies[i % components][usize::from(category(difference))] += 1;
    }
    let tables: Vec<HuffmanTable> = frequencies.iter().map(HuffmanTable::optimal).collect();

    let mut out = Vec::with_capacity(samples.len() + 1024);
    out.extend_from_slice(&[0xFF, 0xD8]); // SOI
    start_of_frame(&mut out, frame, precision);
    define_huffman_tables(&mut out, &tables);
    start_of_scan(&mut out, components);
    let mut writer = BitWriter::new(out);
    for (i, &difference) in differences.iter().enumerate() {
        let size = category(difference);
        let (code, length) = tables[i % components].codes[usize::from(size)];
        writer.put(u32::from(code), length);
        // Category 16 (difference 32768) has no additional bits (T.81 H.1.2.2).
        if (1..16).contains(&size) {
            // Negative differences are sent as their one's complement's low bits (F.1.2.1.1).
            let bits = if difference < 0 {
                difference - 1
            } else {
                difference
            };
            writer.put(bits as u32 & ((1 << size) - 1), size);
        }
    }
    let mut out = writer.finish();
    out.extend_from_slice(&[0xFF, 0xD9]); // EOI
    Ok(out)
}

/// The frame's samples in order, as they are coded (see the module's note on signed samples),
/// after checking the frame.
fn samples(frame: &Frame<'_>) -> Result<Vec<u16>, EncodeError> {
    if !matches!(frame.samples_per_pixel, 1 | 3) {
        return Err(EncodeError::SamplesPerPixel(frame.samples_per_pixel));
    }
    if !matches!(frame.bits_allocated, 8 | 16) {
        return Err(EncodeError::BitsAllocated(frame.bits_allocated));
    }
    if frame.bits_stored == 0 || frame.bits_stored > frame.bits_allocated {
        return Err(EncodeError::BitsStored {
            stored: frame.bits_stored,
            allocated: frame.bits_allocated,
        });
    }
    if frame.rows == 0 || frame.columns == 0 {
        return Err(EncodeError::EmptyFrame {
            rows: frame.rows,
            columns: frame.columns,
        });
    }
    let bytes = usize::from(frame.bits_allocated / 8);
    let expected = usize::from(frame.rows)
        * usize::from(frame.columns)
        * usize::from(frame.samples_per_pixel)
        * bytes;
    if frame.samples.len() != expected {
        return Err(EncodeError::Length {
            expected,
            actual: frame.samples.len(),
        });
    }
    let unused = 16 - u32::from(frame.bits_stored);
    let word_mask = u16::MAX >> (16 - u32::from(frame.bits_allocated));
    let coded = |word: u16| {
        if frame.signed {
            // Sign-extended from the high bit, then cut to the word (the precision).
            (((word << unused) as i16 >> unused) as u16) & word_mask
        } else {
            (word << unused) >> unused
        }
    };
    Ok(if bytes == 1 {
        frame.samples.iter().map(|&b| coded(u16::from(b))).collect()
    } else {
        frame
            .samples
            .chunks_exact(2)
            .map(|b| coded(u16::from_le_bytes([b[0], b[1]])))
            .collect()
    })
}

/// Each sample's difference from its prediction (T.81 H.1.2.1), modulo 2^16 as
/// -32767..=32768, in the interleaved scan's order (the samples' own order).
fn differences(samples: &[u16], columns: usize, components: usize, precision: u8) -> Vec<i32> {
    let line = columns * components;
    let first = 1i32 << (precision - 1);
    samples
        .iter()
        .enumerate()
        .map(|(i, &sample)| {
            let prediction = if i >= components && i % line >= components {
                // Within a line: selection value 1, Ra.
                i32::from(samples[i - components])
            } else if i >= line {
                // A line's first sample: Rb, the one above (H.1.2.1).
                i32::from(samples[i - line])
            } else {
                // The first sample of each component: 2^(P - Pt - 1).
                first
            };
            let difference = (i32::from(sample) - prediction) & 0xFFFF;
            if difference > 0x8000 {
                difference - 0x10000
            } else {
                difference
            }
        })
        .collect()
}

/// The difference's category SSSS: the bits of its magnitude (T.81 Table H.2).
fn category(difference: i32) -> u8 {
    (32 - difference.unsigned_abs().leading_zeros()) as u8
}

/// A Huffman table for categories 0 to 16: BITS and HUFFVAL as DHT sends them, and each
/// category's (code, length), length 0 for a category that does not occur.
struct HuffmanTable {
    bits: [u8; MAX_CODE_LENGTH],
    values: Vec<u8>,
    codes: [(u16, u8); CATEGORIES],
}

impl HuffmanTable {
    /// The table for these frequencies: T.81 K.2's code sizes (with a reserved symbol of
    /// frequency 1, so that no code is all ones), limited to 16 bits by Figure K.3, then the
    /// canonical codes of Annex C.
    fn optimal(frequencies: &[u64; CATEGORIES]) -> Self {
        const RESERVED: usize = CATEGORIES;
        let mut frequency = [0u64; CATEGORIES + 1];
        frequency[..CATEGORIES].copy_from_slice(frequencies);
        frequency[RESERVED] = 1;
        let mut size = [0usize; CATEGORIES + 1];
        let mut others: [Option<usize>; CATEGORIES + 1] = [None; CATEGORIES + 1];
        // Figure K.1: merge the two least frequent (the later symbol on a tie) until one is left.
        loop {
            let least = |skip: Option<usize>| {
                (0..=RESERVED)
                    .filter(|&s| frequency[s] > 0 && Some(s) != skip)
                    .min_by_key(|&s| (frequency[s], std::cmp::Reverse(s)))
            };
            let Some(v1) = least(None) else { break };
            let Some(v2) = least(Some(v1)) else { break };
            frequency[v1] += frequency[v2];
            frequency[v2] = 0;
            for head in [v1, v2] {
                let mut s = head;
                size[s] += 1;
                while let Some(next) = others[s] {
                    s = next;
                    size[s] += 1;
                }
            }
            let mut tail = v1;
            while let Some(next) = others[tail] {
                tail = next;
            }
            others[tail] = Some(v2);
        }
        // Figure K.2: how many codes of each length (at most 17 symbols + 1 reserved: < 32).
        let mut count = [0u32; 33];
        for &s in &size {
            if s > 0 {
                count[s] += 1;
            }
        }
        // Figure K.3: lengthen short codes to shorten those over 16 bits.
        for i in (MAX_CODE_LENGTH + 1..count.len()).rev() {
            while count[i] > 0 {
                let mut j = i - 2;
                while count[j] == 0 {
                    j -= 1;
                }
                count[i] -= 2;
                count[i - 1] += 1;
                count[j + 1] += 2;
                count[j] -= 1;
            }
        }
        // The reserved symbol goes: one code of the longest length in use.
        if let Some(longest) = (1..=MAX_CODE_LENGTH).rev().find(|&i| count[i] > 0) {
            count[longest] -= 1;
        }
        // Figure K.4: symbols by code size; the reserved one is last among the longest, so
        // the counts above leave it out.
        let mut values = Vec::with_capacity(CATEGORIES);
        for length in 1..=32 {
            values.extend(
                (0..CATEGORIES)
                    .filter(|&s| size[s] == length)
                    .map(|s| s as u8),
            );
        }
        let mut bits = [0u8; MAX_CODE_LENGTH];
        for (length, bit) in bits.iter_mut().enumerate() {
            *bit = count[length + 1] as u8;
        }
        // Annex C: canonical codes, consecutive within a length.
        let mut codes = [(0u16, 0u8); CATEGORIES];
        let mut code = 0u16;
        let mut next = values.iter();
        for (length, &n) in bits.iter().enumerate() {
            for _ in 0..n {
                if let Some(&symbol) = next.next() {
                    codes[usize::from(symbol)] = (code, length as u8 + 1);
                }
                code = code.wrapping_add(1);
            }
            code = code.wrapping_shl(1);
        }
        HuffmanTable {
            bits,
            values,
            codes,
        }
    }
}

/// SOF3: lossless, Huffman coded, sequential (T.81 B.2.2).
fn start_of_frame(out: &mut Vec<u8>, frame: &Frame<'_>, precision: u8) {
    let components = frame.samples_per_pixel;
    out.extend_from_slice(&[0xFF, 0xC3]);
    out.extend_from_slice(&(8 + 3 * u16::from(components)).to_be_bytes());
    out.push(precision);
    out.extend_from_slice(&frame.rows.to_be_bytes());
    out.extend_from_slice(&frame.columns.to_be_bytes());
    out.push(components);
    for c in 0..components {
        // Component c + 1, sampling 1x1, no quantization table (Tq 0 in lossless).
        out.extend_from_slice(&[c + 1, 0x11, 0]);
    }
}

/// DHT with table c for component c (T.81 B.2.4.2; lossless uses the DC class, Tc 0).
fn define_huffman_tables(out: &mut Vec<u8>, tables: &[HuffmanTable]) {
    let length: usize = 2 + tables.iter().map(|t| 17 + t.values.len()).sum::<usize>();
    out.extend_from_slice(&[0xFF, 0xC4]);
    out.extend_from_slice(&(length as u16).to_be_bytes());
    for (c, table) in tables.iter().enumerate() {
        out.push(c as u8);
        out.extend_from_slice(&table.bits);
        out.extend_from_slice(&table.values);
    }
}

/// SOS: every component in one interleaved scan, Ss the predictor, Se 0, Ah 0, Al (Pt) 0
/// (T.81 B.2.3, H.2.2).
fn start_of_scan(out: &mut Vec<u8>, components: usize) {
    out.extend_from_slice(&[0xFF, 0xDA]);
    out.extend_from_slice(&(6 + 2 * components as u16).to_be_bytes());
    out.push(components as u8);
    for c in 0..components as u8 {
        out.extend_from_slice(&[c + 1, c << 4]);
    }
    out.extend_from_slice(&[PREDICTOR, 0, 0]);
}

/// Entropy-coded bits, most significant first, a 0x00 stuffed after each 0xFF (T.81 F.1.2.3).
struct BitWriter {
    out: Vec<u8>,
    buffer: u64,
    count: u32,
}

impl BitWriter {
    fn new(out: Vec<u8>) -> Self {
        BitWriter {
            out,
            buffer: 0,
            count: 0,
        }
    }

    /// The low `length` bits of `bits` (at most 16 at a time).
    fn put(&mut self, bits: u32, length: u8) {
        self.buffer = (self.buffer << length) | u64::from(bits);
        self.count += u32::from(length);
        while self.count >= 8 {
            self.count -= 8;
            self.byte((self.buffer >> self.count) as u8);
        }
        self.buffer &= (1 << self.count) - 1;
    }

    fn byte(&mut self, byte: u8) {
        self.out.push(byte);
        if byte == 0xFF {
            self.out.push(0);
        }
    }

    /// The bytes, the last padded with 1 bits (T.81 F.1.2.3).
    fn finish(mut self) -> Vec<u8> {
        if self.count > 0 {
            let pad = 8 - self.count as u8;
            self.put((1 << pad) - 1, pad);
        }
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(
        samples: &[u8],
        rows: u16,
        columns: u16,
        spp: u8,
        allocated: u8,
        stored: u8,
    ) -> Frame<'_> {
        Frame {
            samples,
            rows,
            columns,
            samples_per_pixel: spp,
            bits_allocated: allocated,
            bits_stored: stored,
            signed: false,
        }
    }

    /// The code stream's markers outside the entropy-coded data, with their segments.
    fn segments(stream: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut found = Vec::new();
        let mut at = 0;
        while at + 1 < stream.len() {
            assert_eq!(stream[at], 0xFF, "a marker at {at}");
            let marker = stream[at + 1];
            at += 2;
            if matches!(marker, 0xD8 | 0xD9) {
                found.push((marker, Vec::new()));
                continue;
            }
            let length = usize::from(u16::from_be_bytes([stream[at], stream[at + 1]]));
            found.push((marker, stream[at + 2..at + length].to_vec()));
            at += length;
            if marker == 0xDA {
                // Entropy-coded data runs to the next marker that is not a stuffed 0xFF00.
                while !(stream[at] == 0xFF && stream[at + 1] != 0) {
                    at += if stream[at] == 0xFF { 2 } else { 1 };
                }
            }
        }
        found
    }

    #[test]
    fn the_markers_say_process_14_selection_value_1() {
        let samples: Vec<u8> = (0..4 * 5 * 3).map(|i| (i * 7) as u8).collect();
        let stream = encode(&frame(&samples, 4, 5, 3, 8, 8)).unwrap();
        let found = segments(&stream);
        let markers: Vec<u8> = found.iter().map(|(m, _)| *m).collect();
        assert_eq!(markers, [0xD8, 0xC3, 0xC4, 0xDA, 0xD9]);
        // SOF3: P 8, Y 4, X 5, three components sampled 1x1.
        assert_eq!(
            found[1].1,
            [8, 0, 4, 0, 5, 3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0]
        );
        // SOS: three components with tables 0, 1, 2; Ss 1, Se 0, Ah/Al 0.
        assert_eq!(found[3].1, [3, 1, 0x00, 2, 0x10, 3, 0x20, 1, 0, 0]);
        // DHT: three DC-class tables 0, 1, 2.
        let dht = &found[2].1;
        let mut at = 0;
        for table in 0..3 {
            assert_eq!(dht[at], table);
            let count: usize = dht[at + 1..at + 17].iter().map(|&n| usize::from(n)).sum();
            at += 17 + count;
        }
        assert_eq!(at, dht.len());
    }

    #[test]
    fn precision_is_bits_stored_and_at_least_2() {
        let samples = [0u8; 8];
        let stream = encode(&frame(&samples, 2, 2, 1, 16, 12)).unwrap();
        assert_eq!(segments(&stream)[1].1[0], 12);
        let stream = encode(&frame(&samples[..4], 2, 2, 1, 8, 1)).unwrap();
        assert_eq!(segments(&stream)[1].1[0], 2);
    }

    #[test]
    fn signed_samples_are_coded_as_sign_extended_words() {
        // 12 bits stored in 16: -1 sign-extended, -1 with its unused bits clear, 2047, -2048.
        let words = [0xFF, 0xFF, 0xFF, 0x0F, 0xFF, 0x07, 0x00, 0xF8];
        let signed = Frame {
            signed: true,
            ..frame(&words, 2, 2, 1, 16, 12)
        };
        assert_eq!(samples(&signed).unwrap(), [0xFFFF, 0xFFFF, 0x07FF, 0xF800]);
        assert_eq!(segments(&encode(&signed).unwrap())[1].1[0], 16);
        // Unsigned: the Bits Stored low bits, with that precision.
        let unsigned = frame(&words, 2, 2, 1, 16, 12);
        assert_eq!(
            samples(&unsigned).unwrap(),
            [0x0FFF, 0x0FFF, 0x07FF, 0x0800]
        );
        // 5 bits stored in 8, signed: -1 and 15 with garbage above the high bit.
        let bytes = [0b1110_0000 | 0x1F, 0b1100_0000 | 0x0F];
        let signed = Frame {
            signed: true,
            ..frame(&bytes, 1, 2, 1, 8, 5)
        };
        assert_eq!(samples(&signed).unwrap(), [0xFF, 0x0F]);
        assert_eq!(segments(&encode(&signed).unwrap())[1].1[0], 8);
    }

    #[test]
    fn bad_frames_are_refused_with_their_reason() {
        let samples = [0u8; 8];
        assert_eq!(
            encode(&frame(&samples, 2, 2, 2, 8, 8)),
            Err(EncodeError::SamplesPerPixel(2))
        );
        assert_eq!(
            encode(&frame(&samples, 2, 1, 1, 32, 32)),
            Err(EncodeError::BitsAllocated(32))
        );
        assert_eq!(
            encode(&frame(&samples, 2, 2, 1, 16, 17)),
            Err(EncodeError::BitsStored {
                stored: 17,
                allocated: 16
            })
        );
        assert_eq!(
            encode(&frame(&samples, 0, 2, 1, 16, 16)),
            Err(EncodeError::EmptyFrame {
                rows: 0,
                columns: 2
            })
        );
        assert_eq!(
            encode(&frame(&samples[..7], 2, 2, 1, 16, 12)),
            Err(EncodeError::Length {
                expected: 8,
                actual: 7
            })
        );
    }

    #[test]
    fn difference_32768_is_category_16_without_additional_bits() {
        // 0x8000 is predicted exactly (2^15); 0x0000 after it differs by -32768, i.e. 32768.
        let stream = encode(&frame(&[0x00, 0x80, 0x00, 0x00], 1, 2, 1, 16, 16)).unwrap();
        // Categories 0 and 16 once each: codes "0" and "10", then 1s to the byte's end.
        let sos = stream.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        assert_eq!(stream[sos + 2 + 8..], [0b0101_1111, 0xFF, 0xD9]);
    }

    #[test]
    fn an_0xff_byte_in_the_entropy_coded_data_is_followed_by_0x00() {
        // Noise: many 8-bit-long codes and additional bits, so bytes of all ones occur.
        let mut state = 12345u32;
        let samples: Vec<u8> = (0..64 * 64 * 2)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (state >> 16) as u8
            })
            .collect();
        let stream = encode(&frame(&samples, 64, 64, 1, 16, 16)).unwrap();
        let sos = stream.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let data = &stream[sos + 2 + 8..stream.len() - 2];
        assert!(data.windows(2).any(|w| w == [0xFF, 0x00]));
        for (i, pair) in data.windows(2).enumerate() {
            assert!(
                pair[0] != 0xFF || pair[1] == 0,
                "a marker inside the data at {i}"
            );
        }
        assert_ne!(data.last(), Some(&0xFF));
    }

    #[test]
    fn huffman_codes_are_at_most_16_bits_prefix_free_and_never_all_ones() {
        // Doubling frequencies: unlimited, category 1 (and the reserved symbol) would need 17 bits.
        let mut frequencies = [0u64; CATEGORIES];
        for (s, f) in frequencies.iter_mut().enumerate() {
            *f = 1 << s.saturating_sub(1);
        }
        for frequencies in [frequencies, [0; CATEGORIES], {
            let mut one = [0; CATEGORIES];
            one[0] = 1000;
            one
        }] {
            let table = HuffmanTable::optimal(&frequencies);
            let used: Vec<usize> = (0..CATEGORIES).filter(|&s| frequencies[s] > 0).collect();
            let counted: usize = table.bits.iter().map(|&n| usize::from(n)).sum();
            assert_eq!(counted, used.len());
            assert_eq!(table.values.len(), used.len());
            for &s in &used {
                let (code, length) = table.codes[s];
                assert!((1..=16).contains(&length), "category {s}: {length} bits");
                assert_ne!(
                    u32::from(code),
                    (1u32 << length) - 1,
                    "category {s} is all ones"
                );
                for &t in used.iter().filter(|&&t| t != s) {
                    let (other, other_length) = table.codes[t];
                    let shorter = length.min(other_length);
                    assert_ne!(
                        code >> (length - shorter),
                        other >> (other_length - shorter),
                        "{s} and {t} share a prefix"
                    );
                }
            }
        }
        // The limit was reached, and a more frequent category never has the longer code.
        let table = HuffmanTable::optimal(&frequencies);
        assert_eq!(table.codes[0].1, 16, "{:?}", table.bits);
        for s in 2..CATEGORIES {
            assert!(
                table.codes[s].1 <= table.codes[s - 1].1,
                "{:?}",
                table.codes
            );
        }
    }
}
