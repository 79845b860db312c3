//! C-FIND as SCU: one request, its pending responses' identifiers decoded as they arrive.

use super::association::{Association, Pdv};
use super::identifier::{self, Key};
use super::ScuError;
use crate::dimse;
use crate::status::{PENDING, PENDING_WARNING};

/// What a C-FIND returned: its final status and every match's values of the wanted keys.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub status: u16,
    pub matches: Vec<Vec<(u32, String)>>,
}

/// Whether a status is a pending one (a match follows).
pub fn is_pending(status: u16) -> bool {
    status == PENDING || status == PENDING_WARNING
}

/// C-FIND in the information model `model` at `level` with `keys`; each match's values of
/// `wanted` (tag, VR), decoded as they arrive. The final status may be Cancel (0xFE00): some
/// SCPs end early that way past their result limit, after the matches they did send. With a
/// `limit`, a C-CANCEL-RQ goes when a match past it arrives (PS3.7 9.3.2.3), and what the SCP
/// sends before its final response is dropped.
pub fn find(
    association: &mut Association,
    model: &str,
    level: &str,
    keys: &[Key],
    wanted: &[(u32, [u8; 2])],
    limit: Option<usize>,
) -> Result<Found, ScuError> {
    let (context_id, syntax) = association
        .context(model)
        .ok_or_else(|| ScuError::NoContext(model.to_string()))?;
    let syntax = syntax.to_string();
    let message_id = association.message_id();
    let request = dimse::query_request(dimse::C_FIND_RQ, model, message_id, None);
    association.send(
        context_id,
        &request,
        Some(&identifier::encode(level, keys, &syntax)),
    )?;
    let mut found = Found::default();
    let mut identifier: Option<Vec<u8>> = None;
    let mut done = false;
    let (mut past_limit, mut cancelled) = (false, false);
    while !done {
        if past_limit && !cancelled {
            association.send(context_id, &dimse::cancel_request(message_id), None)?;
            cancelled = true;
        }
        association.next(|pdv| {
            match pdv {
                Pdv::Command(_, command) => {
                    if command.field != dimse::C_FIND_RSP || command.responding_to != message_id {
                        return Err(ScuError::Protocol(format!(
                            "command 0x{:04X} answering C-FIND {message_id}",
                            command.field
                        )));
                    }
                    if is_pending(command.status) && command.has_data_set {
                        identifier = Some(Vec::new());
                    } else if !is_pending(command.status) {
                        found.status = command.status;
                        done = true;
                    }
                }
                Pdv::Data { data, last, .. } => {
                    let Some(bytes) = identifier.as_mut() else {
                        return Err(ScuError::Protocol("a data set without its command".into()));
                    };
                    bytes.extend_from_slice(data);
                    if last {
                        let bytes = identifier.take().unwrap_or_default();
                        if limit.is_some_and(|limit| found.matches.len() >= limit) {
                            past_limit = true;
                            return Ok(());
                        }
                        let values = identifier::decode(&bytes, &syntax, wanted).map_err(|e| {
                            ScuError::Protocol(format!("an unreadable response identifier: {e}"))
                        })?;
                        found.matches.push(values);
                    }
                }
            }
            Ok(())
        })?;
    }
    Ok(found)
}
