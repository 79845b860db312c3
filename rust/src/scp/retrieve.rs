//! C-GET and C-MOVE: the host selects; a C-GET's sub-operations stream from the store (the
//! next instance read ahead, each checked before its first byte), a C-MOVE's are the host's;
//! pending responses report each, the final one the counts and the failed instances.

use super::association::{Association, Flow};
use super::*;
use crate::cas::ReadInstances;
use crate::dimse::{self, Command, SubOperations};
use crate::pdu::{self, PdvWriter};
use crate::transport::Channel;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

/// A C-GET's or C-MOVE's sub-operations so far, and the responses that report them.
pub(super) struct Progress {
    pub(super) request: Command,
    pub(super) context_id: u8,
    pub(super) explicit_vr: bool,
    pub(super) counts: SubOperations,
    pub(super) total: usize,
    pub(super) failed: Vec<String>,
    pub(super) status: u16,
}

impl Progress {
    pub(super) fn new(request: &Command, context_id: u8, transfer_syntax: &str) -> Progress {
        Progress {
            request: request.clone(),
            context_id,
            explicit_vr: transfer_syntax == EXPLICIT_VR_LE,
            counts: SubOperations::default(),
            total: 0,
            failed: Vec::new(),
            status: PENDING,
        }
    }

    pub(super) fn begin(&mut self, total: usize) {
        self.total = total;
        self.counts.remaining = total as u32;
    }

    /// For the request's log line.
    pub(super) fn detail(&self, extra: &str) -> String {
        format!("{} instances {extra}", self.total)
            .trim_end()
            .to_string()
    }

    /// Counts one sub-operation; returns the pending response saying so.
    pub(super) fn record<S: Channel>(
        &mut self,
        association: &Association<'_, S>,
        status: u16,
        uid: &str,
    ) -> Vec<u8> {
        self.counts.remaining = self.counts.remaining.saturating_sub(1);
        match status {
            SUCCESS => self.counts.completed += 1,
            s if crate::status::is_warning(s) => self.counts.warning += 1,
            _ => {
                self.counts.failed += 1;
                self.failed.push(uid.to_string());
            }
        }
        let pending = dimse::retrieve_response(&self.request, PENDING, self.counts, false);
        association.message(self.context_id, true, &pending)
    }

    /// The final response (PS3.4 C.4.2.1.5, C.4.3.1.4): with the failed instances' UIDs
    /// unless every sub-operation succeeded.
    pub(super) fn finish<S: Channel>(&mut self, association: &Association<'_, S>) -> Vec<u8> {
        let done = self.counts.completed + self.counts.failed + self.counts.warning;
        self.status = if association.cancelled {
            CANCEL
        } else if self.counts.failed == 0 && self.counts.warning == 0 {
            SUCCESS
        } else if self.counts.failed == done {
            SUB_OPERATIONS_FAILED
        } else {
            SUB_OPERATIONS_WARNING
        };
        let with_list = !self.failed.is_empty() && self.status != SUCCESS;
        let last = dimse::retrieve_response(&self.request, self.status, self.counts, with_list);
        let mut out = association.message(self.context_id, true, &last);
        if with_list {
            let list = dimse::failed_instances_identifier(&self.failed, self.explicit_vr);
            out.extend(association.message(self.context_id, false, &list));
        }
        out
    }
}

/// How a C-GET's C-STORE sub-operation went.
pub(super) enum SubOperation {
    Answered(u16),
    /// Not sent: no way to give the peer this instance (logged).
    NotSent,
    /// The association ended (how).
    Ended(&'static str),
}

impl<'a, S: Channel> Association<'a, S> {
    /// C-GET: the host selects the instances, each goes back over this association as a
    /// C-STORE sub-operation, with a pending response after each and a final one with the
    /// counts (and the failed instances' UIDs).
    pub(super) fn retrieve(
        &mut self,
        command: &Command,
        context_id: u8,
        identifier: Vec<u8>,
        started: Instant,
    ) -> io::Result<Flow> {
        let (request, mut progress) = self.begin_retrieve(command, context_id, identifier);
        let selected = match self.shared.host.select(request) {
            Ok(selected) => selected,
            Err(status) => return self.refused(&progress, "C-GET", started, status, ""),
        };
        progress.begin(selected.len());
        self.cancelled = false;
        // Each pending response goes out in one write with the next C-STORE-RQ.
        let mut unsent = Vec::new();
        let mut prefetched = None;
        for (i, instance) in selected.iter().enumerate() {
            if self.cancelled {
                break;
            }
            let message_id = command.message_id.wrapping_add(1 + i as u16);
            let stored = prefetched.take();
            let next = selected.get(i + 1);
            let (outcome, next_data) =
                self.send_instance(instance, message_id, &mut unsent, stored, next)?;
            prefetched = next_data;
            let status = match outcome {
                SubOperation::Answered(status) => status,
                SubOperation::NotSent => OUT_OF_RESOURCES,
                SubOperation::Ended(how) => return Ok(Flow::Done(how)),
            };
            unsent.extend(progress.record(self, status, &instance.sop_instance_uid));
        }
        unsent.extend(progress.finish(self));
        self.stream.write_all(&unsent)?;
        self.log_request("C-GET", started, progress.status, &progress.detail(""));
        Ok(Flow::Continue)
    }

    pub(super) fn begin_retrieve(
        &self,
        command: &Command,
        context_id: u8,
        identifier: Vec<u8>,
    ) -> (QueryRequest, Progress) {
        let request = self.query_request(command, context_id, identifier);
        let progress = Progress::new(command, context_id, &request.transfer_syntax);
        (request, progress)
    }

    /// C-MOVE: the host selects the instances and sends them to the destination over its own
    /// association, reporting each sub-operation's status; a pending response follows each.
    pub(super) fn move_to(
        &mut self,
        command: &Command,
        context_id: u8,
        identifier: Vec<u8>,
        started: Instant,
    ) -> io::Result<Flow> {
        let (request, mut progress) = self.begin_retrieve(command, context_id, identifier);
        let destination = command.move_destination.clone();
        let detail = format!("to {destination}");
        // Over TLS too: what the host watches for is the requestor sending anything at all.
        let requestor = self.stream.socket().as_raw_fd();
        let (uids, sub_operations) =
            match self.shared.host.move_to(request, &destination, requestor) {
                Ok(moving) => moving,
                Err(status) => return self.refused(&progress, "C-MOVE", started, status, &detail),
            };
        progress.begin(uids.len());
        self.cancelled = false;
        for (uid, status) in uids.iter().zip(sub_operations) {
            let status = status.unwrap_or_else(|why| {
                self.log(
                    LogLevel::Error,
                    format!("C-MOVE from {}: sub-operation failed: {why}", self.who()),
                );
                OUT_OF_RESOURCES
            });
            let pending = progress.record(self, status, uid);
            self.stream.write_all(&pending)?;
            if self.cancel_arrived()? {
                self.cancelled = true;
                break;
            }
        }
        let last = progress.finish(self);
        self.stream.write_all(&last)?;
        self.log_request(
            "C-MOVE",
            started,
            progress.status,
            &progress.detail(&detail),
        );
        Ok(Flow::Continue)
    }

    /// The final response of a query refused before it started.
    pub(super) fn refused(
        &mut self,
        progress: &Progress,
        what: &str,
        started: Instant,
        status: u16,
        detail: &str,
    ) -> io::Result<Flow> {
        let rsp =
            dimse::retrieve_response(&progress.request, status, SubOperations::default(), false);
        self.send(progress.context_id, &rsp)?;
        self.log_request(what, started, status, &progress.detail(detail));
        Ok(Flow::Continue)
    }

    /// A context the peer takes `sop_class` on with us as SCU, in `transfer_syntax`.
    pub(super) fn sending_context(&self, sop_class: &str, transfer_syntax: &str) -> Option<u8> {
        if !self.sendable.contains(sop_class) {
            return None;
        }
        self.contexts
            .iter()
            .filter(|(_, (abstract_syntax, ts))| {
                abstract_syntax == sop_class && ts == transfer_syntax
            })
            .map(|(id, _)| *id)
            .min()
    }

    /// The syntaxes the peer took `sop_class` in with us as SCU, in the order it proposed
    /// their contexts (its order of preference).
    pub(super) fn accepted_for(&self, sop_class: &str) -> Vec<String> {
        if !self.sendable.contains(sop_class) {
            return Vec::new();
        }
        let mut contexts: Vec<(u8, &String)> = self
            .contexts
            .iter()
            .filter(|(_, (abstract_syntax, _))| abstract_syntax == sop_class)
            .map(|(id, (_, ts))| (*id, ts))
            .collect();
        contexts.sort();
        let mut syntaxes: Vec<String> = Vec::new();
        for (_, ts) in contexts {
            if !syntaxes.contains(ts) {
                syntaxes.push(ts.clone());
            }
        }
        syntaxes
    }

    /// The data set of `instance` read ahead, when it is sent as stored and small enough.
    pub(super) fn prefetch(&self, instance: &Selected) -> Option<Vec<u8>> {
        let size = instance
            .manifest
            .total_length
            .saturating_sub(instance.dataset_offset);
        if size > PREFETCH_MAX
            || self
                .sending_context(&instance.sop_class_uid, &instance.transfer_syntax)
                .is_none()
        {
            return None;
        }
        // A read error surfaces when the instance is checked before it is sent.
        self.shared
            .store
            .read_instance(&instance.manifest, instance.dataset_offset)
            .ok()
    }

    /// One C-STORE sub-operation: the instance as stored (`stored`, when read ahead) when the
    /// peer accepted its syntax, else decoded by the host into one it did accept; `unsent` PDUs
    /// go out first. While the peer stores it, the `next` instance is read ahead.
    pub(super) fn send_instance(
        &mut self,
        instance: &Selected,
        message_id: u16,
        unsent: &mut Vec<u8>,
        stored: Option<Vec<u8>>,
        next: Option<&Selected>,
    ) -> io::Result<(SubOperation, Option<Vec<u8>>)> {
        let uid = &instance.sop_instance_uid;
        let (context_id, decoded) =
            match self.sending_context(&instance.sop_class_uid, &instance.transfer_syntax) {
                Some(id) => (id, None),
                None => {
                    let accepted = self.accepted_for(&instance.sop_class_uid);
                    let transcoded =
                        self.shared
                            .host
                            .transcode(instance, &accepted)
                            .and_then(|(ts, data)| {
                                self.sending_context(&instance.sop_class_uid, &ts)
                                    .map(|id| (id, data))
                                    .ok_or_else(|| format!("{uid}: no context for {ts}"))
                            });
                    match transcoded {
                        Ok((id, data)) => (id, Some(data)),
                        Err(why) => {
                            self.log(
                                LogLevel::Error,
                                format!(
                                    "C-GET from {}: sub-operation for {uid} failed: {why}",
                                    self.who()
                                ),
                            );
                            return Ok((SubOperation::NotSent, None));
                        }
                    }
                }
            };
        let data = decoded.or(stored);
        if data.is_none() {
            // Not read ahead (too large, or the read failed): checked whole before its first
            // byte goes out, so that damage fails this sub-operation, not the association.
            if let Err(e) = self.shared.store.check_instance(&instance.manifest) {
                self.log(
                    LogLevel::Error,
                    format!(
                        "C-GET from {}: sub-operation for {uid} failed: {e}",
                        self.who()
                    ),
                );
                return Ok((SubOperation::NotSent, next.and_then(|n| self.prefetch(n))));
            }
        }
        let request = dimse::store_request(&instance.sop_class_uid, uid, message_id);
        unsent.extend(self.message(context_id, true, &request));
        let mut writer = PdvWriter::new(context_id, false, self.rq.max_pdu);
        writer.after(unsent);
        unsent.clear();
        let stream = &mut self.stream;
        match data {
            Some(data) => writer.write(&data, stream)?,
            None => self.shared.store.for_each_chunk(
                &instance.manifest,
                instance.dataset_offset,
                |chunk| writer.write(chunk, stream),
            )?,
        }
        writer.finish(stream)?;
        let next_data = next.and_then(|n| self.prefetch(n));
        Ok((self.store_response(message_id)?, next_data))
    }

    /// Waits for the C-STORE-RSP to `message_id`, noting a C-CANCEL-RQ that arrives meanwhile.
    pub(super) fn store_response(&mut self, message_id: u16) -> io::Result<SubOperation> {
        let mut body = Vec::new();
        let mut command = Vec::new();
        loop {
            let Some(kind) = self.read_pdu(&mut body)? else {
                return Ok(SubOperation::Ended("aborted (PDU larger than negotiated)"));
            };
            match kind {
                pdu::P_DATA_TF => {}
                pdu::A_ABORT => return Ok(SubOperation::Ended("aborted by the peer")),
                _ => return Ok(SubOperation::Ended("aborted (unexpected PDU during C-GET)")),
            }
            let Ok(pdvs) = pdu::parse_pdvs(&body) else {
                return Ok(SubOperation::Ended("aborted (malformed P-DATA-TF)"));
            };
            for pdv in pdvs {
                if !pdv.command || command.len() + pdv.data.len() > MAX_COMMAND {
                    return Ok(SubOperation::Ended(
                        "aborted (unexpected data during C-GET)",
                    ));
                }
                command.extend_from_slice(pdv.data);
                if !pdv.last {
                    continue;
                }
                let Ok(response) = dimse::parse_command(&command) else {
                    return Ok(SubOperation::Ended("aborted (unreadable command)"));
                };
                command.clear();
                match response.field {
                    dimse::C_STORE_RSP if response.responding_to == message_id => {
                        return Ok(SubOperation::Answered(response.status));
                    }
                    dimse::C_CANCEL_RQ => self.cancelled = true,
                    _ => {
                        return Ok(SubOperation::Ended(
                            "aborted (unexpected command during C-GET)",
                        ))
                    }
                }
            }
        }
    }
}
