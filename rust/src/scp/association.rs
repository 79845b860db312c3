//! One association: negotiation, PDUs within their deadlines, the DIMSE request loop, and
//! the services answered here (C-ECHO, C-STORE through the receive path, Storage Commitment).

use super::listener::{Shared, Slot};
use super::*;
use crate::cas::InstanceWriter;
use crate::dimse::{self, Command};
use crate::pdu::{
    self, AbortReason, AssociateRq, ContextResult, RejectReason, RejectResult, RoleSelection,
};
use crate::receive::{Refused, Sender};
use crate::scan::FeedError;
use crate::transport::Channel;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

/// The first of `ours` (in our order of preference) that the peer proposed.
pub(super) fn first_in<'a>(ours: &'a [String], proposed: &[String]) -> Option<&'a String> {
    ours.iter().find(|ts| proposed.contains(ts))
}

/// How the first PDU went: an A-ASSOCIATE-RQ's body, or why the connection ends.
pub(super) enum Opening {
    Request(Vec<u8>),
    /// Something else arrived: aborted (PS3.8 9.2, state Sta2) and logged.
    Abort(AbortReason, String),
    /// Closed, or silent past the deadline: nothing to answer.
    Gone(io::Error),
}

/// Reads the first PDU, within the deadline already set on the stream's socket.
pub(super) fn read_associate_rq(stream: &mut impl Channel) -> Opening {
    let mut header = [0u8; 6];
    if let Err(e) = stream.read_exact(&mut header) {
        return Opening::Gone(e);
    }
    let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    if header[0] != pdu::A_ASSOCIATE_RQ {
        let reason = AbortReason::for_pdu(header[0]);
        return Opening::Abort(
            reason,
            format!(
                "a PDU of type 0x{:02X} before any A-ASSOCIATE-RQ",
                header[0]
            ),
        );
    }
    if length > MAX_ASSOCIATE_RQ {
        return Opening::Abort(
            AbortReason::InvalidPduParameterValue,
            format!("an A-ASSOCIATE-RQ of {length} bytes (at most {MAX_ASSOCIATE_RQ})"),
        );
    }
    let mut body = vec![0u8; length];
    match stream.read_exact(&mut body) {
        Ok(()) => Opening::Request(body),
        Err(e) => Opening::Gone(e),
    }
}

pub(super) fn associate<S: Channel>(shared: &Shared, mut stream: S, peer: SocketAddr) {
    let request = match read_associate_rq(&mut stream) {
        Opening::Request(body) => body,
        Opening::Abort(reason, why) => {
            let _ = stream.write_all(&pdu::encode_abort(reason));
            shared.log(
                LogLevel::Warning,
                format!("connection from {peer} aborted: {why}"),
            );
            return;
        }
        Opening::Gone(e) => {
            // A connection closed before a byte (a port probe) is not worth a line.
            if e.kind() == io::ErrorKind::TimedOut {
                shared.log(
                    LogLevel::Warning,
                    format!(
                        "connection from {peer} dropped: no A-ASSOCIATE-RQ within the \
                         association timeout ({:.0} s)",
                        shared.config.association_timeout.as_secs_f64()
                    ),
                );
            }
            return;
        }
    };
    let rq = match pdu::parse_associate_rq(&request) {
        Ok(rq) => rq,
        Err(e) => {
            let _ = stream.write_all(&pdu::encode_abort(AbortReason::InvalidPduParameterValue));
            shared.log(
                LogLevel::Warning,
                format!("association from {peer} aborted: {e}"),
            );
            return;
        }
    };
    Association {
        shared,
        stream,
        peer,
        rq,
        contexts: HashMap::new(),
        sendable: HashSet::new(),
        started: Instant::now(),
        requests: 0,
        cancelled: false,
    }
    .run();
}

pub(super) struct Association<'a, S: Channel> {
    pub(super) shared: &'a Shared,
    pub(super) stream: S,
    pub(super) peer: SocketAddr,
    pub(super) rq: AssociateRq,
    /// Accepted contexts: id -> (abstract syntax, transfer syntax).
    pub(super) contexts: HashMap<u8, (String, String)>,
    /// Storage SOP classes the requestor takes the SCP role for: C-GET may send them.
    pub(super) sendable: HashSet<String>,
    pub(super) started: Instant,
    pub(super) requests: u64,
    /// A C-CANCEL-RQ arrived during the current C-GET.
    pub(super) cancelled: bool,
}

/// A request whose data set is arriving.
pub(super) enum Incoming {
    Store(Box<IncomingStore>),
    /// A C-FIND, C-GET, C-MOVE or N-ACTION (boxed: the variants stay small).
    Query {
        command: Box<Command>,
        context_id: u8,
        identifier: Vec<u8>,
        started: Instant,
    },
}

/// A C-STORE whose data set is arriving.
pub(super) struct IncomingStore {
    pub(super) command: Command,
    pub(super) context_id: u8,
    pub(super) writer: Option<InstanceWriter>,
    /// Set when the data set is refused or failed: it is still read to its end.
    pub(super) status: Option<u16>,
    /// Data set bytes received so far.
    pub(super) received: u64,
    pub(super) started: Instant,
}

pub(super) enum Flow {
    Continue,
    Done(&'static str),
}

impl<'a, S: Channel> Association<'a, S> {
    pub(super) fn who(&self) -> String {
        format!("{}@{}", self.rq.calling_ae, self.peer.ip())
    }

    pub(super) fn log(&self, level: LogLevel, message: String) {
        self.shared.log(level, message);
    }

    pub(super) fn run(mut self) {
        let Some(_slot) = self.negotiate() else {
            return;
        };
        let how = match self.serve() {
            Ok(how) => how,
            Err(e) => {
                let _ = self
                    .stream
                    .write_all(&pdu::encode_abort(AbortReason::NotSpecified));
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut {
                    "aborted (peer silent past the DIMSE timeout)".to_string()
                } else {
                    format!("aborted ({e})")
                }
            }
        };
        self.log(
            LogLevel::Info,
            format!(
                "association from {} {how} after {:.3} s, {} requests",
                self.who(),
                self.started.elapsed().as_secs_f64(),
                self.requests
            ),
        );
    }

    /// Accepts or rejects the association; its slot within the limits while it lasts.
    pub(super) fn negotiate(&mut self) -> Option<Slot<'a>> {
        let shared = self.shared;
        let config = &shared.config;
        let slot = if self.rq.contexts.is_empty() {
            // PS3.8 9.3.2: a request proposes one or more presentation contexts.
            Err((
                RejectResult::Permanent,
                RejectReason::NoReasonGiven,
                "no presentation context proposed".to_string(),
            ))
        } else if config.policy.check_called_aet && self.rq.called_ae != config.policy.ae_title {
            Err((
                RejectResult::Permanent,
                RejectReason::CalledAeNotRecognized,
                "called AE title not recognised".to_string(),
            ))
        } else {
            // PS3.8 9.3.4: transient, service provider (presentation), local limit exceeded.
            shared.slot(&self.rq.calling_ae).map_err(|limit| {
                (
                    RejectResult::Transient,
                    RejectReason::LocalLimitExceeded,
                    format!("local limit exceeded ({limit})"),
                )
            })
        };
        let slot = match slot {
            Ok(slot) => slot,
            Err((result, reason, why)) => {
                let _ = self
                    .stream
                    .write_all(&pdu::encode_associate_rj(result, reason));
                self.log(
                    LogLevel::Warning,
                    format!("association from {} rejected: {why}", self.who()),
                );
                return None;
            }
        };
        // The requestor may act as SCP for storage SOP classes (C-GET sends them back) and
        // Storage Commitment (it reports); the roles it proposes for anything else are
        // declined.
        let roles: Vec<RoleSelection> = self
            .rq
            .roles
            .iter()
            .map(|r| RoleSelection {
                sop_class_uid: r.sop_class_uid.clone(),
                scu: r.scu,
                // A Storage Commitment SCP reporting on a new association takes the SCP role.
                scp: r.scp
                    && (config.is_storage(&r.sop_class_uid)
                        || r.sop_class_uid == STORAGE_COMMITMENT),
            })
            .collect();
        self.sendable = roles
            .iter()
            .filter(|r| r.scp && config.is_storage(&r.sop_class_uid))
            .map(|r| r.sop_class_uid.clone())
            .collect();
        let mut results = Vec::with_capacity(self.rq.contexts.len());
        let identifier_syntaxes = [EXPLICIT_VR_LE.to_string(), IMPLICIT_VR_LE.to_string()];
        for proposed in &self.rq.contexts {
            let chosen = if config.is_query(&proposed.abstract_syntax) {
                // Identifiers are read in the uncompressed little endian syntaxes only.
                first_in(&identifier_syntaxes, &proposed.transfer_syntaxes)
            } else if self.sendable.contains(&proposed.abstract_syntax) {
                // What C-GET sends back: the requestor's order decides (its first syntax the
                // archive knows; the host makes each instance in it, or sends it as stored).
                proposed
                    .transfer_syntaxes
                    .iter()
                    .find(|ts| config.transfer_syntaxes.contains(ts))
            } else {
                first_in(&config.transfer_syntaxes, &proposed.transfer_syntaxes)
            };
            let result = match chosen {
                _ if !config.serves_class(&proposed.abstract_syntax) => ContextResult {
                    id: proposed.id,
                    result: pdu::ABSTRACT_SYNTAX_NOT_SUPPORTED,
                    transfer_syntax: proposed
                        .transfer_syntaxes
                        .first()
                        .cloned()
                        .unwrap_or_default(),
                },
                Some(ts) => {
                    self.contexts
                        .insert(proposed.id, (proposed.abstract_syntax.clone(), ts.clone()));
                    ContextResult {
                        id: proposed.id,
                        result: pdu::ACCEPTANCE,
                        transfer_syntax: ts.clone(),
                    }
                }
                None => ContextResult {
                    id: proposed.id,
                    result: pdu::TRANSFER_SYNTAXES_NOT_SUPPORTED,
                    transfer_syntax: proposed
                        .transfer_syntaxes
                        .first()
                        .cloned()
                        .unwrap_or_default(),
                },
            };
            results.push(result);
        }
        let implementation = &config.implementation;
        let ac = pdu::encode_associate_ac(
            &self.rq,
            &results,
            &roles,
            config.max_pdu,
            &implementation.class_uid,
            &implementation.version_name,
        );
        if self.stream.write_all(&ac).is_err() {
            return None;
        }
        self.log(
            LogLevel::Info,
            format!("association from {} accepted", self.who()),
        );
        Some(slot)
    }

    pub(super) fn send(&mut self, context_id: u8, command: &[u8]) -> io::Result<()> {
        self.stream
            .write_all(&self.message(context_id, true, command))
    }

    /// A command or data set as the P-DATA-TF PDUs the peer's maximum length allows.
    pub(super) fn message(&self, context_id: u8, command: bool, data: &[u8]) -> Vec<u8> {
        pdu::encode_message(context_id, command, data, self.rq.max_pdu)
    }

    /// Reads one PDU into `body`, whole within the DIMSE timeout; its type, or None when it
    /// exceeds what we negotiated.
    pub(super) fn read_pdu(&mut self, body: &mut Vec<u8>) -> io::Result<Option<u8>> {
        let config = &self.shared.config;
        self.stream
            .socket()
            .set_deadline(Some(Instant::now() + config.dimse_timeout));
        let mut header = [0u8; 6];
        self.stream.read_exact(&mut header)?;
        let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        // The maximum length negotiated bounds a P-DATA-TF's variable field (PS3.8 D.1).
        if length > config.max_pdu as usize {
            self.stream
                .write_all(&pdu::encode_abort(AbortReason::InvalidPduParameterValue))?;
            return Ok(None);
        }
        body.resize(length, 0);
        self.stream.read_exact(body)?;
        Ok(Some(header[0]))
    }

    pub(super) fn serve(&mut self) -> io::Result<String> {
        let mut body = Vec::new();
        let mut command = Vec::new();
        let mut incoming: Option<Incoming> = None;
        let invalid = pdu::encode_abort(AbortReason::InvalidPduParameterValue);
        loop {
            let Some(kind) = self.read_pdu(&mut body)? else {
                return Ok(format!(
                    "aborted (PDU larger than the {} bytes negotiated)",
                    self.shared.config.max_pdu
                ));
            };
            match kind {
                pdu::P_DATA_TF => {
                    let pdvs = match pdu::parse_pdvs(&body) {
                        Ok(pdvs) => pdvs,
                        Err(e) => {
                            self.stream.write_all(&invalid)?;
                            return Ok(format!("aborted ({e})"));
                        }
                    };
                    for pdv in pdvs {
                        if !self.contexts.contains_key(&pdv.context_id) {
                            self.stream.write_all(&invalid)?;
                            return Ok(format!(
                                "aborted (PDV on presentation context {}, not accepted)",
                                pdv.context_id
                            ));
                        }
                        let flow = if pdv.command {
                            if command.len() + pdv.data.len() > MAX_COMMAND {
                                self.stream.write_all(&invalid)?;
                                return Ok("aborted (oversized command)".into());
                            }
                            command.extend_from_slice(pdv.data);
                            if !pdv.last {
                                continue;
                            }
                            let flow = self.command(pdv.context_id, &command, &mut incoming)?;
                            command.clear();
                            flow
                        } else {
                            self.data(pdv.data, pdv.last, &mut incoming)?
                        };
                        if let Flow::Done(how) = flow {
                            self.stream
                                .write_all(&pdu::encode_abort(AbortReason::UnexpectedPdu))?;
                            return Ok(how.into());
                        }
                    }
                }
                pdu::A_RELEASE_RQ => {
                    self.stream.write_all(&pdu::encode_release_rp())?;
                    return Ok(match incoming {
                        // Released mid-message: what had arrived of it is dropped.
                        Some(_) => "released with a data set unfinished (dropped)".into(),
                        None if !command.is_empty() => {
                            "released with a command unfinished (dropped)".into()
                        }
                        None => "released".into(),
                    });
                }
                pdu::A_ABORT => return Ok("aborted by the peer".into()),
                _ => {
                    self.stream
                        .write_all(&pdu::encode_abort(AbortReason::for_pdu(kind)))?;
                    return Ok(format!("aborted (unexpected PDU of type 0x{kind:02X})"));
                }
            }
        }
    }

    pub(super) fn command(
        &mut self,
        context_id: u8,
        bytes: &[u8],
        incoming: &mut Option<Incoming>,
    ) -> io::Result<Flow> {
        let Ok(command) = dimse::parse_command(bytes) else {
            return Ok(Flow::Done("aborted (unreadable command)"));
        };
        if incoming.is_some() {
            return Ok(Flow::Done(
                "aborted (command before the previous data set ended)",
            ));
        }
        self.requests += 1;
        let started = Instant::now();
        let policy = &self.shared.config.policy;
        match command.field {
            dimse::C_ECHO_RQ => {
                let allowed = policy.allows(
                    &self.rq.calling_ae,
                    &self.peer.ip().to_string(),
                    Service::Echo,
                );
                let status = if allowed { SUCCESS } else { NOT_AUTHORIZED };
                self.send(context_id, &dimse::response(&command, status))?;
                self.log_request("C-ECHO", started, status, "");
                Ok(Flow::Continue)
            }
            dimse::C_STORE_RQ if command.has_data_set => {
                let allowed = policy.allows(
                    &self.rq.calling_ae,
                    &self.peer.ip().to_string(),
                    Service::Store,
                );
                let context = &self.contexts[&context_id].0;
                let mut next = IncomingStore {
                    command,
                    context_id,
                    writer: None,
                    status: None,
                    received: 0,
                    started,
                };
                let refused = if !allowed {
                    Some((NOT_AUTHORIZED, "not allowed for this AE".to_string()))
                } else if !self.shared.config.is_storage(context)
                    || *context != next.command.affected_sop_class_uid
                {
                    Some((
                        SOP_CLASS_NOT_SUPPORTED,
                        format!(
                            "{} sent on a context negotiated for {context}",
                            next.command.affected_sop_class_uid
                        ),
                    ))
                } else {
                    let started = self.shared.receiver.begin(
                        &next.command.affected_sop_class_uid,
                        &next.command.affected_sop_instance_uid,
                        &self.contexts[&context_id].1,
                        &self.rq.calling_ae,
                    );
                    match started {
                        Ok(writer) => {
                            next.writer = Some(writer);
                            None
                        }
                        Err(refused) => Some((refused.status, refused.why)),
                    }
                };
                if let Some((status, why)) = refused {
                    self.log(
                        LogLevel::Warning,
                        format!(
                            "C-STORE from {} of {} refused: {why}",
                            self.who(),
                            next.command.affected_sop_instance_uid
                        ),
                    );
                    next.status = Some(status);
                }
                *incoming = Some(Incoming::Store(Box::new(next)));
                Ok(Flow::Continue)
            }
            dimse::C_GET_RQ
            | dimse::C_FIND_RQ
            | dimse::C_MOVE_RQ
            | dimse::N_ACTION_RQ
            | dimse::N_EVENT_REPORT_RQ
                if command.has_data_set && {
                    let config = &self.shared.config;
                    let model = &self.contexts[&context_id].0;
                    match command.field {
                        dimse::C_GET_RQ => config.retrieve_classes.contains(model),
                        dimse::C_MOVE_RQ => config.move_classes.contains(model),
                        dimse::N_ACTION_RQ | dimse::N_EVENT_REPORT_RQ => {
                            model == STORAGE_COMMITMENT
                        }
                        _ => config.find_classes.contains(model),
                    }
                } =>
            {
                *incoming = Some(Incoming::Query {
                    command: Box::new(command),
                    context_id,
                    identifier: Vec::new(),
                    started,
                });
                Ok(Flow::Continue)
            }
            // A cancel arriving after its request ended has nothing left to cancel.
            dimse::C_CANCEL_RQ => Ok(Flow::Continue),
            _ => Ok(Flow::Done(
                "aborted (command not served on this association)",
            )),
        }
    }

    pub(super) fn data(
        &mut self,
        bytes: &[u8],
        last: bool,
        incoming: &mut Option<Incoming>,
    ) -> io::Result<Flow> {
        match incoming.as_mut() {
            None => Ok(Flow::Done("aborted (data set without a command)")),
            Some(Incoming::Store(current)) => {
                current.received += bytes.len() as u64;
                let limit = self.shared.config.max_instance_size;
                if current.received > limit && current.status.is_none() {
                    // Its blobs written so far are referenced by nothing: gc reclaims them.
                    current.writer = None;
                    current.status = Some(OUT_OF_RESOURCES);
                    self.log(
                        LogLevel::Warning,
                        format!(
                            "C-STORE from {} of {} refused: data set larger than \
                             max_instance_size ({limit} bytes)",
                            self.who(),
                            current.command.affected_sop_instance_uid
                        ),
                    );
                }
                if let Some(writer) = current.writer.as_mut() {
                    if let Err(e) = writer.write(bytes) {
                        current.writer = None;
                        current.status = Some(self.failure(&current.command, &e));
                    }
                }
                if !last {
                    return Ok(Flow::Continue);
                }
                let Some(Incoming::Store(current)) = incoming.take() else {
                    unreachable!("matched above")
                };
                self.stored(*current)
            }
            Some(Incoming::Query { identifier, .. }) => {
                if identifier.len() + bytes.len() > MAX_COMMAND {
                    return Ok(Flow::Done("aborted (oversized identifier)"));
                }
                identifier.extend_from_slice(bytes);
                if !last {
                    return Ok(Flow::Continue);
                }
                let Some(Incoming::Query {
                    command,
                    context_id,
                    identifier,
                    started,
                }) = incoming.take()
                else {
                    unreachable!("matched above")
                };
                match command.field {
                    dimse::C_FIND_RQ => self.find(&command, context_id, identifier, started),
                    dimse::C_MOVE_RQ => self.move_to(&command, context_id, identifier, started),
                    dimse::N_ACTION_RQ | dimse::N_EVENT_REPORT_RQ => {
                        self.commitment(&command, context_id, identifier)
                    }
                    _ => self.retrieve(&command, context_id, identifier, started),
                }
            }
        }
    }

    pub(super) fn query_request(
        &self,
        command: &Command,
        context_id: u8,
        identifier: Vec<u8>,
    ) -> QueryRequest {
        QueryRequest {
            calling_ae: self.rq.calling_ae.clone(),
            address: self.peer.ip().to_string(),
            sop_class_uid: command.affected_sop_class_uid.clone(),
            transfer_syntax: self.contexts[&context_id].1.clone(),
            identifier,
        }
    }

    /// Whether a C-CANCEL-RQ has arrived, without waiting for one: the only message a peer
    /// may send while its C-FIND is answered.
    pub(super) fn cancel_arrived(&mut self) -> io::Result<bool> {
        if !self.stream.input_waiting()? {
            return Ok(false);
        }
        let mut body = Vec::new();
        match self.read_pdu(&mut body)? {
            Some(pdu::P_DATA_TF) => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "peer ended the association",
                ))
            }
        }
        let pdvs = pdu::parse_pdvs(&body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(pdvs.iter().any(|pdv| {
            pdv.command
                && dimse::parse_command(pdv.data).is_ok_and(|c| c.field == dimse::C_CANCEL_RQ)
        }))
    }

    pub(super) fn stored(&mut self, current: IncomingStore) -> io::Result<Flow> {
        let command = &current.command;
        let status = match (current.status, current.writer) {
            (Some(status), _) => status,
            (None, Some(writer)) => {
                let requested = (
                    command.affected_sop_class_uid.as_str(),
                    command.affected_sop_instance_uid.as_str(),
                );
                let sender = Sender {
                    ae: self.rq.calling_ae.clone(),
                    address: self.peer.ip().to_string(),
                };
                match self
                    .shared
                    .receiver
                    .finish(writer, requested, |_| Ok(()), &sender)
                {
                    Ok(()) => SUCCESS,
                    Err(refused) => {
                        let level = if refused.is_the_senders() {
                            LogLevel::Warning
                        } else {
                            LogLevel::Error
                        };
                        self.log(
                            level,
                            format!(
                                "C-STORE from {} of {} refused: {refused}",
                                self.who(),
                                command.affected_sop_instance_uid
                            ),
                        );
                        refused.status
                    }
                }
            }
            (None, None) => OUT_OF_RESOURCES,
        };
        self.send(
            current.context_id,
            &dimse::response(&current.command, status),
        )?;
        self.log_request(
            "C-STORE",
            current.started,
            status,
            &current.command.affected_sop_instance_uid,
        );
        Ok(Flow::Continue)
    }

    /// Storage Commitment (PS3.4 J.3.2, J.3.3): the host takes a request (and reports on it
    /// later, over an association of its own), or a peer's report on one of ours; the
    /// N-ACTION-RSP or N-EVENT-REPORT-RSP says whether it did.
    pub(super) fn commitment(
        &mut self,
        command: &Command,
        context_id: u8,
        identifier: Vec<u8>,
    ) -> io::Result<Flow> {
        let started = Instant::now();
        let mut request = self.query_request(command, context_id, identifier);
        let (status, response, what) = if command.field == dimse::N_ACTION_RQ {
            request.sop_class_uid = command.requested_sop_class_uid.clone();
            let status = self.shared.host.commit(request, None);
            let response = dimse::action_response(command, status);
            (status, response, "N-ACTION (storage commitment)")
        } else {
            let status = self.shared.host.commit(request, Some(command.event_type));
            let response = dimse::event_report_response(command, status);
            (status, response, "N-EVENT-REPORT (storage commitment)")
        };
        self.send(context_id, &response)?;
        self.log_request(what, started, status, "");
        Ok(Flow::Continue)
    }

    pub(super) fn failure(&self, command: &Command, error: &FeedError) -> u16 {
        let refused = Refused::from_feed(error);
        self.log(
            LogLevel::Error,
            format!(
                "C-STORE from {} of {}: {refused}",
                self.who(),
                command.affected_sop_instance_uid
            ),
        );
        refused.status
    }

    pub(super) fn log_request(&self, what: &str, started: Instant, status: u16, detail: &str) {
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        };
        self.log(
            LogLevel::Info,
            format!(
                "{what} from {}: status 0x{status:04X} in {:.1} ms{detail}",
                self.who(),
                started.elapsed().as_secs_f64() * 1e3
            ),
        );
    }
}
