//! DIMSE command sets (PS3.7 9.3, E.1): reading requests and the C-STORE-RSP of a retrieve's
//! sub-operations, writing responses and C-STORE-RQ, and the File Meta a received data set is
//! stored with (PS3.10 7.1).

use crate::status::{CANCEL, PENDING};

pub const C_STORE_RQ: u16 = 0x0001;
pub const C_STORE_RSP: u16 = 0x8001;
pub const C_GET_RQ: u16 = 0x0010;
pub const C_GET_RSP: u16 = 0x8010;
pub const C_FIND_RQ: u16 = 0x0020;
pub const C_FIND_RSP: u16 = 0x8020;
pub const C_MOVE_RQ: u16 = 0x0021;
pub const C_MOVE_RSP: u16 = 0x8021;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
pub const C_CANCEL_RQ: u16 = 0x0FFF;
pub const N_EVENT_REPORT_RQ: u16 = 0x0100;
pub const N_EVENT_REPORT_RSP: u16 = 0x8100;
pub const N_ACTION_RQ: u16 = 0x0130;
pub const N_ACTION_RSP: u16 = 0x8130;
const NO_DATA_SET: u16 = 0x0101;
const DATA_SET: u16 = 0x0000;

/// The fields of a request command that the storage SCP acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    pub field: u16,
    pub message_id: u16,
    pub affected_sop_class_uid: String,
    pub affected_sop_instance_uid: String,
    pub has_data_set: bool,
    /// C-MOVE's destination AE title.
    pub move_destination: String,
    /// N-ACTION's Requested SOP Class and Instance UIDs and Action Type ID.
    pub requested_sop_class_uid: String,
    pub requested_sop_instance_uid: String,
    pub action_type: u16,
    /// N-EVENT-REPORT's Event Type ID.
    pub event_type: u16,
    /// In responses.
    pub responding_to: u16,
    pub status: u16,
    /// In C-GET and C-MOVE responses: the sub-operation counts, and the failed instances'
    /// UIDs ('\\'-separated) when the SCP put them in the command set.
    pub sub_operations: SubOperations,
    pub failed_sop_instance_uids: String,
}

fn uid(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .trim_end_matches(['\0', ' '])
        .to_string()
}

fn us(value: &[u8]) -> Option<u16> {
    Some(u16::from_le_bytes(value.get(0..2)?.try_into().ok()?))
}

/// Parses a command set (always Implicit VR Little Endian).
pub fn parse_command(bytes: &[u8]) -> Result<Command, String> {
    parse(bytes, false)
}

/// Parses a command set an SCP sent us: as `parse_command`, but elements outside group 0000
/// are passed over, the Failed SOP Instance UID List kept — DCMTK-based SCPs (Orthanc among
/// them) put a retrieve's list in its final response's command set.
pub fn parse_peer_command(bytes: &[u8]) -> Result<Command, String> {
    parse(bytes, true)
}

/// (0008,0058) Failed SOP Instance UID List: a retrieve's final response identifier.
pub const FAILED_SOP_INSTANCE_UID_LIST: u32 = 0x0008_0058;

fn parse(mut bytes: &[u8], lenient: bool) -> Result<Command, String> {
    let mut command = Command {
        has_data_set: true,
        ..Command::default()
    };
    let mut seen_field = false;
    while !bytes.is_empty() {
        if bytes.len() < 8 {
            return Err("command element cut short".into());
        }
        let group = u16::from_le_bytes([bytes[0], bytes[1]]);
        let element = u16::from_le_bytes([bytes[2], bytes[3]]);
        let length = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        if group != 0x0000 && !lenient {
            return Err(format!(
                "element ({group:04X},{element:04X}) in a command set"
            ));
        }
        let value = bytes
            .get(8..8usize.saturating_add(length))
            .ok_or_else(|| format!("command element (0000,{element:04X}) runs past the command"))?;
        if group != 0x0000 {
            if (u32::from(group) << 16 | u32::from(element)) == FAILED_SOP_INSTANCE_UID_LIST {
                command.failed_sop_instance_uids = uid(value);
            }
            bytes = &bytes[8 + length..];
            continue;
        }
        match element {
            0x0002 => command.affected_sop_class_uid = uid(value),
            0x0003 => command.requested_sop_class_uid = uid(value),
            0x1001 => command.requested_sop_instance_uid = uid(value),
            0x1008 => command.action_type = us(value).ok_or("short ActionTypeID")?,
            0x1002 => command.event_type = us(value).ok_or("short EventTypeID")?,
            0x0100 => {
                command.field = us(value).ok_or("short CommandField")?;
                seen_field = true;
            }
            0x0110 => command.message_id = us(value).ok_or("short MessageID")?,
            0x0120 => command.responding_to = us(value).ok_or("short MessageIDBeingRespondedTo")?,
            0x0900 => command.status = us(value).ok_or("short Status")?,
            0x1020..=0x1023 => {
                let count = u32::from(us(value).ok_or("short sub-operation count")?);
                let counts = &mut command.sub_operations;
                match element {
                    0x1020 => counts.remaining = count,
                    0x1021 => counts.completed = count,
                    0x1022 => counts.failed = count,
                    _ => counts.warning = count,
                }
            }
            0x0600 => command.move_destination = uid(value),
            0x0800 => command.has_data_set = us(value) != Some(NO_DATA_SET),
            0x1000 => command.affected_sop_instance_uid = uid(value),
            _ => {}
        }
        bytes = &bytes[8 + length..];
    }
    if !seen_field {
        return Err("command set without CommandField".into());
    }
    Ok(command)
}

fn element(out: &mut Vec<u8>, element: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

fn padded_uid(value: &str) -> Vec<u8> {
    let mut v = value.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

/// A command set: its elements, preceded by their group length.
fn command_set(elements: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut body = Vec::with_capacity(192);
    elements(&mut body);
    let mut out = Vec::with_capacity(body.len() + 12);
    element(&mut out, 0x0000, &(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A response command: C-STORE-RSP (with the affected SOP instance) or C-ECHO-RSP.
pub fn response(request: &Command, status: u16) -> Vec<u8> {
    command_set(|body| {
        element(body, 0x0002, &padded_uid(&request.affected_sop_class_uid));
        let field = if request.field == C_STORE_RQ {
            C_STORE_RSP
        } else {
            C_ECHO_RSP
        };
        element(body, 0x0100, &field.to_le_bytes());
        element(body, 0x0120, &request.message_id.to_le_bytes());
        element(body, 0x0800, &NO_DATA_SET.to_le_bytes());
        element(body, 0x0900, &status.to_le_bytes());
        if request.field == C_STORE_RQ {
            element(
                body,
                0x1000,
                &padded_uid(&request.affected_sop_instance_uid),
            );
        }
    })
}

/// An N-ACTION-RSP (PS3.7 10.1.4.1.2): the request's SOP class, instance and action type.
pub fn action_response(request: &Command, status: u16) -> Vec<u8> {
    normalized_response(
        N_ACTION_RSP,
        request,
        (
            &request.requested_sop_class_uid,
            &request.requested_sop_instance_uid,
        ),
        (0x1008, request.action_type),
        status,
    )
}

/// An N-EVENT-REPORT-RSP (PS3.7 10.1.1.1.2): the request's SOP class, instance and event type.
pub fn event_report_response(request: &Command, status: u16) -> Vec<u8> {
    normalized_response(
        N_EVENT_REPORT_RSP,
        request,
        (
            &request.affected_sop_class_uid,
            &request.affected_sop_instance_uid,
        ),
        (0x1002, request.event_type),
        status,
    )
}

/// The response of a normalized service to `request`: its SOP class and instance, and the
/// action or event type the request named (`kind`: its element and value).
fn normalized_response(
    command_field: u16,
    request: &Command,
    (sop_class, sop_instance): (&str, &str),
    (kind_element, kind): (u16, u16),
    status: u16,
) -> Vec<u8> {
    command_set(|body| {
        element(body, 0x0002, &padded_uid(sop_class));
        element(body, 0x0100, &command_field.to_le_bytes());
        element(body, 0x0120, &request.message_id.to_le_bytes());
        element(body, 0x0800, &NO_DATA_SET.to_le_bytes());
        element(body, 0x0900, &status.to_le_bytes());
        element(body, 0x1000, &padded_uid(sop_instance));
        element(body, kind_element, &kind.to_le_bytes());
    })
}

/// The response command field to a request's.
fn response_field(request: &Command) -> u16 {
    request.field | 0x8000
}

/// A C-FIND-RSP; a pending one is followed by its identifier.
pub fn find_response(request: &Command, status: u16) -> Vec<u8> {
    command_set(|body| {
        element(body, 0x0002, &padded_uid(&request.affected_sop_class_uid));
        element(body, 0x0100, &response_field(request).to_le_bytes());
        element(body, 0x0120, &request.message_id.to_le_bytes());
        let data = if status == PENDING {
            DATA_SET
        } else {
            NO_DATA_SET
        };
        element(body, 0x0800, &data.to_le_bytes());
        element(body, 0x0900, &status.to_le_bytes());
    })
}

/// Sub-operation counts of a retrieve (PS3.4 C.4.3.1.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubOperations {
    pub remaining: u32,
    pub completed: u32,
    pub failed: u32,
    pub warning: u32,
}

/// A C-GET-RSP or C-MOVE-RSP; `remaining` is sent only with pending and cancel statuses, and
/// an identifier (the Failed SOP Instance UID List) follows when `identifier`.
pub fn retrieve_response(
    request: &Command,
    status: u16,
    counts: SubOperations,
    identifier: bool,
) -> Vec<u8> {
    command_set(|body| {
        element(body, 0x0002, &padded_uid(&request.affected_sop_class_uid));
        element(body, 0x0100, &response_field(request).to_le_bytes());
        element(body, 0x0120, &request.message_id.to_le_bytes());
        let data = if identifier { DATA_SET } else { NO_DATA_SET };
        element(body, 0x0800, &data.to_le_bytes());
        element(body, 0x0900, &status.to_le_bytes());
        if status == PENDING || status == CANCEL {
            element(body, 0x1020, &(counts.remaining as u16).to_le_bytes());
        }
        element(body, 0x1021, &(counts.completed as u16).to_le_bytes());
        element(body, 0x1022, &(counts.failed as u16).to_le_bytes());
        element(body, 0x1023, &(counts.warning as u16).to_le_bytes());
    })
}

/// A C-STORE-RQ of a retrieve's sub-operation (medium priority).
pub fn store_request(sop_class_uid: &str, sop_instance_uid: &str, message_id: u16) -> Vec<u8> {
    command_set(|body| {
        element(body, 0x0002, &padded_uid(sop_class_uid));
        element(body, 0x0100, &C_STORE_RQ.to_le_bytes());
        element(body, 0x0110, &message_id.to_le_bytes());
        element(body, 0x0700, &0u16.to_le_bytes());
        element(body, 0x0800, &DATA_SET.to_le_bytes());
        element(body, 0x1000, &padded_uid(sop_instance_uid));
    })
}

/// The identifier of a retrieve's final response: (0008,0058) Failed SOP Instance UID List,
/// in the request's transfer syntax (Implicit or Explicit VR Little Endian). An explicit VR
/// value holds at most 64 KiB: UIDs beyond that are left out.
pub fn failed_instances_identifier(uids: &[String], explicit_vr: bool) -> Vec<u8> {
    let limit = if explicit_vr {
        0xFFFE
    } else {
        u32::MAX as usize
    };
    let mut value = Vec::new();
    for uid in uids {
        let extra = uid.len() + usize::from(!value.is_empty());
        if value.len() + extra > limit - 1 {
            break;
        }
        if !value.is_empty() {
            value.push(b'\\');
        }
        value.extend_from_slice(uid.as_bytes());
    }
    if value.len() % 2 == 1 {
        value.push(0);
    }
    let mut out = vec![0x08, 0x00, 0x58, 0x00];
    if explicit_vr {
        out.extend_from_slice(b"UI");
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(&value);
    out
}

/// A C-FIND-RQ, C-GET-RQ or C-MOVE-RQ (`field`, medium priority) of the information model
/// `sop_class_uid`; its identifier follows. C-MOVE names its destination.
pub fn query_request(
    field: u16,
    sop_class_uid: &str,
    message_id: u16,
    move_destination: Option<&str>,
) -> Vec<u8> {
    command_set(|body| {
        element(body, 0x0002, &padded_uid(sop_class_uid));
        element(body, 0x0100, &field.to_le_bytes());
        element(body, 0x0110, &message_id.to_le_bytes());
        if let Some(destination) = move_destination {
            let mut ae = destination.as_bytes().to_vec();
            if ae.len() % 2 == 1 {
                ae.push(b' ');
            }
            element(body, 0x0600, &ae);
        }
        element(body, 0x0700, &0u16.to_le_bytes());
        element(body, 0x0800, &DATA_SET.to_le_bytes());
    })
}

/// A C-CANCEL-RQ of the request `message_id`.
pub fn cancel_request(message_id: u16) -> Vec<u8> {
    command_set(|body| {
        element(body, 0x0100, &C_CANCEL_RQ.to_le_bytes());
        element(body, 0x0120, &message_id.to_le_bytes());
        element(body, 0x0800, &NO_DATA_SET.to_le_bytes());
    })
}

fn meta_element(out: &mut Vec<u8>, element: u16, vr: &[u8; 2], value: &[u8]) {
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(vr);
    if vr == b"OB" {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
}

/// Identifies the implementation that wrote a received instance's File Meta.
#[derive(Debug, Clone)]
pub struct Implementation {
    pub class_uid: String,
    pub version_name: String,
}

/// Preamble, "DICM" and the File Meta group for a data set received on the network.
pub fn file_meta(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax: &str,
    source_ae: &str,
    implementation: &Implementation,
) -> Vec<u8> {
    let mut group = Vec::with_capacity(256);
    meta_element(&mut group, 0x0001, b"OB", &[0, 1]);
    meta_element(&mut group, 0x0002, b"UI", &padded_uid(sop_class_uid));
    meta_element(&mut group, 0x0003, b"UI", &padded_uid(sop_instance_uid));
    meta_element(&mut group, 0x0010, b"UI", &padded_uid(transfer_syntax));
    meta_element(
        &mut group,
        0x0012,
        b"UI",
        &padded_uid(&implementation.class_uid),
    );
    let mut version = implementation.version_name.as_bytes().to_vec();
    if version.len() % 2 == 1 {
        version.push(b' ');
    }
    meta_element(&mut group, 0x0013, b"SH", &version);
    if !source_ae.is_empty() {
        let mut ae = source_ae.as_bytes().to_vec();
        if ae.len() % 2 == 1 {
            ae.push(b' ');
        }
        meta_element(&mut group, 0x0016, b"AE", &ae);
    }
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    meta_element(&mut out, 0x0000, b"UL", &(group.len() as u32).to_le_bytes());
    out.extend_from_slice(&group);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_request_and_response() {
        let mut rq = Vec::new();
        element(&mut rq, 0x0002, b"1.2.840.10008.5.1.4.1.1.2\0");
        element(&mut rq, 0x0100, &C_STORE_RQ.to_le_bytes());
        element(&mut rq, 0x0110, &7u16.to_le_bytes());
        element(&mut rq, 0x0700, &0u16.to_le_bytes());
        element(&mut rq, 0x0800, &0u16.to_le_bytes());
        element(&mut rq, 0x1000, b"1.2.3.4\0");
        let command = parse_command(&rq).unwrap();
        assert_eq!(command.field, C_STORE_RQ);
        assert_eq!(command.message_id, 7);
        assert_eq!(command.affected_sop_instance_uid, "1.2.3.4");
        assert!(command.has_data_set);
        let rsp = parse_command(&response(&command, 0xA700)[..]).unwrap();
        assert_eq!(rsp.field, C_STORE_RSP);
        assert_eq!((rsp.responding_to, rsp.status), (7, 0xA700));
        assert!(!rsp.has_data_set);
        let sub = parse_command(&store_request("1.2", "1.2.3", 9)).unwrap();
        assert_eq!((sub.field, sub.message_id), (C_STORE_RQ, 9));
        assert_eq!(sub.affected_sop_instance_uid, "1.2.3");
        assert!(sub.has_data_set);
        for cut in 0..rq.len() {
            let _ = parse_command(&rq[..cut]);
        }
    }

    #[test]
    fn get_responses_and_failed_list() {
        let mut get = Command {
            field: C_GET_RQ,
            message_id: 3,
            affected_sop_class_uid: "1.2.840.10008.5.1.4.1.2.2.3".into(),
            ..Command::default()
        };
        let counts = SubOperations {
            remaining: 2,
            completed: 5,
            failed: 1,
            warning: 0,
        };
        let pending = retrieve_response(&get, PENDING, counts, false);
        let parsed = parse_command(&pending).unwrap();
        assert_eq!(
            (parsed.field, parsed.status, parsed.responding_to),
            (C_GET_RSP, PENDING, 3)
        );
        assert!(!parsed.has_data_set);
        assert!(pending.windows(4).any(|w| w == [0, 0, 0x20, 0x10]));
        get.message_id = 4;
        let last = retrieve_response(&get, 0xB000, counts, true);
        assert!(parse_command(&last).unwrap().has_data_set);
        assert!(!last.windows(4).any(|w| w == [0, 0, 0x20, 0x10]));
        let uids = ["1.2.3".to_string(), "1.2.45".to_string()];
        assert_eq!(
            failed_instances_identifier(&uids, false),
            b"\x08\x00\x58\x00\x0c\x00\x00\x001.2.3\\1.2.45".to_vec()
        );
        assert_eq!(
            &failed_instances_identifier(&uids, true)[4..8],
            b"UI\x0c\x00"
        );
    }

    #[test]
    fn query_requests_and_retrieve_counts_parse_back() {
        let rq = query_request(
            C_MOVE_RQ,
            "1.2.840.10008.5.1.4.1.2.2.2",
            5,
            Some("DICOMVAULT"),
        );
        let parsed = parse_command(&rq).unwrap();
        assert_eq!((parsed.field, parsed.message_id), (C_MOVE_RQ, 5));
        assert_eq!(parsed.move_destination.trim_end(), "DICOMVAULT");
        assert!(parsed.has_data_set);
        let cancel = parse_command(&cancel_request(5)).unwrap();
        assert_eq!((cancel.field, cancel.responding_to), (C_CANCEL_RQ, 5));
        let counts = SubOperations {
            remaining: 3,
            completed: 4,
            failed: 1,
            warning: 2,
        };
        let rsp = retrieve_response(&parsed, PENDING, counts, false);
        let rsp = parse_command(&rsp).unwrap();
        assert_eq!((rsp.field, rsp.sub_operations), (C_MOVE_RSP, counts));
    }

    #[test]
    fn a_peers_command_may_carry_the_failed_list() {
        let request = Command {
            field: C_GET_RQ,
            message_id: 2,
            ..Command::default()
        };
        let mut rsp = retrieve_response(&request, 0xA702, SubOperations::default(), false);
        rsp.extend_from_slice(&failed_instances_identifier(
            &["1.2.3".into(), "1.4".into()],
            false,
        ));
        assert!(parse_command(&rsp).is_err());
        let parsed = parse_peer_command(&rsp).unwrap();
        assert_eq!(
            (parsed.status, parsed.failed_sop_instance_uids.as_str()),
            (0xA702, "1.2.3\\1.4")
        );
    }
}
