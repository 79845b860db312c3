//! Query identifiers: a request's keys encoded in the transfer syntax of its context, and
//! response identifiers decoded once, by the scanner, into the values asked for.

use crate::scan::{self, ScanError, ScanOptions};

/// (0008,0052) Query/Retrieve Level.
pub const QUERY_RETRIEVE_LEVEL: u32 = 0x0008_0052;
use crate::scan::EXPLICIT_VR_LITTLE_ENDIAN as EXPLICIT_VR_LE;

/// One key of a request: a value to match, or "" to have it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub tag: u32,
    pub vr: [u8; 2],
    pub value: String,
}

fn element(out: &mut Vec<u8>, key: &Key, explicit: bool) {
    let mut value = key.value.as_bytes().to_vec();
    if value.len() % 2 == 1 {
        value.push(if &key.vr == b"UI" { 0 } else { b' ' });
    }
    out.extend_from_slice(&((key.tag >> 16) as u16).to_le_bytes());
    out.extend_from_slice(&(key.tag as u16).to_le_bytes());
    if !explicit {
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else if scan::has_long_length(key.vr) {
        out.extend_from_slice(&key.vr);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&key.vr);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(&value);
}

/// The identifier of a request at `level` (STUDY, SERIES, IMAGE...) with `keys`, in Explicit
/// or Implicit VR Little Endian as `transfer_syntax` says.
pub fn encode(level: &str, keys: &[Key], transfer_syntax: &str) -> Vec<u8> {
    let explicit = transfer_syntax == EXPLICIT_VR_LE;
    let mut all: Vec<Key> = keys
        .iter()
        .filter(|k| k.tag != QUERY_RETRIEVE_LEVEL)
        .cloned()
        .collect();
    all.push(Key {
        tag: QUERY_RETRIEVE_LEVEL,
        vr: *b"CS",
        value: level.to_string(),
    });
    all.sort_by_key(|k| k.tag);
    all.dedup_by_key(|k| k.tag);
    let mut out = Vec::with_capacity(64 * all.len());
    for key in &all {
        element(&mut out, key, explicit);
    }
    out
}

/// The values of `wanted` (tag, VR) in a response identifier: text as sent, without its
/// padding, numbers as DICOM text; a tag absent from the identifier is left out.
pub fn decode(
    identifier: &[u8],
    transfer_syntax: &str,
    wanted: &[(u32, [u8; 2])],
) -> Result<Vec<(u32, String)>, ScanError> {
    let summary = scan::scan_bytes(
        identifier,
        ScanOptions {
            wanted: wanted.to_vec(),
            transfer_syntax: Some(transfer_syntax.to_string()),
            allow_truncated: false,
        },
    )?;
    Ok(wanted
        .iter()
        .filter_map(|(tag, _)| {
            let element = summary.elements.iter().find(|e| e.tag == *tag)?;
            let text = String::from_utf8_lossy(&element.value);
            Some((
                *tag,
                text.trim_matches(|c| c == ' ' || c == '\0').to_string(),
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::IMPLICIT_VR_LITTLE_ENDIAN;

    const STUDY_UID: u32 = 0x0020_000D;
    const COUNT: u32 = 0x0020_1208;

    #[test]
    fn keys_encode_and_decode_back_in_both_syntaxes() {
        let keys = [
            Key {
                tag: STUDY_UID,
                vr: *b"UI",
                value: "1.2.3".into(),
            },
            Key {
                tag: 0x0008_0020,
                vr: *b"DA",
                value: "20200101-20201231".into(),
            },
            Key {
                tag: COUNT,
                vr: *b"IS",
                value: String::new(),
            },
        ];
        for ts in [EXPLICIT_VR_LE, IMPLICIT_VR_LITTLE_ENDIAN] {
            let encoded = encode("STUDY", &keys, ts);
            assert_eq!(encoded.len() % 2, 0);
            let wanted = [
                (QUERY_RETRIEVE_LEVEL, *b"CS"),
                (STUDY_UID, *b"UI"),
                (0x0008_0020, *b"DA"),
                (COUNT, *b"IS"),
            ];
            let decoded = decode(&encoded, ts, &wanted).unwrap();
            assert_eq!(
                decoded,
                vec![
                    (QUERY_RETRIEVE_LEVEL, "STUDY".to_string()),
                    (STUDY_UID, "1.2.3".to_string()),
                    (0x0008_0020, "20200101-20201231".to_string()),
                    (COUNT, String::new()),
                ],
                "{ts}"
            );
        }
    }
}
