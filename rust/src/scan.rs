//! Streaming scanner of DICOM Part 10 files and bare data sets.
//!
//! The scanner reads the top level of a data set without decoding it: it collects the values of
//! a requested set of tags, finds the transfer syntax, and locates Pixel Data (native frames, or
//! the Basic Offset Table and fragments of encapsulated data). It is a push parser: bytes arrive
//! in chunks of any size (file reads, PDV fragments) and every consumed byte is handed, in order,
//! to a [`Sink`] together with the segment boundaries the content-addressed store cuts blobs at.
//! It never allocates a buffer sized by a length read from the input: it only keeps the bytes of
//! the element it is waiting to complete.

use flate2::{Decompress, FlushDecompress, Status};
use std::fmt;
use std::io;

pub const PIXEL_DATA: u32 = 0x7FE0_0010;
const FLOAT_PIXEL_DATA: u32 = 0x7FE0_0008;
const DOUBLE_FLOAT_PIXEL_DATA: u32 = 0x7FE0_0009;
const EXTENDED_OFFSET_TABLE: u32 = 0x7FE0_0001;
const ITEM: u32 = 0xFFFE_E000;
const ITEM_DELIMITATION: u32 = 0xFFFE_E00D;
const SEQUENCE_DELIMITATION: u32 = 0xFFFE_E0DD;
const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;

pub const SPECIFIC_CHARACTER_SET: u32 = 0x0008_0005;
pub const SOP_CLASS_UID: u32 = 0x0008_0016;
pub const SOP_INSTANCE_UID: u32 = 0x0008_0018;
pub const NUMBER_OF_FRAMES: u32 = 0x0028_0008;
const SAMPLES_PER_PIXEL: u32 = 0x0028_0002;
const ROWS: u32 = 0x0028_0010;
const COLUMNS: u32 = 0x0028_0011;
const BITS_ALLOCATED: u32 = 0x0028_0100;
pub const TRANSFER_SYNTAX_UID: u32 = 0x0002_0010;

pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
pub const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";
const DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1.99";
const JPIP_REFERENCED_DEFLATE: &str = "1.2.840.10008.1.2.4.95";

/// Values of wanted tags are collected only up to this length; longer ones are skipped like any
/// other element, so a hostile length cannot make the scanner buffer it.
const MAX_COLLECTED_VALUE: u64 = 1 << 20;
/// The Extended Offset Table holds 8 bytes per frame; this allows 2 million frames.
const MAX_EXTENDED_OFFSET_TABLE: u64 = 16 << 20;
/// An undefined-length sequence has to be buffered whole to find its end.
const MAX_BUFFERED_ELEMENT: usize = 256 << 20;
const MAX_META_ELEMENT: u64 = 1 << 16;
const MAX_BASIC_OFFSET_TABLE: u64 = 64 << 20;
const MAX_NESTING: u32 = 64;
/// A deflated data set is scanned as it inflates; this bounds the work a deflate bomb can cause.
const MAX_INFLATED: u64 = 16 << 30;

/// Where and why a data set could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    pub offset: u64,
    pub message: String,
}

impl ScanError {
    fn new(offset: u64, message: impl Into<String>) -> Self {
        Self {
            offset,
            message: message.into(),
        }
    }
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for ScanError {}

/// A failure while feeding the scanner: the input is malformed, or the sink could not store it.
#[derive(Debug)]
pub enum FeedError {
    Scan(ScanError),
    Io(io::Error),
}

impl fmt::Display for FeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeedError::Scan(e) => e.fmt(f),
            FeedError::Io(e) => e.fmt(f),
        }
    }
}

impl From<ScanError> for FeedError {
    fn from(e: ScanError) -> Self {
        FeedError::Scan(e)
    }
}

impl From<io::Error> for FeedError {
    fn from(e: io::Error) -> Self {
        FeedError::Io(e)
    }
}

/// Byte order and VR encoding of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoding {
    pub explicit_vr: bool,
    pub big_endian: bool,
}

impl Encoding {
    pub const IMPLICIT_LE: Encoding = Encoding {
        explicit_vr: false,
        big_endian: false,
    };
    pub const EXPLICIT_LE: Encoding = Encoding {
        explicit_vr: true,
        big_endian: false,
    };
    pub const EXPLICIT_BE: Encoding = Encoding {
        explicit_vr: true,
        big_endian: true,
    };

    fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.big_endian {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    }

    fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }

    fn tag(self, b: &[u8]) -> u32 {
        (u32::from(self.u16(&b[0..2])) << 16) | u32::from(self.u16(&b[2..4]))
    }

    /// The standard transfer syntax UID for data sets read with this encoding.
    fn uid(self) -> &'static str {
        match (self.explicit_vr, self.big_endian) {
            (false, _) => IMPLICIT_VR_LITTLE_ENDIAN,
            (true, false) => EXPLICIT_VR_LITTLE_ENDIAN,
            (true, true) => EXPLICIT_VR_BIG_ENDIAN,
        }
    }
}

/// The encoding of a transfer syntax and whether its data set is deflated. Every syntax that is
/// not one of the three native ones is Explicit VR Little Endian (all encapsulated syntaxes are).
pub fn encoding_of(transfer_syntax: &str) -> (Encoding, bool) {
    match transfer_syntax {
        IMPLICIT_VR_LITTLE_ENDIAN => (Encoding::IMPLICIT_LE, false),
        EXPLICIT_VR_BIG_ENDIAN => (Encoding::EXPLICIT_BE, false),
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN | JPIP_REFERENCED_DEFLATE => {
            (Encoding::EXPLICIT_LE, true)
        }
        _ => (Encoding::EXPLICIT_LE, false),
    }
}

/// PS3.5's value representations, in order: the one home of this table (Python reads it as
/// `_native.KNOWN_VRS`).
pub const KNOWN_VRS: [&str; 34] = [
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL",
    "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US",
    "UT", "UV",
];

fn is_known_vr(vr: [u8; 2]) -> bool {
    KNOWN_VRS.iter().any(|k| k.as_bytes() == vr)
}

/// VRs whose explicit encoding has two reserved bytes and a 32-bit length (PS3.5 7.1.2):
/// the one home of this table (Python reads it as `_native.LONG_LENGTH_VRS`).
pub const LONG_LENGTH_VRS: [&str; 13] = [
    "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV",
];

/// Whether `vr` is one of [`LONG_LENGTH_VRS`].
pub fn has_long_length(vr: [u8; 2]) -> bool {
    LONG_LENGTH_VRS.iter().any(|long| long.as_bytes() == vr)
}

/// What the bytes just handed to a [`Sink`] belong to, announced when that segment ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentKind {
    /// Everything before the first pixel frame: File Meta, the data set's other elements, the
    /// Pixel Data element's header and, when encapsulated, its Basic Offset Table.
    Header,
    /// The bytes of one frame: native pixel values, or the fragment items (headers included) of
    /// one encapsulated frame.
    Frame(u32),
    /// Everything after the last frame.
    Trailer,
    /// Bytes the scanner did not segment (a deflated data set, a truncated tail).
    Opaque,
}

/// Receives every byte of the stream, in order, and the points where a segment ends.
pub trait Sink {
    fn data(&mut self, bytes: &[u8]) -> io::Result<()>;
    fn cut(&mut self, kind: SegmentKind) -> io::Result<()>;
}

/// A sink that discards everything: for scanning without storing.
pub struct NullSink;

impl Sink for NullSink {
    fn data(&mut self, _bytes: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn cut(&mut self, _kind: SegmentKind) -> io::Result<()> {
        Ok(())
    }
}

/// A collected element value. Text values are as stored (padding included); binary numbers
/// (US, SS, UL, SL, FL, FD, AT) are formatted as DICOM text, multiple values joined by '\'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub tag: u32,
    pub vr: [u8; 2],
    pub value: Vec<u8>,
}

/// One fragment of encapsulated Pixel Data: where its value lies and which frame it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    pub offset: u64,
    pub length: u64,
    pub frame: u32,
}

/// Where Pixel Data lies in the stream (offsets are absolute: from the first byte of the file,
/// or of the inflated data set when the transfer syntax is deflated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PixelData {
    pub tag: u32,
    pub element_offset: u64,
    pub value_offset: u64,
    /// None when encapsulated (undefined length).
    pub value_length: Option<u64>,
    pub number_of_frames: u32,
    /// Native: bytes per frame (Rows x Columns x SamplesPerPixel x BitsAllocated / 8).
    pub frame_size: u64,
    pub basic_offset_table: Vec<u32>,
    pub fragments: Vec<Fragment>,
    /// False when the frames of encapsulated data could not be told apart (no offset table,
    /// no frame markers and a fragment count that differs from NumberOfFrames).
    pub frames_resolved: bool,
}

impl PixelData {
    pub fn encapsulated(&self) -> bool {
        self.value_length.is_none()
    }
}

/// What a scan found.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub preamble: bool,
    /// Offset of the first data set byte: the length of preamble + File Meta (0 if none).
    pub dataset_offset: u64,
    pub transfer_syntax: String,
    /// True when the transfer syntax was inferred from the bytes rather than declared.
    pub transfer_syntax_detected: bool,
    pub deflated: bool,
    /// File Meta elements (group 0002) and the collected top-level data set elements.
    pub meta: Vec<Element>,
    pub elements: Vec<Element>,
    pub pixel_data: Option<PixelData>,
    pub total_length: u64,
    /// Set when the stream ended inside an element and truncation was allowed: its offset.
    pub truncated_at: Option<u64>,
}

impl Summary {
    pub fn element(&self, tag: u32) -> Option<&Element> {
        self.elements
            .iter()
            .chain(self.meta.iter())
            .find(|e| e.tag == tag)
    }

    fn number(&self, tag: u32) -> Option<u64> {
        let e = self.elements.iter().find(|e| e.tag == tag)?;
        let text = std::str::from_utf8(&e.value).ok()?;
        let first = text.split('\\').next()?;
        first
            .trim_matches(|c: char| c == ' ' || c == '\0')
            .parse()
            .ok()
    }
}

/// What to collect and how lenient to be.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Tags whose values are collected, with the VR to assume in Implicit VR data sets.
    pub wanted: Vec<(u32, [u8; 2])>,
    /// The transfer syntax of a bare data set (as negotiated on an association). None for files:
    /// it is then read from File Meta, or inferred.
    pub transfer_syntax: Option<String>,
    /// Accept a stream that ends inside an element (a truncated file), recording where.
    pub allow_truncated: bool,
}

const REQUIRED: [(u32, [u8; 2]); 9] = [
    (SPECIFIC_CHARACTER_SET, *b"CS"),
    (SOP_CLASS_UID, *b"UI"),
    (SOP_INSTANCE_UID, *b"UI"),
    (SAMPLES_PER_PIXEL, *b"US"),
    (NUMBER_OF_FRAMES, *b"IS"),
    (ROWS, *b"US"),
    (COLUMNS, *b"US"),
    (BITS_ALLOCATED, *b"US"),
    (EXTENDED_OFFSET_TABLE, *b"OV"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FrameRule {
    /// Frame starts are listed in the Basic or Extended Offset Table (relative offsets).
    OffsetTable,
    /// A single frame: every fragment belongs to it.
    Single,
    /// A new frame starts at each fragment that starts with a JPEG/JPEG 2000 start marker.
    Marker,
    /// One fragment per frame (RLE, and the fallback when nothing else tells).
    PerFragment,
}

#[derive(Debug)]
enum State {
    Start,
    Meta,
    DatasetStart,
    TopLevel,
    Skip {
        remaining: u64,
    },
    NativePixel {
        remaining: u64,
        frame_left: u64,
        frame: u32,
        frames_left: u32,
    },
    FragmentItem,
    FragmentValue {
        remaining: u64,
    },
    Trailer,
    Deflated,
}

/// Inflates a deflated data set and scans the result (without segmenting it).
struct Inflated {
    inflater: Decompress,
    parser: Box<Parser>,
    out: Vec<u8>,
}

/// The push parser. Feed it with [`Parser::feed`], then call [`Parser::finish`].
pub struct Parser {
    wanted: Vec<(u32, [u8; 2])>,
    declared_syntax: Option<String>,
    allow_truncated: bool,
    state: State,
    encoding: Encoding,
    /// Absolute offset of `buf[0]`.
    pos: u64,
    buf: Vec<u8>,
    /// Do not retry completing a buffered element before the buffer reaches this length.
    retry_at: usize,
    summary: Summary,
    frame_rule: FrameRule,
    frame: u32,
    fragments_start: u64,
    offset_table: Vec<u64>,
    next_offset: usize,
    inflated: Option<Inflated>,
    /// Where a native Pixel Data value ends. The bytes after its last whole frame are read as
    /// the trailer, but a stream that ends before this offset is still truncated (found by
    /// fuzzing: fed in pieces, such a stream was taken as whole; skipped over, as truncated).
    pixel_value_end: u64,
}

enum Step {
    /// Consumed this many bytes; go on.
    Consumed(usize),
    /// More bytes are needed before anything can be consumed.
    Wait,
}

impl Parser {
    pub fn new(options: ScanOptions) -> Self {
        let mut wanted = options.wanted;
        wanted.extend_from_slice(&REQUIRED);
        wanted.sort_by_key(|w| w.0);
        wanted.dedup_by_key(|w| w.0);
        let bare = options.transfer_syntax.is_some();
        Parser {
            wanted,
            declared_syntax: options.transfer_syntax,
            allow_truncated: options.allow_truncated,
            state: if bare {
                State::DatasetStart
            } else {
                State::Start
            },
            encoding: Encoding::EXPLICIT_LE,
            pos: 0,
            buf: Vec::new(),
            retry_at: 0,
            summary: Summary::default(),
            frame_rule: FrameRule::Single,
            frame: 0,
            fragments_start: 0,
            offset_table: Vec::new(),
            next_offset: 0,
            inflated: None,
            pixel_value_end: 0,
        }
    }

    /// Consumes `input`, handing every byte that is complete to `sink`.
    pub fn feed(&mut self, input: &[u8], sink: &mut dyn Sink) -> Result<(), FeedError> {
        if self.buf.is_empty() {
            let used = self.run(input, false, sink)?;
            self.buf.extend_from_slice(&input[used..]);
        } else {
            self.buf.extend_from_slice(input);
            if self.buf.len() < self.retry_at {
                return Ok(());
            }
            let buf = std::mem::take(&mut self.buf);
            let used = self.run(&buf, false, sink);
            self.buf = buf;
            let used = used?;
            self.buf.drain(..used);
        }
        if self.buf.len() > MAX_BUFFERED_ELEMENT {
            return Err(ScanError::new(
                self.pos,
                format!("element larger than {MAX_BUFFERED_ELEMENT} bytes cannot be scanned"),
            )
            .into());
        }
        Ok(())
    }

    /// Ends the stream: closes the last segment and returns what was found.
    pub fn finish(mut self, sink: &mut dyn Sink) -> Result<Summary, FeedError> {
        let buf = std::mem::take(&mut self.buf);
        self.retry_at = 0;
        let used = self.run(&buf, true, sink)?;
        let rest = &buf[used..];
        let kind = match self.state {
            State::TopLevel | State::Meta | State::DatasetStart | State::Start
                if rest.is_empty() =>
            {
                SegmentKind::Header
            }
            State::Trailer if rest.is_empty() && self.pos >= self.pixel_value_end => {
                SegmentKind::Trailer
            }
            State::Deflated if rest.is_empty() => {
                self.finish_inflated()?;
                SegmentKind::Opaque
            }
            _ => {
                let what = self.describe_state();
                if !self.allow_truncated {
                    return Err(ScanError::new(
                        self.pos,
                        format!("data set ends inside {what} (stream truncated)"),
                    )
                    .into());
                }
                self.summary.truncated_at = Some(self.pos);
                if let Some(p) = self.summary.pixel_data.as_mut() {
                    p.frames_resolved = false;
                }
                sink.data(rest)?;
                self.pos += rest.len() as u64;
                SegmentKind::Opaque
            }
        };
        sink.cut(kind)?;
        self.finish_pixel_data();
        self.summary.total_length = self.pos;
        Ok(self.summary)
    }

    /// How many of the next bytes the parser would only pass through (a value it does not
    /// collect, pixel data, the trailer): a caller that scans without storing may `skip` them
    /// instead of reading them.
    pub fn skippable(&self) -> u64 {
        if !self.buf.is_empty() {
            return 0;
        }
        match self.state {
            State::Skip { remaining }
            | State::FragmentValue { remaining }
            | State::NativePixel { remaining, .. } => remaining,
            State::Trailer => u64::MAX,
            _ => 0,
        }
    }

    /// Advances past `n` bytes (at most `skippable()`) without seeing them. Segment cuts are
    /// not reported for them, so this is for scanning only.
    pub fn skip(&mut self, n: u64) {
        debug_assert!(n <= self.skippable());
        self.pos += n;
        self.state = match self.state {
            State::Skip { remaining } | State::NativePixel { remaining, .. } if n < remaining => {
                State::Skip {
                    remaining: remaining - n,
                }
            }
            State::Skip { .. } => State::TopLevel,
            State::NativePixel { .. } => State::Trailer,
            State::FragmentValue { remaining } if n < remaining => State::FragmentValue {
                remaining: remaining - n,
            },
            State::FragmentValue { .. } => State::FragmentItem,
            State::Trailer => State::Trailer,
            _ => unreachable!("skip() called where nothing is skippable"),
        };
    }

    fn describe_state(&self) -> String {
        match &self.state {
            State::Start | State::Meta => "the File Meta Information".into(),
            State::DatasetStart | State::TopLevel => "an element header or value".into(),
            State::Skip { remaining } => format!("an element value ({remaining} bytes missing)"),
            State::NativePixel { remaining, .. } => {
                format!("Pixel Data ({remaining} bytes missing)")
            }
            State::FragmentItem | State::FragmentValue { .. } => {
                "encapsulated Pixel Data (no sequence delimiter)".into()
            }
            State::Trailer if self.pos < self.pixel_value_end => format!(
                "Pixel Data ({} bytes missing)",
                self.pixel_value_end - self.pos
            ),
            State::Trailer => "trailing data".into(),
            State::Deflated => "the deflated data set".into(),
        }
    }

    fn wanted_vr(&self, tag: u32) -> Option<[u8; 2]> {
        self.wanted
            .binary_search_by_key(&tag, |w| w.0)
            .ok()
            .map(|i| self.wanted[i].1)
    }

    /// Runs the state machine over `data` (which starts at `self.pos`) and returns how many
    /// bytes were consumed; consumed bytes have been handed to the sink.
    fn run(&mut self, data: &[u8], eof: bool, sink: &mut dyn Sink) -> Result<usize, FeedError> {
        let mut at = 0usize;
        self.retry_at = 0;
        loop {
            let rest = &data[at..];
            let step = match self.state {
                State::Start => self.start(rest, eof, sink)?,
                State::Meta => self.meta_element(rest, eof, sink)?,
                State::DatasetStart => self.dataset_start(rest, eof)?,
                State::TopLevel => self.top_level_element(rest, sink)?,
                State::Skip { remaining } => {
                    let n = pass_through(rest, remaining);
                    sink.data(&rest[..n])?;
                    self.state = if n as u64 == remaining {
                        State::TopLevel
                    } else {
                        State::Skip {
                            remaining: remaining - n as u64,
                        }
                    };
                    if n == 0 {
                        Step::Wait
                    } else {
                        Step::Consumed(n)
                    }
                }
                State::NativePixel { .. } => self.native_pixels(rest, sink)?,
                State::FragmentItem => self.fragment_item(rest, eof, sink)?,
                State::FragmentValue { remaining } => {
                    let n = pass_through(rest, remaining);
                    sink.data(&rest[..n])?;
                    self.state = if n as u64 == remaining {
                        State::FragmentItem
                    } else {
                        State::FragmentValue {
                            remaining: remaining - n as u64,
                        }
                    };
                    if n == 0 {
                        Step::Wait
                    } else {
                        Step::Consumed(n)
                    }
                }
                State::Trailer => {
                    sink.data(rest)?;
                    if rest.is_empty() {
                        Step::Wait
                    } else {
                        Step::Consumed(rest.len())
                    }
                }
                State::Deflated => {
                    sink.data(rest)?;
                    self.inflate(rest)?;
                    if rest.is_empty() {
                        Step::Wait
                    } else {
                        Step::Consumed(rest.len())
                    }
                }
            };
            match step {
                Step::Consumed(n) => {
                    at += n;
                    self.pos += n as u64;
                }
                Step::Wait => {
                    if !eof {
                        self.retry_at = self.retry_at.max(data.len() - at + 1);
                    }
                    return Ok(at);
                }
            }
        }
    }

    fn start(&mut self, data: &[u8], eof: bool, sink: &mut dyn Sink) -> Result<Step, FeedError> {
        if data.len() < 132 && !eof {
            self.retry_at = 132;
            return Ok(Step::Wait);
        }
        if data.len() >= 132 && &data[128..132] == b"DICM" {
            self.summary.preamble = true;
            self.state = State::Meta;
            sink.data(&data[..132])?;
            return Ok(Step::Consumed(132));
        }
        if data.len() >= 8
            && data[0..2] == [2, 0]
            && data[3] == 0
            && is_known_vr([data[4], data[5]])
        {
            self.state = State::Meta;
            return Ok(Step::Consumed(0));
        }
        // A bare data set in a file: only accepted when it plainly starts like one (an
        // Identifying group element), so that arbitrary files are not taken for DICOM.
        match detect_encoding(data) {
            Some(enc) if enc.tag(data) >> 16 == 0x0008 => {
                self.encoding = enc;
                self.summary.transfer_syntax = enc.uid().to_string();
                self.summary.transfer_syntax_detected = true;
                self.state = State::TopLevel;
                Ok(Step::Consumed(0))
            }
            _ => Err(ScanError::new(
                0,
                "not DICOM: no 'DICM' prefix, File Meta or data set start",
            )
            .into()),
        }
    }

    fn meta_element(
        &mut self,
        data: &[u8],
        eof: bool,
        sink: &mut dyn Sink,
    ) -> Result<Step, FeedError> {
        if data.len() < 4 {
            if eof {
                self.end_meta();
                return Ok(Step::Consumed(0));
            }
            return Ok(Step::Wait);
        }
        if u16::from_le_bytes([data[0], data[1]]) != 0x0002 {
            self.end_meta();
            return Ok(Step::Consumed(0));
        }
        let Some(h) =
            read_header(data, Encoding::EXPLICIT_LE).map_err(|m| ScanError::new(self.pos, m))?
        else {
            return Ok(Step::Wait);
        };
        if h.length == UNDEFINED_LENGTH || u64::from(h.length) > MAX_META_ELEMENT {
            return Err(ScanError::new(
                self.pos,
                format!(
                    "File Meta element {} has an invalid length {}",
                    tag_str(h.tag),
                    h.length
                ),
            )
            .into());
        }
        let end = h.header_len + h.length as usize;
        if data.len() < end {
            return Ok(Step::Wait);
        }
        let value = &data[h.header_len..end];
        self.summary.meta.push(Element {
            tag: h.tag,
            vr: h.vr.unwrap_or(*b"UN"),
            value: format_value(h.vr.unwrap_or(*b"UN"), value, Encoding::EXPLICIT_LE),
        });
        sink.data(&data[..end])?;
        Ok(Step::Consumed(end))
    }

    fn end_meta(&mut self) {
        self.summary.dataset_offset = self.pos;
        self.state = State::DatasetStart;
    }

    fn dataset_start(&mut self, data: &[u8], eof: bool) -> Result<Step, FeedError> {
        let declared = self
            .summary
            .meta
            .iter()
            .find(|e| e.tag == TRANSFER_SYNTAX_UID)
            .map(|e| trim_uid(&e.value))
            .filter(|s| !s.is_empty())
            .or_else(|| self.declared_syntax.clone());
        if let Some(uid) = declared.as_deref() {
            let (enc, deflated) = encoding_of(uid);
            self.summary.transfer_syntax = uid.to_string();
            self.encoding = enc;
            if deflated {
                self.summary.deflated = true;
                self.state = State::Deflated;
                let mut options = ScanOptions {
                    wanted: self.wanted.clone(),
                    transfer_syntax: Some(EXPLICIT_VR_LITTLE_ENDIAN.into()),
                    allow_truncated: self.allow_truncated,
                };
                options.wanted.retain(|w| w.0 >> 16 != 0x0002);
                self.inflated = Some(Inflated {
                    inflater: Decompress::new(false),
                    parser: Box::new(Parser::new(options)),
                    out: vec![0; 1 << 16],
                });
                return Ok(Step::Consumed(0));
            }
        }
        if data.len() < 8 && !eof {
            return Ok(Step::Wait);
        }
        if let Some(found) = detect_encoding(data) {
            match declared {
                None => {
                    self.encoding = found;
                    self.summary.transfer_syntax = found.uid().to_string();
                    self.summary.transfer_syntax_detected = true;
                }
                // Some writers declare one VR encoding and use the other; read what is there,
                // as pydicom and DCMTK do.
                Some(_) if found.explicit_vr != self.encoding.explicit_vr => {
                    self.encoding.explicit_vr = found.explicit_vr;
                    self.summary.transfer_syntax_detected = true;
                }
                Some(_) => {}
            }
        }
        self.state = State::TopLevel;
        Ok(Step::Consumed(0))
    }

    fn top_level_element(&mut self, data: &[u8], sink: &mut dyn Sink) -> Result<Step, FeedError> {
        if data.is_empty() {
            return Ok(Step::Wait);
        }
        let enc = self.encoding;
        let Some(h) = read_header(data, enc).map_err(|m| ScanError::new(self.pos, m))? else {
            return Ok(Step::Wait);
        };
        let hl = h.header_len;
        if h.tag >> 16 == 0xFFFE {
            // A stray delimiter at the top level (seen in the wild): keep its bytes, nothing more.
            if h.tag == ITEM || h.length != 0 {
                return Err(ScanError::new(
                    self.pos,
                    format!(
                        "unexpected {} at the top level of the data set",
                        tag_str(h.tag)
                    ),
                )
                .into());
            }
            sink.data(&data[..hl])?;
            return Ok(Step::Consumed(hl));
        }
        if matches!(
            h.tag,
            PIXEL_DATA | FLOAT_PIXEL_DATA | DOUBLE_FLOAT_PIXEL_DATA
        ) {
            sink.data(&data[..hl])?;
            self.begin_pixel_data(h.tag, h.length, hl as u64, sink)?;
            return Ok(Step::Consumed(hl));
        }
        if h.length == UNDEFINED_LENGTH {
            let inner = if h.vr == Some(*b"UN") {
                Encoding::IMPLICIT_LE
            } else {
                enc
            };
            return match undefined_length_value(&data[hl..], inner, 0) {
                Ok(Nested::Complete(n)) => {
                    let end = hl + n;
                    sink.data(&data[..end])?;
                    Ok(Step::Consumed(end))
                }
                Ok(Nested::Need(n)) => {
                    self.retry_at = (hl + n).max(data.len().saturating_mul(2));
                    Ok(Step::Wait)
                }
                Err((at, m)) => Err(ScanError::new(self.pos + (hl + at) as u64, m).into()),
            };
        }
        let length = u64::from(h.length);
        let limit = if h.tag == EXTENDED_OFFSET_TABLE {
            MAX_EXTENDED_OFFSET_TABLE
        } else {
            MAX_COLLECTED_VALUE
        };
        match self.wanted_vr(h.tag) {
            Some(assumed) if length <= limit => {
                let end = hl + length as usize;
                if data.len() < end {
                    self.retry_at = end;
                    return Ok(Step::Wait);
                }
                let vr = h.vr.unwrap_or(assumed);
                self.summary.elements.push(Element {
                    tag: h.tag,
                    vr,
                    value: format_value(vr, &data[hl..end], enc),
                });
                sink.data(&data[..end])?;
                Ok(Step::Consumed(end))
            }
            _ => {
                sink.data(&data[..hl])?;
                if length > 0 {
                    self.state = State::Skip { remaining: length };
                }
                Ok(Step::Consumed(hl))
            }
        }
    }

    fn begin_pixel_data(
        &mut self,
        tag: u32,
        length: u32,
        header_len: u64,
        sink: &mut dyn Sink,
    ) -> io::Result<()> {
        let element_offset = self.pos;
        let value_offset = self.pos + header_len;
        let frames = self
            .summary
            .number(NUMBER_OF_FRAMES)
            .unwrap_or(1)
            .clamp(1, u64::from(u32::MAX)) as u32;
        let mut pixel = PixelData {
            tag,
            element_offset,
            value_offset,
            value_length: None,
            number_of_frames: frames,
            frames_resolved: true,
            ..PixelData::default()
        };
        if length == UNDEFINED_LENGTH {
            self.fragments_start = 0;
            self.state = State::FragmentItem;
            self.summary.pixel_data = Some(pixel);
            return Ok(());
        }
        let length = u64::from(length);
        pixel.value_length = Some(length);
        self.pixel_value_end = value_offset + length;
        let bits = match tag {
            FLOAT_PIXEL_DATA => 32,
            DOUBLE_FLOAT_PIXEL_DATA => 64,
            _ => self.summary.number(BITS_ALLOCATED).unwrap_or(0),
        };
        let samples = self.summary.number(SAMPLES_PER_PIXEL).unwrap_or(1);
        let pixel_bits = self
            .summary
            .number(ROWS)
            .unwrap_or(0)
            .saturating_mul(self.summary.number(COLUMNS).unwrap_or(0))
            .saturating_mul(samples)
            .saturating_mul(bits);
        // Frames are addressable only when each one is a whole number of bytes; otherwise the
        // value is kept as one frame.
        let (frame_size, frame_count) =
            if pixel_bits > 0 && pixel_bits % 8 == 0 && pixel_bits / 8 <= length {
                let size = pixel_bits / 8;
                (size, u64::from(frames).min(length / size))
            } else {
                (length, 1)
            };
        pixel.frame_size = frame_size;
        pixel.frames_resolved = frame_count == u64::from(frames);
        self.summary.pixel_data = Some(pixel);
        sink.cut(SegmentKind::Header)?;
        self.state = if length == 0 || frame_size == 0 {
            State::Trailer
        } else {
            State::NativePixel {
                remaining: length,
                frame_left: frame_size,
                frame: 0,
                frames_left: frame_count as u32,
            }
        };
        Ok(())
    }

    fn native_pixels(&mut self, data: &[u8], sink: &mut dyn Sink) -> Result<Step, FeedError> {
        let State::NativePixel {
            remaining,
            frame_left,
            frame,
            frames_left,
        } = self.state
        else {
            unreachable!("native_pixels called in another state")
        };
        let n = pass_through(data, frame_left);
        if n == 0 {
            return Ok(Step::Wait);
        }
        sink.data(&data[..n])?;
        let remaining = remaining - n as u64;
        let frame_left = frame_left - n as u64;
        self.state = if frame_left > 0 {
            State::NativePixel {
                remaining,
                frame_left,
                frame,
                frames_left,
            }
        } else {
            sink.cut(SegmentKind::Frame(frame))?;
            let frame_size = self.summary.pixel_data.as_ref().map_or(0, |p| p.frame_size);
            if frames_left > 1 {
                State::NativePixel {
                    remaining,
                    frame_left: frame_size,
                    frame: frame + 1,
                    frames_left: frames_left - 1,
                }
            } else {
                // Whatever follows the last whole frame (value padding, later elements) is the
                // trailer.
                State::Trailer
            }
        };
        Ok(Step::Consumed(n))
    }

    fn fragment_item(
        &mut self,
        data: &[u8],
        eof: bool,
        sink: &mut dyn Sink,
    ) -> Result<Step, FeedError> {
        if data.len() < 8 {
            return Ok(Step::Wait);
        }
        // Item tags and lengths follow the data set's byte order.
        let tag = self.encoding.tag(data);
        let length = self.encoding.u32(&data[4..8]);
        let pixel = self.summary.pixel_data.as_mut().expect("pixel data begun");
        if tag == SEQUENCE_DELIMITATION {
            if pixel.fragments.is_empty() && self.fragments_start == 0 {
                // No item at all, not even a Basic Offset Table.
                sink.cut(SegmentKind::Header)?;
            } else if !pixel.fragments.is_empty() {
                sink.cut(SegmentKind::Frame(self.frame))?;
            }
            sink.data(&data[..8])?;
            self.state = State::Trailer;
            return Ok(Step::Consumed(8));
        }
        if tag != ITEM || length == UNDEFINED_LENGTH {
            return Err(ScanError::new(
                self.pos,
                format!(
                    "expected a Pixel Data item, found {} with length {length:#x}",
                    tag_str(tag)
                ),
            )
            .into());
        }
        let length64 = u64::from(length);
        if self.fragments_start == 0 {
            // The first item is the Basic Offset Table: buffered whole, it is small.
            if length64 > MAX_BASIC_OFFSET_TABLE || !length.is_multiple_of(4) {
                return Err(ScanError::new(
                    self.pos,
                    format!("invalid Basic Offset Table length {length}"),
                )
                .into());
            }
            let end = 8 + length as usize;
            if data.len() < end {
                if !eof {
                    self.retry_at = end;
                }
                return Ok(Step::Wait);
            }
            pixel.basic_offset_table = data[8..end]
                .chunks_exact(4)
                .map(|c| self.encoding.u32(c))
                .collect();
            sink.data(&data[..end])?;
            sink.cut(SegmentKind::Header)?;
            self.fragments_start = self.pos + end as u64;
            self.choose_offset_table();
            return Ok(Step::Consumed(end));
        }
        // Deciding whether this fragment starts a frame may need its first bytes.
        let peek = length.min(8) as usize;
        if data.len() < 8 + peek && !eof {
            self.retry_at = 8 + peek;
            return Ok(Step::Wait);
        }
        let head = &data[8..(8 + peek).min(data.len())];
        let index = pixel.fragments.len();
        let relative = self.pos - self.fragments_start;
        if index == 0 {
            self.frame = 0;
            if self.frame_rule != FrameRule::OffsetTable && pixel.number_of_frames > 1 {
                self.frame_rule = if starts_frame(head) {
                    FrameRule::Marker
                } else {
                    FrameRule::PerFragment
                };
            }
            if self.frame_rule == FrameRule::OffsetTable {
                self.next_offset = usize::from(self.offset_table.first() == Some(&0));
            }
        } else {
            let new_frame = match self.frame_rule {
                FrameRule::Single => false,
                FrameRule::PerFragment => true,
                FrameRule::Marker => starts_frame(head),
                FrameRule::OffsetTable => {
                    let hit = self.offset_table.get(self.next_offset) == Some(&relative);
                    if hit {
                        self.next_offset += 1;
                    }
                    hit
                }
            };
            if new_frame {
                sink.cut(SegmentKind::Frame(self.frame))?;
                self.frame += 1;
            }
        }
        pixel.fragments.push(Fragment {
            offset: self.pos + 8,
            length: length64,
            frame: self.frame,
        });
        sink.data(&data[..8])?;
        if length64 > 0 {
            self.state = State::FragmentValue {
                remaining: length64,
            };
        }
        Ok(Step::Consumed(8))
    }

    fn choose_offset_table(&mut self) {
        let pixel = self.summary.pixel_data.as_ref().expect("pixel data begun");
        let eot = self
            .summary
            .elements
            .iter()
            .find(|e| e.tag == EXTENDED_OFFSET_TABLE);
        self.offset_table = if pixel.basic_offset_table.len() > 1 {
            pixel
                .basic_offset_table
                .iter()
                .map(|&o| u64::from(o))
                .collect()
        } else if let Some(eot) = eot.filter(|e| e.value.len() >= 16 && e.value.len() % 8 == 0) {
            eot.value
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        } else {
            Vec::new()
        };
        self.frame_rule = if self.offset_table.len() > 1 {
            FrameRule::OffsetTable
        } else {
            FrameRule::Single
        };
    }

    fn finish_pixel_data(&mut self) {
        let rule = self.frame_rule;
        let Some(p) = self.summary.pixel_data.as_mut() else {
            return;
        };
        if !p.encapsulated() || self.summary.truncated_at.is_some() {
            return;
        }
        let frames = p.fragments.last().map_or(0, |f| f.frame + 1);
        p.frames_resolved = match rule {
            FrameRule::PerFragment => frames == p.number_of_frames,
            FrameRule::Single => p.number_of_frames <= 1,
            FrameRule::Marker | FrameRule::OffsetTable => frames == p.number_of_frames,
        };
    }

    fn inflate(&mut self, mut input: &[u8]) -> Result<(), FeedError> {
        let pos = self.pos;
        let inflated = self
            .inflated
            .as_mut()
            .expect("deflated state has an inflater");
        // Not `while !input.is_empty()`: when the output buffer fills just as the input runs
        // out, the rest of that output is still inside the inflater, and at the end of the
        // stream nothing would take it out (found by fuzzing: a valid file's tail went
        // unscanned, depending on where the pieces it arrived in ended).
        loop {
            let before_in = inflated.inflater.total_in();
            let before_out = inflated.inflater.total_out();
            let status = inflated
                .inflater
                .decompress(input, &mut inflated.out, FlushDecompress::None)
                .map_err(|e| ScanError::new(pos, format!("invalid deflated data set: {e}")))?;
            let used = (inflated.inflater.total_in() - before_in) as usize;
            let produced = (inflated.inflater.total_out() - before_out) as usize;
            input = &input[used..];
            if inflated.inflater.total_out() > MAX_INFLATED {
                return Err(ScanError::new(
                    pos,
                    format!("deflated data set inflates beyond {MAX_INFLATED} bytes"),
                )
                .into());
            }
            inflated
                .parser
                .feed(&inflated.out[..produced], &mut NullSink)?;
            let drained = input.is_empty() && produced < inflated.out.len();
            if status == Status::StreamEnd || (used == 0 && produced == 0) || drained {
                break;
            }
        }
        Ok(())
    }

    fn finish_inflated(&mut self) -> Result<(), FeedError> {
        let inflated = self
            .inflated
            .take()
            .expect("deflated state has an inflater");
        let inner = inflated.parser.finish(&mut NullSink)?;
        self.summary.elements = inner.elements;
        self.summary.pixel_data = inner.pixel_data;
        self.summary.truncated_at = inner.truncated_at;
        Ok(())
    }
}

fn pass_through(data: &[u8], remaining: u64) -> usize {
    usize::try_from(remaining).map_or(data.len(), |r| r.min(data.len()))
}

/// True when a fragment starts with a JPEG SOI, a JPEG 2000 codestream SOC+SIZ or a JP2 box.
fn starts_frame(head: &[u8]) -> bool {
    head.starts_with(&[0xFF, 0xD8])
        || head.starts_with(&[0xFF, 0x4F, 0xFF, 0x51])
        || head.starts_with(&[0, 0, 0, 0x0C, 0x6A, 0x50])
}

/// Infers the encoding of a data set from its first element: an explicit VR is two known VR
/// letters; big endian shows as a small group number read the other way round.
fn detect_encoding(data: &[u8]) -> Option<Encoding> {
    if data.len() < 8 {
        return None;
    }
    let explicit = is_known_vr([data[4], data[5]]);
    let little_group = u16::from_le_bytes([data[0], data[1]]);
    let big_group = u16::from_be_bytes([data[0], data[1]]);
    let big_endian = explicit && little_group > 0x00FF && big_group <= 0x00FF;
    Some(Encoding {
        explicit_vr: explicit,
        big_endian,
    })
}

struct Header {
    tag: u32,
    vr: Option<[u8; 2]>,
    length: u32,
    header_len: usize,
}

/// Reads an element header; Ok(None) when `data` is too short to hold it.
fn read_header(data: &[u8], enc: Encoding) -> Result<Option<Header>, String> {
    if data.len() < 8 {
        return Ok(None);
    }
    let tag = enc.tag(data);
    if tag >> 16 == 0xFFFE || !enc.explicit_vr {
        return Ok(Some(Header {
            tag,
            vr: None,
            length: enc.u32(&data[4..8]),
            header_len: 8,
        }));
    }
    let vr = [data[4], data[5]];
    if !vr.iter().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "invalid VR {:?} for element {} in an Explicit VR data set",
            String::from_utf8_lossy(&vr),
            tag_str(tag)
        ));
    }
    if has_long_length(vr) {
        if data.len() < 12 {
            return Ok(None);
        }
        Ok(Some(Header {
            tag,
            vr: Some(vr),
            length: enc.u32(&data[8..12]),
            header_len: 12,
        }))
    } else {
        Ok(Some(Header {
            tag,
            vr: Some(vr),
            length: u32::from(enc.u16(&data[6..8])),
            header_len: 8,
        }))
    }
}

enum Nested {
    /// The value (items and sequence delimiter) is complete and this many bytes long.
    Complete(usize),
    /// At least this many bytes are needed.
    Need(usize),
}

type NestedResult = Result<Nested, (usize, String)>;

/// Measures an undefined-length value: items up to a Sequence Delimitation Item. Offsets in
/// errors are relative to `data`.
fn undefined_length_value(data: &[u8], enc: Encoding, depth: u32) -> NestedResult {
    if depth > MAX_NESTING {
        return Err((
            0,
            format!("sequences nested deeper than {MAX_NESTING} levels"),
        ));
    }
    let mut pos = 0usize;
    loop {
        if data.len() < pos + 8 {
            return Ok(Nested::Need(pos + 8));
        }
        let tag = enc.tag(&data[pos..]);
        let length = enc.u32(&data[pos + 4..]);
        match tag {
            SEQUENCE_DELIMITATION => return Ok(Nested::Complete(pos + 8)),
            ITEM if length == UNDEFINED_LENGTH => {
                pos += 8;
                match item_until_delimiter(&data[pos..], enc, depth + 1)
                    .map_err(|(o, m)| (pos + o, m))?
                {
                    Nested::Complete(n) => pos += n,
                    Nested::Need(n) => return Ok(Nested::Need(pos + n)),
                }
            }
            ITEM => {
                pos = pos
                    .checked_add(8 + length as usize)
                    .ok_or((pos, "item length overflows".to_string()))?;
                if data.len() < pos {
                    return Ok(Nested::Need(pos));
                }
            }
            _ => {
                return Err((
                    pos,
                    format!(
                        "expected an item or sequence delimiter, found {}",
                        tag_str(tag)
                    ),
                ))
            }
        }
    }
}

/// Measures the data set of an undefined-length item, up to and including its delimiter.
fn item_until_delimiter(data: &[u8], enc: Encoding, depth: u32) -> NestedResult {
    if depth > MAX_NESTING {
        return Err((
            0,
            format!("sequences nested deeper than {MAX_NESTING} levels"),
        ));
    }
    let mut pos = 0usize;
    loop {
        let Some(h) = read_header(&data[pos..], enc).map_err(|m| (pos, m))? else {
            return Ok(Nested::Need(pos + 12));
        };
        if h.tag == ITEM_DELIMITATION {
            return Ok(Nested::Complete(pos + 8));
        }
        if h.tag >> 16 == 0xFFFE {
            return Err((pos, format!("unexpected {} inside an item", tag_str(h.tag))));
        }
        pos += h.header_len;
        if h.length == UNDEFINED_LENGTH {
            let inner = if h.vr == Some(*b"UN") {
                Encoding::IMPLICIT_LE
            } else {
                enc
            };
            match undefined_length_value(&data[pos..], inner, depth + 1)
                .map_err(|(o, m)| (pos + o, m))?
            {
                Nested::Complete(n) => pos += n,
                Nested::Need(n) => return Ok(Nested::Need(pos + n)),
            }
        } else {
            pos = pos
                .checked_add(h.length as usize)
                .ok_or((pos, "element length overflows".to_string()))?;
        }
        if data.len() < pos {
            return Ok(Nested::Need(pos));
        }
    }
}

/// Formats binary numeric values as DICOM text; text values are returned as stored.
fn format_value(vr: [u8; 2], value: &[u8], enc: Encoding) -> Vec<u8> {
    fn join<const N: usize>(value: &[u8], f: impl Fn([u8; N]) -> String) -> Vec<u8> {
        value
            .chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunk of N bytes")))
            .collect::<Vec<_>>()
            .join("\\")
            .into_bytes()
    }
    let be = enc.big_endian;
    match &vr {
        b"US" => join::<2>(value, |b| {
            if be {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            }
            .to_string()
        }),
        b"SS" => join::<2>(value, |b| {
            if be {
                i16::from_be_bytes(b)
            } else {
                i16::from_le_bytes(b)
            }
            .to_string()
        }),
        b"UL" => join::<4>(value, |b| {
            if be {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
            .to_string()
        }),
        b"SL" => join::<4>(value, |b| {
            if be {
                i32::from_be_bytes(b)
            } else {
                i32::from_le_bytes(b)
            }
            .to_string()
        }),
        b"FL" => join::<4>(value, |b| {
            if be {
                f32::from_be_bytes(b)
            } else {
                f32::from_le_bytes(b)
            }
            .to_string()
        }),
        b"FD" => join::<8>(value, |b| {
            if be {
                f64::from_be_bytes(b)
            } else {
                f64::from_le_bytes(b)
            }
            .to_string()
        }),
        b"AT" => join::<4>(value, |b| {
            let (g, e) = if be {
                (
                    u16::from_be_bytes([b[0], b[1]]),
                    u16::from_be_bytes([b[2], b[3]]),
                )
            } else {
                (
                    u16::from_le_bytes([b[0], b[1]]),
                    u16::from_le_bytes([b[2], b[3]]),
                )
            };
            format!("{g:04X}{e:04X}")
        }),
        _ => value.to_vec(),
    }
}

fn trim_uid(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .trim_end_matches(['\0', ' '])
        .trim_start()
        .to_string()
}

pub fn tag_str(tag: u32) -> String {
    format!("({:04X},{:04X})", tag >> 16, tag & 0xFFFF)
}

/// Scans a file, reading only what the scan needs: element values it does not collect,
/// pixel data and the trailer are skipped over, not read.
pub fn scan_file(path: &std::path::Path, options: ScanOptions) -> Result<Summary, FeedError> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let mut parser = Parser::new(options);
    let mut sink = NullSink;
    // Most headers fit in the first few kilobytes: read little until the parser asks for more.
    let mut buf = vec![0u8; 8 << 10];
    let mut pos = 0u64;
    while pos < length {
        let skip = parser.skippable().min(length - pos);
        if skip > 0 {
            parser.skip(skip);
            pos += skip;
            continue;
        }
        if pos > 0 && buf.len() < 64 << 10 {
            buf.resize(64 << 10, 0);
        }
        let n = file.read_at(&mut buf, pos)?;
        if n == 0 {
            break;
        }
        parser.feed(&buf[..n], &mut sink)?;
        pos += n as u64;
    }
    parser.finish(&mut sink)
}

/// Scans a complete file or data set held in memory.
pub fn scan_bytes(data: &[u8], options: ScanOptions) -> Result<Summary, ScanError> {
    let mut parser = Parser::new(options);
    let mut sink = NullSink;
    let fed = parser
        .feed(data, &mut sink)
        .and_then(|()| parser.finish(&mut sink));
    fed.map_err(|e| match e {
        FeedError::Scan(s) => s,
        FeedError::Io(io) => ScanError::new(0, io.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vr_tables_are_sorted_and_the_long_length_vrs_are_known() {
        // python.rs finds a VR's name by binary search in KNOWN_VRS.
        assert!(KNOWN_VRS.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(LONG_LENGTH_VRS.iter().all(|vr| KNOWN_VRS.contains(vr)));
        assert!(has_long_length(*b"OB") && !has_long_length(*b"US"));
    }
}
