//! DICOM Upper Layer PDUs (PS3.8 9.3): parsing A-ASSOCIATE-RQ and P-DATA-TF, encoding the
//! acceptor's replies. Lengths read from the wire are checked against the bytes at hand and
//! never used to size an allocation.

use std::fmt;

pub const A_ASSOCIATE_RQ: u8 = 0x01;
pub const A_ASSOCIATE_AC: u8 = 0x02;
pub const A_ASSOCIATE_RJ: u8 = 0x03;
pub const P_DATA_TF: u8 = 0x04;
pub const A_RELEASE_RQ: u8 = 0x05;
pub const A_RELEASE_RP: u8 = 0x06;
pub const A_ABORT: u8 = 0x07;

pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";

/// Presentation context results (PS3.8 9.3.3.2).
pub const ACCEPTANCE: u8 = 0;
pub const ABSTRACT_SYNTAX_NOT_SUPPORTED: u8 = 3;
pub const TRANSFER_SYNTAXES_NOT_SUPPORTED: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PduError(pub String);

impl fmt::Display for PduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed PDU: {}", self.0)
    }
}

impl std::error::Error for PduError {}

fn err<T>(message: impl Into<String>) -> Result<T, PduError> {
    Err(PduError(message.into()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposedContext {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntaxes: Vec<String>,
}

/// What an association requestor proposes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssociateRq {
    pub called_ae: String,
    pub calling_ae: String,
    /// The 64 bytes from called AE to the end of the reserved field, echoed in the reply.
    pub echo: Vec<u8>,
    pub contexts: Vec<ProposedContext>,
    /// The largest P-DATA-TF the requestor accepts (0: no limit).
    pub max_pdu: u32,
    pub implementation_class_uid: String,
    pub implementation_version_name: String,
    /// SCP/SCU Role Selection proposals (PS3.7 D.3.3.4): SOP class, SCU role, SCP role.
    pub roles: Vec<RoleSelection>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSelection {
    pub sop_class_uid: String,
    pub scu: bool,
    pub scp: bool,
}

impl RoleSelection {
    fn parse(value: &[u8]) -> Option<RoleSelection> {
        let length = usize::from(u16::from_be_bytes([*value.first()?, *value.get(1)?]));
        let uid = value.get(2..2 + length)?;
        Some(RoleSelection {
            sop_class_uid: uid_text(uid)?,
            scu: *value.get(2 + length)? == 1,
            scp: *value.get(3 + length)? == 1,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut value = (self.sop_class_uid.len() as u16).to_be_bytes().to_vec();
        value.extend_from_slice(self.sop_class_uid.as_bytes());
        value.extend_from_slice(&[u8::from(self.scu), u8::from(self.scp)]);
        item(0x54, &value)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_string()
}

/// The longest a UID can be (PS3.5 9.1).
const MAX_UID: usize = 64;

/// A UID the reply may echo, or None when it is longer than a UID can be: the reply's items
/// have 16-bit lengths, and a long value (three times longer once its invalid UTF-8 is
/// replaced) overflowed them (found with the `associate` fuzz target).
fn uid_text(bytes: &[u8]) -> Option<String> {
    Some(text(bytes)).filter(|uid| uid.len() <= MAX_UID)
}

/// Splits variable items: (type, body).
fn items(mut data: &[u8]) -> Result<Vec<(u8, &[u8])>, PduError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 4 {
            return err("item header cut short");
        }
        let kind = data[0];
        let length = usize::from(u16::from_be_bytes([data[2], data[3]]));
        if data.len() < 4 + length {
            return err(format!(
                "item 0x{kind:02X} of {length} bytes runs past its PDU"
            ));
        }
        out.push((kind, &data[4..4 + length]));
        data = &data[4 + length..];
    }
    Ok(out)
}

/// Parses the body (after the 6-byte header) of an A-ASSOCIATE-RQ.
pub fn parse_associate_rq(body: &[u8]) -> Result<AssociateRq, PduError> {
    if body.len() < 68 {
        return err("A-ASSOCIATE-RQ shorter than its fixed fields");
    }
    let mut rq = AssociateRq {
        called_ae: text(&body[4..20]),
        calling_ae: text(&body[20..36]),
        echo: body[4..68].to_vec(),
        ..AssociateRq::default()
    };
    for (kind, item) in items(&body[68..])? {
        match kind {
            0x10 if text(item) != APPLICATION_CONTEXT => {
                return err(format!("unknown application context {:?}", text(item)));
            }
            0x20 => {
                if item.len() < 4 {
                    return err("presentation context item cut short");
                }
                let mut context = ProposedContext {
                    id: item[0],
                    abstract_syntax: String::new(),
                    transfer_syntaxes: Vec::new(),
                };
                for (sub, value) in items(&item[4..])? {
                    match sub {
                        0x30 => context.abstract_syntax = text(value),
                        // One longer than a UID is none we support, and is not echoed.
                        0x40 => context.transfer_syntaxes.extend(uid_text(value)),
                        _ => {}
                    }
                }
                rq.contexts.push(context);
            }
            0x50 => {
                for (sub, value) in items(item)? {
                    match sub {
                        0x51 if value.len() == 4 => {
                            rq.max_pdu =
                                u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                        }
                        0x52 => rq.implementation_class_uid = text(value),
                        0x55 => rq.implementation_version_name = text(value),
                        0x54 => rq.roles.extend(RoleSelection::parse(value)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(rq)
}

fn item(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&[kind, 0]);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn pdu(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + body.len());
    out.extend_from_slice(&[kind, 0]);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The acceptor's decision on one proposed context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextResult {
    pub id: u8,
    pub result: u8,
    /// The accepted transfer syntax (ignored unless accepted).
    pub transfer_syntax: String,
}

pub fn encode_associate_ac(
    rq: &AssociateRq,
    results: &[ContextResult],
    roles: &[RoleSelection],
    max_pdu: u32,
    implementation_class_uid: &str,
    implementation_version_name: &str,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(512);
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(&rq.echo);
    body.extend_from_slice(&item(0x10, APPLICATION_CONTEXT.as_bytes()));
    for r in results {
        let mut context = vec![r.id, 0, r.result, 0];
        // The transfer syntax sub-item is sent in every case; it is significant only when
        // the context is accepted (PS3.8 9.3.3.2).
        context.extend_from_slice(&item(0x40, r.transfer_syntax.as_bytes()));
        body.extend_from_slice(&item(0x21, &context));
    }
    let mut user = item(0x51, &max_pdu.to_be_bytes());
    user.extend_from_slice(&item(0x52, implementation_class_uid.as_bytes()));
    let version = item(0x55, implementation_version_name.as_bytes());
    for role in roles {
        // The user information item's length is 16-bit: the replies to proposals that do not
        // fit (hostile ones: a peer needs a few) are left out, which means the default roles
        // (PS3.7 D.3.3.4).
        let reply = role.encode();
        if user.len() + reply.len() + version.len() > usize::from(u16::MAX) {
            break;
        }
        user.extend_from_slice(&reply);
    }
    user.extend_from_slice(&version);
    body.extend_from_slice(&item(0x50, &user));
    pdu(A_ASSOCIATE_AC, &body)
}

/// Whether an A-ASSOCIATE-RJ is for good or worth retrying (PS3.8 Table 9-21, Result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectResult {
    Permanent = 1,
    Transient = 2,
}

/// Why an association is rejected: each reason belongs to one source (PS3.8 Table 9-21,
/// Source and Reason/Diag.).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Source 1, DICOM UL service-user.
    NoReasonGiven,
    ApplicationContextNotSupported,
    CallingAeNotRecognized,
    CalledAeNotRecognized,
    /// Source 3, DICOM UL service-provider (presentation related function).
    TemporaryCongestion,
    LocalLimitExceeded,
}

impl RejectReason {
    /// Every reason, in PS3.8 Table 9-21's order.
    pub const ALL: [RejectReason; 6] = [
        RejectReason::NoReasonGiven,
        RejectReason::ApplicationContextNotSupported,
        RejectReason::CallingAeNotRecognized,
        RejectReason::CalledAeNotRecognized,
        RejectReason::TemporaryCongestion,
        RejectReason::LocalLimitExceeded,
    ];

    /// (source, reason) as sent.
    pub fn code(self) -> (u8, u8) {
        match self {
            RejectReason::NoReasonGiven => (1, 1),
            RejectReason::ApplicationContextNotSupported => (1, 2),
            RejectReason::CallingAeNotRecognized => (1, 3),
            RejectReason::CalledAeNotRecognized => (1, 7),
            RejectReason::TemporaryCongestion => (3, 1),
            RejectReason::LocalLimitExceeded => (3, 2),
        }
    }

    /// The reason a peer's (source, reason) names, if it is one of these.
    pub fn from_code(source: u8, reason: u8) -> Option<RejectReason> {
        Self::ALL.into_iter().find(|r| r.code() == (source, reason))
    }

    /// In words, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            RejectReason::NoReasonGiven => "no reason given",
            RejectReason::ApplicationContextNotSupported => "application context not supported",
            RejectReason::CallingAeNotRecognized => "calling AE title (ours) not recognised",
            RejectReason::CalledAeNotRecognized => "called AE title (its) not recognised",
            RejectReason::TemporaryCongestion => "temporary congestion",
            RejectReason::LocalLimitExceeded => "local limit exceeded",
        }
    }
}

pub fn encode_associate_rj(result: RejectResult, reason: RejectReason) -> Vec<u8> {
    let (source, reason) = reason.code();
    pdu(A_ASSOCIATE_RJ, &[0, result as u8, source, reason])
}

pub fn encode_release_rp() -> Vec<u8> {
    pdu(A_RELEASE_RP, &[0, 0, 0, 0])
}

/// Why the service provider aborts an association (PS3.8 Table 9-26, source 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AbortReason {
    NotSpecified = 0,
    UnrecognizedPdu = 1,
    UnexpectedPdu = 2,
    UnrecognizedPduParameter = 4,
    UnexpectedPduParameter = 5,
    InvalidPduParameterValue = 6,
}

impl AbortReason {
    /// The reason for a PDU of type `kind` arriving where it may not: a type PS3.8 9.3.1
    /// does not define is unrecognised, a defined one unexpected.
    pub fn for_pdu(kind: u8) -> AbortReason {
        if (A_ASSOCIATE_RQ..=A_ABORT).contains(&kind) {
            AbortReason::UnexpectedPdu
        } else {
            AbortReason::UnrecognizedPdu
        }
    }
}

/// A-ABORT from the service provider (source 2).
pub fn encode_abort(reason: AbortReason) -> Vec<u8> {
    pdu(A_ABORT, &[0, 0, 2, reason as u8])
}

/// One presentation data value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pdv<'a> {
    pub context_id: u8,
    pub command: bool,
    pub last: bool,
    pub data: &'a [u8],
}

/// The PDVs of a P-DATA-TF body.
pub fn parse_pdvs(mut body: &[u8]) -> Result<Vec<Pdv<'_>>, PduError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 6 {
            return err("PDV item header cut short");
        }
        let length = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
        if length < 2 || body.len() - 4 < length {
            return err(format!(
                "PDV item of {length} bytes in {} left",
                body.len() - 4
            ));
        }
        let header = body[5];
        out.push(Pdv {
            context_id: body[4],
            command: header & 1 != 0,
            last: header & 2 != 0,
            data: &body[6..4 + length],
        });
        body = &body[4 + length..];
    }
    Ok(out)
}

/// Fragments one message (a command, or a data set) arriving in pieces of any size into P-DATA-TF PDUs of at most
/// `max_pdu` (the peer's limit; 0 is none), the last PDV flagged as such; PDUs are gathered
/// into large writes.
pub struct PdvWriter {
    context_id: u8,
    command: bool,
    room: usize,
    pending: Vec<u8>,
    out: Vec<u8>,
}

const GATHER: usize = 256 << 10;

impl PdvWriter {
    pub fn new(context_id: u8, command: bool, max_pdu: u32) -> PdvWriter {
        let room = if max_pdu == 0 {
            GATHER
        } else {
            (max_pdu as usize).saturating_sub(6).clamp(1, GATHER)
        };
        PdvWriter {
            context_id,
            command,
            room,
            pending: Vec::with_capacity(room),
            out: Vec::with_capacity(GATHER + room + 12),
        }
    }

    /// Bytes to go out ahead of this message, in the same write (earlier PDUs).
    pub fn after(&mut self, earlier: &[u8]) {
        self.out.extend_from_slice(earlier);
    }

    fn emit(&mut self, last: bool) {
        let length = self.pending.len();
        self.out.extend_from_slice(&[P_DATA_TF, 0]);
        self.out
            .extend_from_slice(&((length + 6) as u32).to_be_bytes());
        self.out
            .extend_from_slice(&((length + 2) as u32).to_be_bytes());
        let header = u8::from(self.command) | (u8::from(last) << 1);
        self.out.extend_from_slice(&[self.context_id, header]);
        self.out.extend_from_slice(&self.pending);
        self.pending.clear();
    }

    pub fn write(
        &mut self,
        mut data: &[u8],
        sink: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        while !data.is_empty() {
            // A full PDU is sent only once more data follows: the last one must be flagged.
            if self.pending.len() == self.room {
                self.emit(false);
                if self.out.len() >= GATHER {
                    sink.write_all(&self.out)?;
                    self.out.clear();
                }
            }
            let take = (self.room - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(())
    }

    pub fn finish(mut self, sink: &mut impl std::io::Write) -> std::io::Result<()> {
        self.emit(true);
        sink.write_all(&self.out)
    }
}

/// P-DATA-TF PDUs carrying `data` as one message (command or data set), fragmented so that
/// no PDU exceeds `max_pdu` (the peer's limit; 0 is none).
pub fn encode_message(context_id: u8, command: bool, data: &[u8], max_pdu: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 12);
    let mut writer = PdvWriter::new(context_id, command, max_pdu);
    let written = writer
        .write(data, &mut out)
        .and_then(|()| writer.finish(&mut out));
    written.expect("writing to a Vec cannot fail");
    out
}

// The requestor's side (the SCU's associations) ------------------------------------------

/// A-ASSOCIATE-RQ proposing `contexts` (and SCP/SCU roles) from `calling_ae` to `called_ae`;
/// `max_pdu` is the largest P-DATA-TF we accept.
pub fn encode_associate_rq(
    called_ae: &str,
    calling_ae: &str,
    contexts: &[ProposedContext],
    roles: &[RoleSelection],
    max_pdu: u32,
    implementation_class_uid: &str,
    implementation_version_name: &str,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(1024);
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&[0, 0]);
    for ae in [called_ae, calling_ae] {
        let mut field = [b' '; 16];
        let ae = &ae.as_bytes()[..ae.len().min(16)];
        field[..ae.len()].copy_from_slice(ae);
        body.extend_from_slice(&field);
    }
    body.extend_from_slice(&[0; 32]);
    body.extend_from_slice(&item(0x10, APPLICATION_CONTEXT.as_bytes()));
    for context in contexts {
        let mut value = vec![context.id, 0, 0, 0];
        value.extend_from_slice(&item(0x30, context.abstract_syntax.as_bytes()));
        for ts in &context.transfer_syntaxes {
            value.extend_from_slice(&item(0x40, ts.as_bytes()));
        }
        body.extend_from_slice(&item(0x20, &value));
    }
    let mut user = item(0x51, &max_pdu.to_be_bytes());
    user.extend_from_slice(&item(0x52, implementation_class_uid.as_bytes()));
    for role in roles {
        user.extend_from_slice(&role.encode());
    }
    user.extend_from_slice(&item(0x55, implementation_version_name.as_bytes()));
    body.extend_from_slice(&item(0x50, &user));
    pdu(A_ASSOCIATE_RQ, &body)
}

/// What an acceptor answered to our A-ASSOCIATE-RQ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssociateAc {
    /// Every context's result (accepted ones with their transfer syntax).
    pub contexts: Vec<ContextResult>,
    /// The largest P-DATA-TF the acceptor takes (0: no limit).
    pub max_pdu: u32,
    /// The roles it agreed to.
    pub roles: Vec<RoleSelection>,
}

/// Parses the body (after the 6-byte header) of an A-ASSOCIATE-AC.
pub fn parse_associate_ac(body: &[u8]) -> Result<AssociateAc, PduError> {
    if body.len() < 68 {
        return err("A-ASSOCIATE-AC shorter than its fixed fields");
    }
    let mut ac = AssociateAc::default();
    for (kind, value) in items(&body[68..])? {
        match kind {
            0x21 => {
                if value.len() < 4 {
                    return err("presentation context item cut short");
                }
                let mut result = ContextResult {
                    id: value[0],
                    result: value[2],
                    transfer_syntax: String::new(),
                };
                for (sub, ts) in items(&value[4..])? {
                    if sub == 0x40 {
                        result.transfer_syntax = text(ts);
                    }
                }
                ac.contexts.push(result);
            }
            0x50 => {
                for (sub, value) in items(value)? {
                    match sub {
                        0x51 if value.len() == 4 => {
                            ac.max_pdu =
                                u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                        }
                        0x54 => ac.roles.extend(RoleSelection::parse(value)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(ac)
}

/// An A-ASSOCIATE-RJ's (result, source, reason) as sent (PS3.8 Table 9-21).
pub fn parse_associate_rj(body: &[u8]) -> Result<(u8, u8, u8), PduError> {
    match body {
        [_, result, source, reason, ..] => Ok((*result, *source, *reason)),
        _ => err("A-ASSOCIATE-RJ cut short"),
    }
}

pub fn encode_release_rq() -> Vec<u8> {
    pdu(A_RELEASE_RQ, &[0, 0, 0, 0])
}

/// A-ABORT from the service user (source 0): the requestor gives up on the association.
pub fn encode_user_abort() -> Vec<u8> {
    pdu(A_ABORT, &[0, 0, 0, 0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rq_bytes() -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&[0, 1, 0, 0]);
        body.extend_from_slice(b"DICOMVAULT      STORESCU        ");
        body.extend_from_slice(&[0; 32]);
        body.extend_from_slice(&item(0x10, APPLICATION_CONTEXT.as_bytes()));
        let mut pc = vec![1, 0, 0, 0];
        pc.extend_from_slice(&item(0x30, b"1.2.840.10008.5.1.4.1.1.2"));
        pc.extend_from_slice(&item(0x40, b"1.2.840.10008.1.2.1"));
        pc.extend_from_slice(&item(0x40, b"1.2.840.10008.1.2\0"));
        body.extend_from_slice(&item(0x20, &pc));
        let mut user = item(0x51, &16384u32.to_be_bytes());
        user.extend_from_slice(&item(0x52, b"1.2.3"));
        body.extend_from_slice(&item(0x50, &user));
        body
    }

    #[test]
    fn associate_rq_round_trip() {
        let rq = parse_associate_rq(&rq_bytes()).unwrap();
        assert_eq!(rq.called_ae, "DICOMVAULT");
        assert_eq!(rq.calling_ae, "STORESCU");
        assert_eq!(rq.max_pdu, 16384);
        assert_eq!(
            rq.contexts[0].transfer_syntaxes,
            vec!["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
        );
        let ac = encode_associate_ac(
            &rq,
            &[ContextResult {
                id: 1,
                result: ACCEPTANCE,
                transfer_syntax: "1.2.840.10008.1.2.1".into(),
            }],
            &[RoleSelection {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                scu: false,
                scp: true,
            }],
            1 << 20,
            "1.2.3.4",
            "TEST",
        );
        assert_eq!(ac[0], A_ASSOCIATE_AC);
        assert_eq!(
            u32::from_be_bytes(ac[2..6].try_into().unwrap()) as usize,
            ac.len() - 6
        );
        let body = rq_bytes();
        for cut in 0..body.len() {
            let _ = parse_associate_rq(&body[..cut]); // never panics
        }
    }

    #[test]
    fn messages_fragment_and_parse_back() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let wire = encode_message(3, false, &data, 256);
        let mut joined = Vec::new();
        let mut at = 0;
        let mut lasts = 0;
        while at < wire.len() {
            let length = u32::from_be_bytes(wire[at + 2..at + 6].try_into().unwrap()) as usize;
            assert!(
                length <= 256,
                "PDU variable field within the maximum length"
            );
            for pdv in parse_pdvs(&wire[at + 6..at + 6 + length]).unwrap() {
                assert_eq!((pdv.context_id, pdv.command), (3, false));
                lasts += usize::from(pdv.last);
                joined.extend_from_slice(pdv.data);
            }
            at += 6 + length;
        }
        assert_eq!((joined, lasts), (data, 1));
        assert!(parse_pdvs(&[0, 0, 0, 9, 1, 0]).is_err());
    }

    #[test]
    fn streamed_data_set_matches_one_shot_fragmenting() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        for piece in [1, 7, 250, 251, 4999, 5000] {
            let mut writer = PdvWriter::new(5, false, 256);
            let mut wire = Vec::new();
            for chunk in data.chunks(piece) {
                writer.write(chunk, &mut wire).unwrap();
            }
            writer.finish(&mut wire).unwrap();
            assert_eq!(
                wire,
                encode_message(5, false, &data, 256),
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn role_selection_round_trips() {
        let role = RoleSelection {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            scu: false,
            scp: true,
        };
        let encoded = role.encode();
        assert_eq!(encoded[0], 0x54);
        assert_eq!(RoleSelection::parse(&encoded[4..]), Some(role));
        assert_eq!(RoleSelection::parse(&encoded[4..10]), None);
    }

    #[test]
    fn requestor_rq_parses_as_the_acceptor_reads_it_and_ac_round_trips() {
        let contexts = [ProposedContext {
            id: 3,
            abstract_syntax: "1.2.840.10008.5.1.4.1.2.2.3".into(),
            transfer_syntaxes: vec!["1.2.840.10008.1.2.1".into(), "1.2.840.10008.1.2".into()],
        }];
        let roles = [RoleSelection {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            scu: false,
            scp: true,
        }];
        let wire = encode_associate_rq(
            "ORTHANC",
            "DICOMVAULT",
            &contexts,
            &roles,
            1 << 20,
            "1.2.3",
            "V1",
        );
        assert_eq!(wire[0], A_ASSOCIATE_RQ);
        let rq = parse_associate_rq(&wire[6..]).unwrap();
        assert_eq!(
            (rq.called_ae.as_str(), rq.calling_ae.as_str()),
            ("ORTHANC", "DICOMVAULT")
        );
        assert_eq!(rq.contexts, contexts.to_vec());
        assert_eq!(rq.roles, roles.to_vec());
        assert_eq!(rq.max_pdu, 1 << 20);
        let results = [ContextResult {
            id: 3,
            result: ACCEPTANCE,
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
        }];
        let ac = encode_associate_ac(&rq, &results, &roles, 16384, "1.2.3.4", "X");
        let parsed = parse_associate_ac(&ac[6..]).unwrap();
        assert_eq!(parsed.contexts, results.to_vec());
        assert_eq!((parsed.max_pdu, parsed.roles), (16384, roles.to_vec()));
        for cut in 0..ac.len() - 6 {
            let _ = parse_associate_ac(&ac[6..6 + cut]); // never panics
        }
        assert_eq!(parse_associate_rj(&[0, 1, 1, 7]), Ok((1, 1, 7)));
    }
}
