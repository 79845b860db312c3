//! The log of manifest and tombstone records that the index is rebuilt and replayed from.

use super::{Result, Store};
use crate::manifest::Hash;
use crate::pack::{self, Found, RecordKind, PACK_HEADER_LEN};
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// What a manifest or tombstone record says (see [`Store::history`]).
#[derive(Debug, Clone)]
pub enum HistoryKind {
    Manifest {
        annotations: Vec<u8>,
        manifest: Vec<u8>,
    },
    /// The index key of the deleted instance.
    Tombstone { key: String },
    /// A record that may have been a manifest or a tombstone (its kind, when its header is
    /// intact) but cannot be read: what it recorded cannot be replayed.
    Damaged {
        kind: Option<RecordKind>,
        offset: u64,
        why: String,
    },
}

#[derive(Debug, Clone)]
pub struct HistoryEvent {
    pub stamp: u64,
    pub pack: u32,
    /// Offset just past the record in its pack.
    pub end: u64,
    /// BLAKE3 hash of the manifest the record adds or cancels.
    pub target: Hash,
    pub kind: HistoryKind,
}

impl HistoryEvent {
    /// A record or stretch that may have been a manifest or a tombstone but cannot be read.
    pub(crate) fn damaged(
        pack: u32,
        offset: u64,
        end: u64,
        kind: Option<RecordKind>,
        why: String,
    ) -> HistoryEvent {
        HistoryEvent {
            stamp: 0,
            pack,
            end,
            target: [0; 32],
            kind: HistoryKind::Damaged { kind, offset, why },
        }
    }

    /// Manifest payload: stamp, annotations length, annotations, manifest. Tombstone payload:
    /// stamp, manifest hash, index key.
    pub(super) fn parse(
        kind: RecordKind,
        payload: &[u8],
        pack: u32,
        end: u64,
    ) -> Option<HistoryEvent> {
        let stamp = u64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
        let (target, kind) = match kind {
            RecordKind::Tombstone => {
                let target: Hash = payload.get(8..40)?.try_into().ok()?;
                let key = String::from_utf8_lossy(&payload[40..]).into_owned();
                (target, HistoryKind::Tombstone { key })
            }
            RecordKind::Manifest => {
                let n = u32::from_le_bytes(payload.get(8..12)?.try_into().ok()?) as usize;
                let annotations = payload.get(12..12usize.checked_add(n)?)?.to_vec();
                let manifest = payload[12 + n..].to_vec();
                let target = *blake3::hash(&manifest).as_bytes();
                (
                    target,
                    HistoryKind::Manifest {
                        annotations,
                        manifest,
                    },
                )
            }
            RecordKind::Blob => return None,
        };
        Some(HistoryEvent {
            stamp,
            pack,
            end,
            target,
            kind,
        })
    }
}

/// A manifest record's annotations: a MessagePack map of the instance's `received_at` and
/// `source`, which the index records and a replay restores, and `replace: true` when the
/// instance replaces one stored before with other bytes (`[storage] on_duplicate`), so that a
/// replay decides as the writer did.
pub fn annotations(received_at: &str, source: &str, replace: bool) -> Vec<u8> {
    fn str(out: &mut Vec<u8>, s: &str) {
        match s.len() {
            n @ 0..=31 => out.push(0xa0 | n as u8),
            n @ 32..=255 => out.extend_from_slice(&[0xd9, n as u8]),
            n @ 256..=65_535 => {
                out.push(0xda);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0xdb);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = vec![if replace { 0x83 } else { 0x82 }];
    str(&mut out, "received_at");
    str(&mut out, received_at);
    str(&mut out, "source");
    str(&mut out, source);
    if replace {
        str(&mut out, "replace");
        out.push(0xc3);
    }
    out
}

/// `time` in UTC as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn utc_timestamp(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_micros()
    )
}

impl Store {
    /// Manifest and tombstone records that lie after the given offsets of their packs (all
    /// of them for a pack not in `after`), oldest first, and the damaged records and
    /// stretches among them that may have been either (first: their stamp is unknown). With `settled_only`, packs another
    /// process is appending to are left out: their records are that process's to index.
    pub fn history(
        &self,
        after: &HashMap<u32, u64>,
        settled_only: bool,
    ) -> Result<Vec<HistoryEvent>> {
        self.commit()?;
        let mut events = Vec::new();
        for id in pack::list_packs(&self.inner.packs_dir)? {
            let Some(file) = self.listed_pack(id, settled_only)? else {
                continue;
            };
            let from = after.get(&id).copied().unwrap_or(PACK_HEADER_LEN);
            if from > file.metadata()?.len() {
                continue;
            }
            let len = file.metadata()?.len();
            let walk = pack::walk(&file, from.max(PACK_HEADER_LEN), len, false)?;
            for Found { offset, header } in walk.found {
                if header.kind == RecordKind::Blob {
                    continue;
                }
                let end = offset + header.record_len();
                let event = pack::read_payload(&file, offset, &header).and_then(|payload| {
                    HistoryEvent::parse(header.kind, &payload, id, end)
                        .ok_or_else(|| "the record cannot be decoded".to_string())
                });
                events.push(event.unwrap_or_else(|why| {
                    HistoryEvent::damaged(id, offset, end, Some(header.kind), why)
                }));
            }
            // A stretch whose header cannot be read may have held a manifest or a tombstone.
            for d in walk.damaged.iter().chain(&walk.torn) {
                events.push(HistoryEvent::damaged(
                    id,
                    d.offset,
                    d.offset + d.len,
                    None,
                    d.why.clone(),
                ));
            }
        }
        events.sort_by_key(|e| (e.stamp, e.pack, e.end));
        Ok(events)
    }
}
