//! What the store hands back to Python, as read-only objects with typed attributes (stubbed in
//! `python/dicomvault/_native.pyi`): a manifest's description, the pack log's events, the
//! reports of verify, gc and the blob index rebuild, damage, and the store's figures.

use crate::cas::{self, DamageReport, HistoryKind};
use crate::manifest::Manifest;
use crate::pack::RecordKind;
use crate::scan::SegmentKind;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::path::PathBuf;

/// A damaged record or stretch of a pack, or a damaged object on object storage (what
/// `verify`, `reindex`, `gc` and opening report).
#[pyclass(frozen, get_all, module = "dicomvault._native")]
pub(crate) struct Damage {
    pack: u32,
    offset: u64,
    length: u64,
    /// Hex hash and kind ("blob", "manifest", "tombstone") when the record's header is intact.
    hash: Option<String>,
    kind: Option<&'static str>,
    why: String,
    /// A valid copy of the record is stored elsewhere: nothing depends on this one.
    superseded: bool,
    /// Where its bytes were moved, if they were.
    quarantined: Option<PathBuf>,
    /// Where it lies: "pack N at byte O", or "object KEY" on object storage.
    place: String,
    /// One line saying all of the above.
    message: String,
}

impl Damage {
    fn list(py: Python<'_>, reports: &[DamageReport]) -> PyResult<Vec<Py<Damage>>> {
        reports
            .iter()
            .map(|r| {
                let damage = Damage {
                    pack: r.pack,
                    offset: r.offset,
                    length: r.len,
                    hash: r.hash.as_ref().map(cas::hex),
                    kind: r.kind.map(record_kind),
                    why: r.why.clone(),
                    superseded: r.superseded,
                    quarantined: r.quarantined.clone(),
                    place: r.place(),
                    message: r.message(),
                };
                Py::new(py, damage)
            })
            .collect()
    }
}

#[pymethods]
impl Damage {
    fn __repr__(&self) -> String {
        format!("<Damage {}>", self.message)
    }
}

pub(crate) fn record_kind(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Blob => "blob",
        RecordKind::Manifest => "manifest",
        RecordKind::Tombstone => "tombstone",
    }
}

/// One blob of a manifest: its hex hash and length.
#[pyclass(frozen, get_all, module = "dicomvault._native")]
pub(crate) struct ManifestBlob {
    hash: String,
    length: u64,
}

/// A run of a manifest's blobs holding one part of the instance: "header", "frame" (`frame`
/// says which), "trailer", or "opaque" (an instance not split into parts).
#[pyclass(frozen, get_all, module = "dicomvault._native")]
pub(crate) struct ManifestSegment {
    kind: &'static str,
    frame: Option<u32>,
    first_blob: u32,
    blob_count: u32,
}

/// What a manifest says: sizes, transfer syntax, segments and blobs.
#[pyclass(frozen, get_all, module = "dicomvault._native")]
pub(crate) struct ManifestInfo {
    size: u64,
    dataset_offset: u64,
    transfer_syntax: String,
    encapsulated: bool,
    /// Its frames can be read one by one.
    frames_resolved: bool,
    deflated: bool,
    truncated: bool,
    frames: u32,
    blobs: Vec<Py<ManifestBlob>>,
    segments: Vec<Py<ManifestSegment>>,
}

impl ManifestInfo {
    pub(crate) fn new(py: Python<'_>, m: &Manifest) -> PyResult<ManifestInfo> {
        let blobs = m
            .blobs
            .iter()
            .map(|b| {
                let blob = ManifestBlob {
                    hash: cas::hex(&b.hash),
                    length: b.length,
                };
                Py::new(py, blob)
            })
            .collect::<PyResult<_>>()?;
        let segments = m
            .segments
            .iter()
            .map(|s| {
                let (kind, frame) = match s.kind {
                    SegmentKind::Header => ("header", None),
                    SegmentKind::Frame(n) => ("frame", Some(n)),
                    SegmentKind::Trailer => ("trailer", None),
                    SegmentKind::Opaque => ("opaque", None),
                };
                let segment = ManifestSegment {
                    kind,
                    frame,
                    first_blob: s.first_blob,
                    blob_count: s.blob_count,
                };
                Py::new(py, segment)
            })
            .collect::<PyResult<_>>()?;
        Ok(ManifestInfo {
            size: m.total_length,
            dataset_offset: m.dataset_offset,
            transfer_syntax: m.transfer_syntax.clone(),
            encapsulated: m.encapsulated,
            frames_resolved: m.frames_resolved,
            deflated: m.deflated,
            truncated: m.truncated,
            frames: m.frame_count(),
            blobs,
            segments,
        })
    }
}

/// A record of the pack log, in log order: kind "manifest" (an instance stored: `annotations`
/// and `manifest` are its record's), "tombstone" (an instance deleted: `key` is its index
/// key) or "damaged" (a record that may have been either but cannot be read: `why` says where
/// and why). The fields another kind does not use are empty.
#[pyclass(frozen, get_all, module = "dicomvault._native")]
pub(crate) struct HistoryEvent {
    kind: &'static str,
    stamp: u64,
    pack: u32,
    /// Offset just past the record in its pack.
    end: u64,
    annotations: Py<PyBytes>,
    manifest: Py<PyBytes>,
    /// The hex BLAKE3 hash of the manifest the record adds or cancels (empty when damaged).
    target: String,
    key: String,
    why: String,
}

impl HistoryEvent {
    pub(crate) fn new(py: Python<'_>, e: cas::HistoryEvent) -> HistoryEvent {
        let empty = || PyBytes::new(py, b"").unbind();
        let target = match e.kind {
            HistoryKind::Damaged { .. } => String::new(),
            _ => cas::hex(&e.target),
        };
        let (kind, annotations, manifest, key, why) = match e.kind {
            HistoryKind::Manifest {
                annotations,
                manifest,
            } => (
                "manifest",
                PyBytes::new(py, &annotations).unbind(),
                PyBytes::new(py, &manifest).unbind(),
                String::new(),
                String::new(),
            ),
            HistoryKind::Tombstone { key } => ("tombstone", empty(), empty(), key, String::new()),
            HistoryKind::Damaged { kind, offset, why } => (
                "damaged",
                empty(),
                empty(),
                String::new(),
                format!(
                    "{} at byte {offset}: {why}",
                    kind.map_or("a record whose header cannot be read", record_kind)
                ),
            ),
        };
        HistoryEvent {
            kind,
            stamp: e.stamp,
            pack: e.pack,
            end: e.end,
            annotations,
            manifest,
            target,
            key,
            why,
        }
    }
}

/// What `Store.verify` re-read: records and bytes checked, and what it found damaged.
#[pyclass(frozen, get_all, module = "dicomvault._native")]
pub(crate) struct VerifyReport {
    records: u64,
    bytes: u64,
    damaged: Vec<Py<Damage>>,
}

impl VerifyReport {
    pub(crate) fn new(py: Python<'_>, r: &cas::VerifyReport) -> PyResult<VerifyReport> {
        Ok(VerifyReport {
            records: r.records_checked,
            bytes: r.bytes_checked,
            damaged: Damage::list(py, &r.damaged)?,
        })
    }
}

/// What `Store.rebuild_blob_index` indexed, and what it found damaged (torn tails moved to
/// the quarantine).
#[pyclass(frozen, get_all, module = "dicomvault._native")]
pub(crate) struct RebuildReport {
    records: u64,
    damaged: Vec<Py<Damage>>,
}

impl RebuildReport {
    pub(crate) fn new(py: Python<'_>, r: &cas::RebuildReport) -> PyResult<RebuildReport> {
        Ok(RebuildReport {
            records: r.records,
            damaged: Damage::list(py, &r.damaged)?,
        })
    }
}

/// What `Store.gc` rewrote: packs replaced and left as they were, their bytes before and
/// after, blobs kept, records dropped, live blobs the store lacks (hex hashes) and the damage
/// moved to the quarantine rather than copied.
#[pyclass(frozen, get_all, module = "dicomvault._native")]
pub(crate) struct GcReport {
    packs_rewritten: u64,
    packs_skipped: u64,
    bytes_before: u64,
    bytes_after: u64,
    blobs_kept: u64,
    records_dropped: u64,
    missing: Vec<String>,
    damaged: Vec<Py<Damage>>,
}

impl GcReport {
    pub(crate) fn new(py: Python<'_>, r: &cas::GcReport) -> PyResult<GcReport> {
        Ok(GcReport {
            packs_rewritten: r.packs_rewritten,
            packs_skipped: r.packs_skipped,
            bytes_before: r.bytes_before,
            bytes_after: r.bytes_after,
            blobs_kept: r.blobs_kept,
            records_dropped: r.records_dropped,
            missing: r.missing.iter().map(cas::hex).collect(),
            damaged: Damage::list(py, &r.damaged)?,
        })
    }
}

/// What gc on S3 did (`Store.collect`): blob objects looked at, moved to the trash (and their
/// bytes), left for being recent, put back from the trash, deleted from it (and their bytes),
/// and stale uploads deleted.
#[pyclass(frozen, get_all, module = "dicomvault._native")]
pub(crate) struct Collected {
    blobs: u64,
    trashed: u64,
    trashed_bytes: u64,
    recent: u64,
    restored: u64,
    deleted: u64,
    deleted_bytes: u64,
    stale_uploads: u64,
}

impl Collected {
    pub(crate) fn new(r: &cas::Collected) -> Collected {
        Collected {
            blobs: r.blobs,
            trashed: r.trashed,
            trashed_bytes: r.trashed_bytes,
            recent: r.recent,
            restored: r.restored,
            deleted: r.deleted,
            deleted_bytes: r.deleted_bytes,
            stale_uploads: r.stale_uploads,
        }
    }
}

/// The packs' figures: how many, their bytes, and the records the blob index holds.
#[pyclass(frozen, get_all, module = "dicomvault._native")]
pub(crate) struct StoreStats {
    packs: u64,
    pack_bytes: u64,
    records: u64,
}

impl StoreStats {
    pub(crate) fn new((packs, pack_bytes, records): (u64, u64, u64)) -> StoreStats {
        StoreStats {
            packs,
            pack_bytes,
            records,
        }
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Damage>()?;
    m.add_class::<ManifestBlob>()?;
    m.add_class::<ManifestSegment>()?;
    m.add_class::<ManifestInfo>()?;
    m.add_class::<HistoryEvent>()?;
    m.add_class::<VerifyReport>()?;
    m.add_class::<RebuildReport>()?;
    m.add_class::<GcReport>()?;
    m.add_class::<Collected>()?;
    m.add_class::<StoreStats>()?;
    Ok(())
}
