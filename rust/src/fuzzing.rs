//! The bodies of the fuzz targets (`rust/fuzz/`): one function per target, each taking the
//! fuzzer's bytes, driving a parser through its public API and asserting what must hold for
//! any input (no panic, no allocation sized by a length read, round trips). The libFuzzer
//! targets are thin wrappers around these, and `rust/tests/fuzz_corpus.rs` replays every
//! committed corpus and regression input through them on stable Rust.

use crate::dimse;
use crate::manifest::Manifest;
use crate::pack::{self, RecordHeader, PACK_HEADER_LEN, RECORD_HEADER_LEN, RECORD_MAGIC};
use crate::pdu::{self, AbortReason, RejectReason, RejectResult};
use crate::scan::{self, Parser, ScanOptions, SegmentKind, Sink, Summary};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

/// A sink that checks every byte it is handed against the stream fed to the parser, in order,
/// and records where each segment ends.
struct Echo<'a> {
    expected: &'a [u8],
    at: usize,
    cuts: Vec<(SegmentKind, usize)>,
}

impl Sink for Echo<'_> {
    fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        let end = self.at + bytes.len();
        assert_eq!(
            self.expected.get(self.at..end),
            Some(bytes),
            "the sink must receive the stream as fed, byte for byte"
        );
        self.at = end;
        Ok(())
    }

    fn cut(&mut self, kind: SegmentKind) -> io::Result<()> {
        self.cuts.push((kind, self.at));
        Ok(())
    }
}

/// What a scan found, in a form two scans can be compared by.
type Outcome = Result<(Summary, Vec<(SegmentKind, usize)>), ()>;

/// Scans `data` fed in pieces of `chunk` bytes (or, when `skipping`, reading it as
/// `scan_file` does: skipping what the parser says it only passes through).
fn scan_in_pieces(data: &[u8], options: ScanOptions, chunk: usize, skipping: bool) -> Outcome {
    let mut parser = Parser::new(options);
    let mut sink = Echo {
        expected: data,
        at: 0,
        cuts: Vec::new(),
    };
    let mut at = 0;
    while at < data.len() {
        let skip = if skipping {
            parser.skippable().min((data.len() - at) as u64)
        } else {
            0
        };
        if skip > 0 {
            parser.skip(skip);
            at += skip as usize;
            // Skipped bytes never reach the sink: resume the check after them.
            sink.at = at;
            continue;
        }
        let end = data.len().min(at + chunk);
        if parser.feed(&data[at..end], &mut sink).is_err() {
            return Err(());
        }
        at = end;
    }
    let summary = parser.finish(&mut sink).map_err(|_| ())?;
    if !skipping {
        assert_eq!(sink.at, data.len(), "every byte reaches the sink");
        assert_eq!(summary.total_length, data.len() as u64);
    }
    Ok((summary, sink.cuts))
}

fn same_findings(a: &Outcome, b: &Outcome, compare_cuts: bool) {
    match (a, b) {
        (Ok((x, x_cuts)), Ok((y, y_cuts))) => {
            assert_eq!(x.elements, y.elements);
            assert_eq!(x.meta, y.meta);
            assert_eq!(x.pixel_data, y.pixel_data);
            assert_eq!(x.transfer_syntax, y.transfer_syntax);
            assert_eq!(x.dataset_offset, y.dataset_offset);
            assert_eq!(x.total_length, y.total_length);
            assert_eq!(x.truncated_at, y.truncated_at);
            if compare_cuts {
                assert_eq!(x_cuts, y_cuts);
            }
        }
        (Err(()), Err(())) => {}
        _ => panic!(
            "one reading accepted what the other refused: {:?} / {:?}",
            a.is_ok(),
            b.is_ok()
        ),
    }
}

const SYNTAXES: [Option<&str>; 4] = [
    None,
    Some(scan::IMPLICIT_VR_LITTLE_ENDIAN),
    Some(scan::EXPLICIT_VR_LITTLE_ENDIAN),
    Some(scan::EXPLICIT_VR_BIG_ENDIAN),
];

fn wanted() -> Vec<(u32, [u8; 2])> {
    vec![(0x0010_0010, *b"PN"), (0x0020_000D, *b"UI")]
}

/// Target `scan`: the first byte picks the transfer syntax (a file, or a bare data set in one
/// of the native syntaxes), truncation, whether values are skipped as `scan_file` does, and
/// the size of the pieces the rest is fed in. Whatever the pieces, the result is the one the
/// whole stream gives, and the sink sees every byte in order.
pub fn scan(data: &[u8]) {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let options = ScanOptions {
        wanted: wanted(),
        transfer_syntax: SYNTAXES[usize::from(control & 3)].map(str::to_string),
        allow_truncated: control & 4 != 0,
    };
    let skipping = control & 8 != 0;
    let chunk = usize::from(control >> 4) * 37 + 1;
    let whole = scan_in_pieces(body, options.clone(), body.len().max(1), false);
    let pieces = scan_in_pieces(body, options, chunk, skipping);
    same_findings(&whole, &pieces, !skipping);
}

/// Target `deflate`: a deflated data set, bare or in a Part 10 file. With the first byte's
/// bit 0 the rest is a data set that is deflated here (so that the fuzzer gets past
/// inflation), and the scan must find what a scan of the plain data set finds; without it
/// the rest is taken as the deflate stream itself.
pub fn deflate(data: &[u8]) {
    use flate2::write::DeflateEncoder;
    use io::Write;

    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let compress = control & 1 != 0;
    let stream = if compress {
        let level = flate2::Compression::new(u32::from(control >> 4) % 10);
        let mut encoder = DeflateEncoder::new(Vec::new(), level);
        encoder.write_all(body).expect("deflating into a Vec");
        encoder.finish().expect("deflating into a Vec")
    } else {
        body.to_vec()
    };
    let (input, options) = if control & 2 != 0 {
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        let mut uid = DEFLATED.as_bytes().to_vec();
        uid.push(0);
        let group_length = 8 + uid.len() as u32;
        file.extend_from_slice(b"\x02\x00\x00\x00UL\x04\x00");
        file.extend_from_slice(&group_length.to_le_bytes());
        file.extend_from_slice(b"\x02\x00\x10\x00UI");
        file.extend_from_slice(&(uid.len() as u16).to_le_bytes());
        file.extend_from_slice(&uid);
        file.extend_from_slice(&stream);
        let options = ScanOptions {
            wanted: wanted(),
            transfer_syntax: None,
            allow_truncated: control & 4 != 0,
        };
        (file, options)
    } else {
        let options = ScanOptions {
            wanted: wanted(),
            transfer_syntax: Some(DEFLATED.into()),
            allow_truncated: control & 4 != 0,
        };
        (stream, options)
    };
    let chunk = usize::from(control >> 3) * 61 + 1;
    let deflated = scan_in_pieces(&input, options.clone(), chunk, false);
    if let Ok((summary, _)) = &deflated {
        // Unless the stream ended inside a File Meta element (a deflate stream that begins
        // 02 00 reads as one), the data set was read as deflated.
        assert!(summary.deflated || summary.truncated_at.is_some());
    }
    if compress {
        let plain = ScanOptions {
            transfer_syntax: Some(scan::EXPLICIT_VR_LITTLE_ENDIAN.into()),
            ..options
        };
        let plain = scan_in_pieces(body, plain, body.len().max(1), false);
        match (&deflated, &plain) {
            (Ok((d, _)), Ok((p, _))) => {
                assert_eq!(d.elements, p.elements);
                assert_eq!(d.pixel_data, p.pixel_data);
                assert_eq!(d.truncated_at.is_some(), p.truncated_at.is_some());
            }
            (Err(()), Err(())) => {}
            _ => panic!(
                "the deflated and the plain data set read differently: {:?} / {:?}",
                deflated.is_ok(),
                plain.is_ok()
            ),
        }
    }
}

/// Target `associate`: an A-ASSOCIATE-RQ body (after the 6-byte PDU header). When it parses,
/// the A-ASSOCIATE-AC built from it (each context accepted with its first transfer syntax, or
/// refused echoing it; the proposed roles answered) must be a well-formed PDU that reads
/// back to what was put in; and so must the A-ASSOCIATE-RJ, A-RELEASE-RP and A-ABORT.
pub fn associate(data: &[u8]) {
    let Ok(rq) = pdu::parse_associate_rq(data) else {
        return;
    };
    let results: Vec<pdu::ContextResult> = rq
        .contexts
        .iter()
        .map(|c| pdu::ContextResult {
            id: c.id,
            result: if c.abstract_syntax.is_empty() {
                pdu::ABSTRACT_SYNTAX_NOT_SUPPORTED
            } else {
                pdu::ACCEPTANCE
            },
            transfer_syntax: c.transfer_syntaxes.first().cloned().unwrap_or_default(),
        })
        .collect();
    let max_pdu = rq.max_pdu.wrapping_add(1);
    let ac = pdu::encode_associate_ac(&rq, &results, &rq.roles, max_pdu, "1.2.3.4", "FUZZ");
    assert_eq!(ac[0], pdu::A_ASSOCIATE_AC);
    let length = u32::from_be_bytes(ac[2..6].try_into().expect("4 bytes")) as usize;
    assert_eq!(length, ac.len() - 6, "A-ASSOCIATE-AC length field");
    // The AC has the RQ's layout (results in items 0x21, which the RQ reader passes over).
    let back = pdu::parse_associate_rq(&ac[6..]).expect("the A-ASSOCIATE-AC reads back");
    assert_eq!(
        (back.called_ae, back.calling_ae, back.echo),
        (rq.called_ae, rq.calling_ae, rq.echo)
    );
    assert_eq!(back.max_pdu, max_pdu);
    // Replies to role proposals that do not fit in the user information item are left out.
    assert!(rq.roles.starts_with(&back.roles));
    assert_eq!(
        (
            back.implementation_class_uid.as_str(),
            back.implementation_version_name.as_str()
        ),
        ("1.2.3.4", "FUZZ")
    );
    let result = [RejectResult::Permanent, RejectResult::Transient][usize::from(data[0] & 1)];
    let reason = RejectReason::ALL[usize::from(data[1]) % RejectReason::ALL.len()];
    let (source, code) = reason.code();
    assert_eq!(
        pdu::encode_associate_rj(result, reason),
        [
            pdu::A_ASSOCIATE_RJ,
            0,
            0,
            0,
            0,
            4,
            0,
            result as u8,
            source,
            code
        ]
    );
    assert_eq!(
        pdu::encode_release_rp(),
        [pdu::A_RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0]
    );
    let abort = AbortReason::for_pdu(data[2]);
    assert_eq!(
        pdu::encode_abort(abort),
        [pdu::A_ABORT, 0, 0, 0, 0, 4, 0, 0, 2, abort as u8]
    );
}

/// Splits P-DATA-TF PDUs written by `encode_message`/`PdvWriter`: the message they carry and
/// how many PDVs were flagged last.
fn read_message(mut wire: &[u8], context_id: u8, command: bool, max_pdu: u32) -> (Vec<u8>, u32) {
    let mut joined = Vec::new();
    let mut lasts = 0;
    while !wire.is_empty() {
        assert_eq!(wire[0], pdu::P_DATA_TF);
        let length = u32::from_be_bytes(wire[2..6].try_into().expect("4 bytes")) as usize;
        assert!(max_pdu == 0 || length <= max_pdu.max(7) as usize);
        for pdv in pdu::parse_pdvs(&wire[6..6 + length]).expect("our own PDVs parse") {
            assert_eq!((pdv.context_id, pdv.command), (context_id, command));
            lasts += u32::from(pdv.last);
            joined.extend_from_slice(pdv.data);
        }
        wire = &wire[6 + length..];
    }
    (joined, lasts)
}

/// Target `pdata`: a P-DATA-TF body (after the PDU header) whose first byte is taken out to
/// choose a peer's maximum PDU length. Its PDVs are parsed, command fragments reassembled and
/// decoded as the listener does; the data of every PDV, sent back as one message by
/// `PdvWriter` in pieces, reads back the same.
pub fn pdata(data: &[u8]) {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let Ok(pdvs) = pdu::parse_pdvs(body) else {
        return;
    };
    let mut command = Vec::new();
    let mut message = Vec::new();
    for pdv in &pdvs {
        assert!(pdv.data.len() <= body.len());
        if pdv.command {
            command.extend_from_slice(pdv.data);
            if pdv.last {
                dimse(&command);
                command.clear();
            }
        }
        message.extend_from_slice(pdv.data);
    }
    let max_pdu = u32::from(control) * 3;
    let (context_id, is_command) = pdvs
        .first()
        .map_or((1, false), |p| (p.context_id, p.command));
    let wire = pdu::encode_message(context_id, is_command, &message, max_pdu);
    assert_eq!(
        read_message(&wire, context_id, is_command, max_pdu),
        (message.clone(), 1)
    );
    let mut writer = pdu::PdvWriter::new(context_id, is_command, max_pdu);
    let mut pieces = Vec::new();
    for piece in message.chunks(usize::from(control) + 1) {
        writer.write(piece, &mut pieces).expect("writing to a Vec");
    }
    writer.finish(&mut pieces).expect("writing to a Vec");
    assert_eq!(pieces, wire, "streamed and one-shot fragmenting agree");
}

/// Target `dimse`: a command set. When it parses, every response and request encoded from it
/// reads back with the fields it was given.
pub fn dimse(data: &[u8]) {
    let Ok(command) = dimse::parse_command(data) else {
        return;
    };
    let status = command.status;
    let rsp = dimse::parse_command(&dimse::response(&command, status)).expect("a response");
    let store = command.field == dimse::C_STORE_RQ;
    let expected = if store {
        dimse::C_STORE_RSP
    } else {
        dimse::C_ECHO_RSP
    };
    assert_eq!(
        (rsp.field, rsp.responding_to, rsp.status, rsp.has_data_set),
        (expected, command.message_id, status, false)
    );
    assert_eq!(rsp.affected_sop_class_uid, command.affected_sop_class_uid);
    if store {
        assert_eq!(
            rsp.affected_sop_instance_uid,
            command.affected_sop_instance_uid
        );
    }
    let find = dimse::parse_command(&dimse::find_response(&command, status)).expect("C-FIND-RSP");
    assert_eq!(find.field, command.field | 0x8000);
    assert_eq!(find.has_data_set, status == crate::status::PENDING);
    let counts = dimse::SubOperations {
        remaining: u32::from(command.message_id),
        completed: 1,
        failed: 2,
        warning: 3,
    };
    let retrieve = dimse::retrieve_response(&command, status, counts, command.has_data_set);
    let retrieve = dimse::parse_command(&retrieve).expect("C-GET/C-MOVE-RSP");
    assert_eq!(
        (retrieve.status, retrieve.has_data_set),
        (status, command.has_data_set)
    );
    let sub = dimse::store_request(
        &command.affected_sop_class_uid,
        &command.affected_sop_instance_uid,
        command.message_id,
    );
    let sub = dimse::parse_command(&sub).expect("C-STORE-RQ");
    assert_eq!(
        (sub.field, sub.message_id, sub.has_data_set),
        (dimse::C_STORE_RQ, command.message_id, true)
    );
    assert_eq!(
        (sub.affected_sop_class_uid, sub.affected_sop_instance_uid),
        (
            command.affected_sop_class_uid,
            command.affected_sop_instance_uid
        )
    );
}

/// Target `manifest`: a manifest record's payload. What decodes re-encodes to bytes that
/// decode to the same manifest, and every frame it names lies in its blob list.
pub fn manifest(data: &[u8]) {
    let Ok(manifest) = Manifest::decode(data) else {
        return;
    };
    assert_eq!(Manifest::decode(&manifest.encode()).as_ref(), Ok(&manifest));
    for segment in &manifest.segments {
        if let SegmentKind::Frame(index) = segment.kind {
            assert!(manifest.frame_blobs(index).is_some());
        }
    }
    assert!(manifest.frame_count() as usize <= manifest.segments.len());
}

/// Follows the record headers that start where the previous record ends, as `pack::walk`
/// does, recomputing both their checksums (so that the fuzzer's changes to lengths and kinds
/// get past the CRCs).
fn seal_records(image: &mut [u8]) {
    let header_len = RECORD_HEADER_LEN as usize;
    let mut at = PACK_HEADER_LEN as usize;
    while image.len() >= at + header_len && &image[at..at + 4] == RECORD_MAGIC {
        let stored = u64::from_le_bytes(image[at + 16..at + 24].try_into().expect("8 bytes"));
        let end = usize::try_from(stored)
            .ok()
            .and_then(|s| (at + header_len).checked_add(s))
            .filter(|&end| end <= image.len());
        if let Some(end) = end {
            let crc = crc32fast::hash(&image[at + header_len..end]);
            image[at + 60..at + 64].copy_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32fast::hash(&image[at..at + 56]);
        image[at + 56..at + 60].copy_from_slice(&crc.to_le_bytes());
        match end {
            Some(end) => at = end,
            None => break,
        }
    }
}

/// Target `pack`: a pack image (its 16-byte header included), written to `scratch` (a
/// caller's temporary file) and walked; with the first record header's reserved byte 6 odd
/// the image's checksums are recomputed first. A record header that decodes encodes back to
/// itself; every record the walk returns is whole, in order, and its header is the one at its
/// offset; each one's payload is read and decoded.
pub fn pack(data: &[u8], scratch: &File) {
    let mut image = data.to_vec();
    let seal = image
        .get(PACK_HEADER_LEN as usize + 6)
        .is_some_and(|b| b & 1 != 0);
    if seal {
        seal_records(&mut image);
    }
    if let Ok(header) = RecordHeader::decode(image.get(PACK_HEADER_LEN as usize..).unwrap_or(&[])) {
        assert_eq!(RecordHeader::decode(&header.encode()), Ok(header));
    }
    scratch.set_len(0).expect("truncating the scratch file");
    scratch
        .write_all_at(&image, 0)
        .expect("writing the scratch file");
    let _ = pack::check_pack_header(scratch);
    let end = image.len() as u64;
    let plain = pack::walk(scratch, PACK_HEADER_LEN, end, false).expect("walking");
    let checked = pack::walk(scratch, PACK_HEADER_LEN, end, true).expect("walking");
    // Every byte after the pack header is in one record, one damaged stretch or the torn
    // tail, in order: damage never ends a walk, nothing is skipped or counted twice.
    let mut pieces: Vec<(u64, u64)> = plain
        .found
        .iter()
        .map(|f| (f.offset, f.header.record_len()))
        .chain(
            plain
                .damaged
                .iter()
                .chain(&plain.torn)
                .map(|d| (d.offset, d.len)),
        )
        .collect();
    pieces.sort_unstable();
    let mut next = PACK_HEADER_LEN;
    for (offset, len) in pieces {
        assert_eq!(offset, next, "pieces follow each other");
        next = offset + len;
    }
    assert_eq!(
        next.max(end),
        end.max(PACK_HEADER_LEN),
        "the walk covers the pack"
    );
    assert_eq!(
        plain.end,
        plain.torn.as_ref().map_or(end, |t| t.offset),
        "the valid part ends where the torn tail starts"
    );
    for record in &plain.found {
        let at = record.offset as usize;
        assert_eq!(
            RecordHeader::decode(&image[at..at + RECORD_HEADER_LEN as usize]),
            Ok(record.header)
        );
        assert!(record.offset + record.header.record_len() <= end);
        if let Ok(stored) = pack::read_payload(scratch, record.offset, &record.header) {
            let _ = pack::decode_payload(&record.header, stored);
        }
    }
    // Checking payloads moves records whose payload fails to the damaged, nothing else.
    let mut checked_records: Vec<u64> = checked
        .found
        .iter()
        .map(|f| f.offset)
        .chain(
            checked
                .damaged
                .iter()
                .filter(|d| d.header.is_some())
                .map(|d| d.offset),
        )
        .collect();
    checked_records.sort_unstable();
    let plain_records: Vec<u64> = plain.found.iter().map(|f| f.offset).collect();
    assert_eq!(checked_records, plain_records);
    assert_eq!(checked.torn.map(|t| t.offset), plain.torn.map(|t| t.offset));
}
