//! The retrieves as SCU: C-MOVE to a destination AE, and C-GET, whose C-STORE sub-operations
//! arrive on this association and go through the receive path the listener's C-STOREs take
//! (streamed into the store as their PDVs arrive, checked, durable before their C-STORE-RSP).

use super::association::{Association, Pdv};
use super::identifier::{self, Key};
use super::ScuError;
use crate::cas::InstanceWriter;
use crate::dimse::{self, Command, SubOperations, FAILED_SOP_INSTANCE_UID_LIST};
use crate::identity::Identity;
use crate::receive::{Receiver, Refused, Sender};
use crate::status::{PENDING, SOP_CLASS_NOT_SUPPORTED, SUCCESS};
use std::collections::HashMap;

/// How a retrieve went: the final status, its sub-operation counts and the UIDs it failed;
/// for a C-GET, also what this side refused of what arrived (SOP Instance UID, why), and
/// the instances refused for want of a context their class was proposed in alone (SOP
/// Instance UID, SOP Class UID).
#[derive(Debug, Clone, Default)]
pub struct Retrieved {
    pub status: u16,
    pub counts: SubOperations,
    pub failed_uids: Vec<String>,
    pub stored: u32,
    pub refused: Vec<(String, String)>,
    pub unproposed: Vec<(String, String)>,
}

/// A C-STORE sub-operation whose data set is arriving.
struct Incoming {
    command: Command,
    context_id: u8,
    writer: Option<InstanceWriter>,
    refused: Option<Refused>,
    /// Refused as sent on a context proposed with several transfer syntaxes.
    unproposed: bool,
}

/// What the closure reading a C-GET's PDVs needs to know of each accepted context, which it
/// cannot borrow from the association.
struct Accepted {
    abstract_syntax: String,
    transfer_syntax: String,
    /// We take the SCP role for its class.
    scp_role: bool,
    /// It was proposed with this one transfer syntax.
    alone: bool,
}

/// What the responses to a retrieve request say so far.
struct Responses {
    field: u16,
    message_id: u16,
    syntax: String,
    retrieved: Retrieved,
    /// The final response came, and its identifier (if any) is being read.
    identifier: Option<Vec<u8>>,
    done: bool,
}

impl Responses {
    fn new(field: u16, message_id: u16, syntax: &str) -> Responses {
        Responses {
            field,
            message_id,
            syntax: syntax.to_string(),
            retrieved: Retrieved::default(),
            identifier: None,
            done: false,
        }
    }

    /// A C-GET-RSP or C-MOVE-RSP.
    fn response(&mut self, command: &Command) -> Result<(), ScuError> {
        if command.field != self.field || command.responding_to != self.message_id {
            return Err(ScuError::Protocol(format!(
                "command 0x{:04X} answering retrieve {}",
                command.field, self.message_id
            )));
        }
        self.retrieved.counts = command.sub_operations;
        if command.status == PENDING {
            return Ok(());
        }
        self.retrieved.status = command.status;
        self.retrieved.failed_uids = split_uids(&command.failed_sop_instance_uids);
        if command.has_data_set {
            self.identifier = Some(Vec::new());
        } else {
            self.done = true;
        }
        Ok(())
    }

    /// A piece of the final response's identifier.
    fn identifier(&mut self, data: &[u8], last: bool) -> Result<(), ScuError> {
        let Some(bytes) = self.identifier.as_mut() else {
            return Err(ScuError::Protocol("a data set without its command".into()));
        };
        bytes.extend_from_slice(data);
        if last {
            let wanted = [(FAILED_SOP_INSTANCE_UID_LIST, *b"UI")];
            // A list we cannot read leaves the failed count to say how many failed.
            if let Ok(values) = identifier::decode(bytes, &self.syntax, &wanted) {
                for (_, list) in values {
                    self.retrieved.failed_uids.extend(split_uids(&list));
                }
            }
            self.done = true;
        }
        Ok(())
    }
}

fn split_uids(list: &str) -> Vec<String> {
    list.split('\\')
        .map(|uid| uid.trim_matches(|c| c == ' ' || c == '\0').to_string())
        .filter(|uid| !uid.is_empty())
        .collect()
}

/// Sends a C-GET-RQ or C-MOVE-RQ; the context and its transfer syntax.
fn request(
    association: &mut Association,
    field: u16,
    model: &str,
    level: &str,
    keys: &[Key],
    destination: Option<&str>,
) -> Result<(u16, String), ScuError> {
    let (context_id, syntax) = association
        .context(model)
        .ok_or_else(|| ScuError::NoContext(model.to_string()))?;
    let syntax = syntax.to_string();
    let message_id = association.message_id();
    let command = dimse::query_request(field, model, message_id, destination);
    let identifier = identifier::encode(level, keys, &syntax);
    association.send(context_id, &command, Some(&identifier))?;
    Ok((message_id, syntax))
}

/// C-MOVE of what `keys` select at `level` to the AE titled `destination`.
pub fn move_to(
    association: &mut Association,
    model: &str,
    level: &str,
    keys: &[Key],
    destination: &str,
) -> Result<Retrieved, ScuError> {
    let (message_id, syntax) = request(
        association,
        dimse::C_MOVE_RQ,
        model,
        level,
        keys,
        Some(destination),
    )?;
    let mut responses = Responses::new(dimse::C_MOVE_RSP, message_id, &syntax);
    while !responses.done {
        association.next(|pdv| match pdv {
            Pdv::Command(_, command) => responses.response(&command),
            Pdv::Data { data, last, .. } => responses.identifier(data, last),
        })?;
    }
    Ok(responses.retrieved)
}

/// C-GET of what `keys` select at `level`: each instance arrives as a C-STORE sub-operation
/// and is stored through `receiver`, refused (0xA900) unless it is the instance its request
/// names and, when `studies` are given, of one of them. With `as_held`, an instance sent on
/// a context proposed with several transfer syntaxes is refused (0x0122) and listed in
/// `unproposed`: the peer may have converted it to the one syntax that context took, and a
/// C-GET proposing its class in a context per syntax can have it as the peer holds it.
pub fn get(
    association: &mut Association,
    model: &str,
    level: &str,
    keys: &[Key],
    receiver: &Receiver,
    studies: &[String],
    as_held: bool,
) -> Result<Retrieved, ScuError> {
    let (message_id, syntax) = request(association, dimse::C_GET_RQ, model, level, keys, None)?;
    let sender = Sender {
        ae: association.called_ae().to_string(),
        address: association.address().ip().to_string(),
    };
    // What the closure reading the PDVs needs of the association, which it cannot borrow.
    let contexts: HashMap<u8, Accepted> = (1..=255u8)
        .step_by(2)
        .filter_map(|id| {
            let (abstract_syntax, ts) = association.accepted(id)?;
            let accepted = Accepted {
                abstract_syntax: abstract_syntax.to_string(),
                transfer_syntax: ts.to_string(),
                scp_role: association.takes_scp_role(abstract_syntax),
                alone: association.proposed_alone(id),
            };
            Some((id, accepted))
        })
        .collect();
    let mut responses = Responses::new(dimse::C_GET_RSP, message_id, &syntax);
    let mut incoming: Option<Incoming> = None;
    let mut replies: Vec<(u8, Vec<u8>)> = Vec::new();
    while !responses.done {
        let read = association.next(|pdv| {
            match pdv {
                Pdv::Command(context_id, command) if command.field == dimse::C_STORE_RQ => {
                    if incoming.is_some() {
                        return Err(ScuError::Protocol(
                            "a C-STORE-RQ before the previous data set ended".into(),
                        ));
                    }
                    let context = contexts.get(&context_id);
                    incoming = Some(begin(
                        receiver, context, as_held, &sender, command, context_id,
                    ));
                }
                Pdv::Command(_, command) => responses.response(&command)?,
                Pdv::Data { data, last, .. } if responses.identifier.is_some() => {
                    responses.identifier(data, last)?
                }
                Pdv::Data { data, last, .. } => {
                    let Some(current) = incoming.as_mut() else {
                        return Err(ScuError::Protocol("a data set without its command".into()));
                    };
                    if let Some(writer) = current.writer.as_mut() {
                        if let Err(e) = writer.write(data) {
                            current.writer = None;
                            current.refused = Some(Refused::from_feed(&e));
                        }
                    }
                    if last {
                        let current = incoming.take().expect("a data set is arriving");
                        let status = finish(
                            current,
                            receiver,
                            &sender,
                            studies,
                            &mut responses.retrieved,
                        );
                        replies.push(status);
                    }
                }
            }
            Ok(())
        });
        // A data set cut short is dropped: its blobs are referenced by nothing (gc).
        read?;
        for (context_id, reply) in replies.drain(..) {
            association.respond(context_id, &reply)?;
        }
    }
    Ok(responses.retrieved)
}

/// Starts receiving a sub-operation's data set on `context`: refused at once (but still read
/// to its end) on a context that is not for its SOP class or that we have not the SCP role
/// for, with `as_held` on one proposed with several syntaxes, or when the receive path
/// refuses it.
fn begin(
    receiver: &Receiver,
    context: Option<&Accepted>,
    as_held: bool,
    sender: &Sender,
    command: Command,
    context_id: u8,
) -> Incoming {
    let mut incoming = Incoming {
        command,
        context_id,
        writer: None,
        refused: None,
        unproposed: false,
    };
    let command = &incoming.command;
    let started = match context {
        Some(c) if c.scp_role && c.abstract_syntax == command.affected_sop_class_uid => {
            if as_held && !c.alone {
                incoming.unproposed = true;
                Err(Refused {
                    status: SOP_CLASS_NOT_SUPPORTED,
                    why: format!(
                        "{} sent on presentation context {context_id}, proposed with several \
                         transfer syntaxes",
                        command.affected_sop_class_uid
                    ),
                })
            } else {
                receiver.begin(
                    &command.affected_sop_class_uid,
                    &command.affected_sop_instance_uid,
                    &c.transfer_syntax,
                    &sender.ae,
                )
            }
        }
        _ => Err(Refused {
            status: SOP_CLASS_NOT_SUPPORTED,
            why: format!(
                "{} sent on presentation context {context_id}, not one negotiated for it",
                command.affected_sop_class_uid
            ),
        }),
    };
    match started {
        Ok(writer) => incoming.writer = Some(writer),
        Err(refused) => incoming.refused = Some(refused),
    }
    incoming
}

/// Finishes a sub-operation: its data set checked and committed, or why not; the C-STORE-RSP
/// to send (context, command).
fn finish(
    incoming: Incoming,
    receiver: &Receiver,
    sender: &Sender,
    studies: &[String],
    retrieved: &mut Retrieved,
) -> (u8, Vec<u8>) {
    let command = &incoming.command;
    let outcome = match (incoming.refused, incoming.writer) {
        (Some(refused), _) => Err(refused),
        (None, Some(writer)) => {
            let requested = (
                command.affected_sop_class_uid.as_str(),
                command.affected_sop_instance_uid.as_str(),
            );
            let of_the_study = |identity: &Identity| {
                let study = &identity.study_instance_uid;
                if studies.is_empty() || studies.contains(study) {
                    Ok(())
                } else {
                    Err(format!(
                        "the C-GET asked for study {}, the instance is of study {study}",
                        studies.join(" or ")
                    ))
                }
            };
            receiver.finish(writer, requested, of_the_study, sender)
        }
        (None, None) => unreachable!("a sub-operation has a writer or a refusal"),
    };
    let status = match outcome {
        Ok(()) => {
            retrieved.stored += 1;
            SUCCESS
        }
        Err(refused) if incoming.unproposed => {
            retrieved.unproposed.push((
                command.affected_sop_instance_uid.clone(),
                command.affected_sop_class_uid.clone(),
            ));
            refused.status
        }
        Err(refused) => {
            let status = refused.status;
            retrieved
                .refused
                .push((command.affected_sop_instance_uid.clone(), refused.why));
            status
        }
    };
    (incoming.context_id, dimse::response(command, status))
}
