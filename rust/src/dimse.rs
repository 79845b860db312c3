//! DIMSE command sets (PS3.7 9.3, E.1): reading C-STORE-RQ and C-ECHO-RQ, writing their
//! responses, and the File Meta a received data set is stored with (PS3.10 7.1).

pub const C_STORE_RQ: u16 = 0x0001;
pub const C_STORE_RSP: u16 = 0x8001;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
const NO_DATA_SET: u16 = 0x0101;

/// The fields of a request command that the storage SCP acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    pub field: u16,
    pub message_id: u16,
    pub affected_sop_class_uid: String,
    pub affected_sop_instance_uid: String,
    pub has_data_set: bool,
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
pub fn parse_command(mut bytes: &[u8]) -> Result<Command, String> {
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
        if group != 0x0000 {
            return Err(format!(
                "element ({group:04X},{element:04X}) in a command set"
            ));
        }
        let value = bytes
            .get(8..8usize.saturating_add(length))
            .ok_or_else(|| format!("command element (0000,{element:04X}) runs past the command"))?;
        match element {
            0x0002 => command.affected_sop_class_uid = uid(value),
            0x0100 => {
                command.field = us(value).ok_or("short CommandField")?;
                seen_field = true;
            }
            0x0110 => command.message_id = us(value).ok_or("short MessageID")?,
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

/// A response command: C-STORE-RSP (with the affected SOP instance) or C-ECHO-RSP.
pub fn response(request: &Command, status: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(160);
    element(
        &mut body,
        0x0002,
        &padded_uid(&request.affected_sop_class_uid),
    );
    let field = if request.field == C_STORE_RQ {
        C_STORE_RSP
    } else {
        C_ECHO_RSP
    };
    element(&mut body, 0x0100, &field.to_le_bytes());
    element(&mut body, 0x0120, &request.message_id.to_le_bytes());
    element(&mut body, 0x0800, &NO_DATA_SET.to_le_bytes());
    element(&mut body, 0x0900, &status.to_le_bytes());
    if request.field == C_STORE_RQ {
        element(
            &mut body,
            0x1000,
            &padded_uid(&request.affected_sop_instance_uid),
        );
    }
    let mut out = Vec::with_capacity(body.len() + 12);
    element(&mut out, 0x0000, &(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
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
        assert!(!rsp.has_data_set);
        for cut in 0..rq.len() {
            let _ = parse_command(&rq[..cut]);
        }
    }
}
