//! The `dicomvault._native` Python module: a thin binding over the scanner and the store.
//! Every call that hashes, compresses or does I/O releases the GIL. What the store returns is
//! typed in `python_results.rs`; the listener is `python_scp.rs`, the SCU `python_scu.rs`,
//! the pixel codecs `python_codec.rs`.

use crate::cas::{
    self, BlobStore, GcEvent, Ingested, ObjectBackend, ObjectBlobStore, ObjectStoreConfig,
    ReadInstances, S3Config, Storage, Store as Packs, StoreConfig, StoreError, SyncMode,
};
use crate::commit::{Journal, Write};
use crate::dimse;
use crate::manifest::Manifest;
use crate::pack::Codec;
use crate::python_results::{
    Collected, GcReport, HistoryEvent, ManifestInfo, RebuildReport, StoreStats, VerifyReport,
};
use crate::scan::{self, Element, FeedError, ScanOptions, SegmentKind, Summary, KNOWN_VRS};
use pyo3::create_exception;
use pyo3::exceptions::{
    PyBlockingIOError, PyFileNotFoundError, PyOSError, PyRuntimeError, PyValueError,
};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyString};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

create_exception!(
    _native,
    ScanError,
    PyValueError,
    "The data set is malformed; the message names the byte offset."
);
create_exception!(
    _native,
    ManifestError,
    PyValueError,
    "Manifest bytes that do not decode."
);

create_exception!(
    _native,
    DamagedError,
    PyOSError,
    "A stored record an instance is made of is missing or fails its checks (checksum, length, \
     hash): the instance cannot be read as it was stored."
);

/// Each kind of store failure as the Python exception that says it: damage as DamagedError,
/// what the store does not hold as FileNotFoundError, a busy archive as BlockingIOError, a
/// full disk and a failed fsync as OSError with ENOSPC and EIO.
impl From<StoreError> for PyErr {
    fn from(e: StoreError) -> PyErr {
        match e {
            StoreError::Damaged(why) => DamagedError::new_err(why),
            StoreError::NotFound(why) => PyFileNotFoundError::new_err(why),
            StoreError::Busy(why) => PyBlockingIOError::new_err(why),
            StoreError::NoRoom(why) => PyOSError::new_err((libc::ENOSPC, why)),
            StoreError::FsyncFailed(why) => PyOSError::new_err((libc::EIO, why)),
            StoreError::Io(io) => io.into(),
            other => PyOSError::new_err(other.to_string()),
        }
    }
}

fn feed_error(e: FeedError) -> PyErr {
    match e {
        FeedError::Scan(s) => ScanError::new_err(s.to_string()),
        FeedError::Io(io) => io.into(),
    }
}

/// A `[storage] compression` setting.
fn codec(name: &str) -> PyResult<Codec> {
    match name {
        "none" => Ok(Codec::Raw),
        "zstd" => Ok(Codec::Zstd),
        other => Err(PyValueError::new_err(format!(
            "unknown compression {other:?} (none or zstd)"
        ))),
    }
}

pub(crate) fn decode_manifest(bytes: &[u8]) -> PyResult<Manifest> {
    Manifest::decode(bytes).map_err(|e| ManifestError::new_err(e.to_string()))
}

fn parse_wanted(wanted: Vec<(u32, String)>) -> PyResult<Vec<(u32, [u8; 2])>> {
    wanted
        .into_iter()
        .map(|(tag, vr)| {
            let b = vr.as_bytes();
            if b.len() != 2 {
                return Err(PyValueError::new_err(format!(
                    "invalid VR {vr:?} for tag {tag:08X}"
                )));
            }
            Ok((tag, [b[0], b[1]]))
        })
        .collect()
}

/// A VR's Python name: those of PS3.5's value representations are made once per process, as
/// every data set repeats them.
fn vr_name<'py>(py: Python<'py>, vr: &[u8; 2]) -> Bound<'py, PyString> {
    static NAMES: PyOnceLock<Vec<Py<PyString>>> = PyOnceLock::new();
    let names = NAMES.get_or_init(py, || {
        KNOWN_VRS
            .iter()
            .map(|v| PyString::intern(py, v).unbind())
            .collect()
    });
    match KNOWN_VRS.binary_search_by(|v| v.as_bytes().cmp(&vr[..])) {
        Ok(i) => names[i].bind(py).clone(),
        Err(_) => PyString::intern(py, std::str::from_utf8(vr).unwrap_or("UN")),
    }
}

fn elements_dict<'py>(py: Python<'py>, elements: &[Element]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for e in elements {
        d.set_item(e.tag, (vr_name(py, &e.vr), PyBytes::new(py, &e.value)))?;
    }
    Ok(d)
}

fn summary_dict<'py>(py: Python<'py>, s: &Summary) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item(intern!(py, "preamble"), s.preamble)?;
    d.set_item(intern!(py, "dataset_offset"), s.dataset_offset)?;
    d.set_item(intern!(py, "transfer_syntax"), &s.transfer_syntax)?;
    d.set_item(
        intern!(py, "transfer_syntax_detected"),
        s.transfer_syntax_detected,
    )?;
    d.set_item(intern!(py, "deflated"), s.deflated)?;
    d.set_item(intern!(py, "size"), s.total_length)?;
    d.set_item(intern!(py, "truncated_at"), s.truncated_at)?;
    d.set_item(intern!(py, "meta"), elements_dict(py, &s.meta)?)?;
    d.set_item(intern!(py, "elements"), elements_dict(py, &s.elements)?)?;
    match &s.pixel_data {
        None => d.set_item(intern!(py, "pixel_data"), py.None())?,
        Some(p) => {
            let pd = PyDict::new(py);
            pd.set_item(intern!(py, "tag"), p.tag)?;
            pd.set_item(intern!(py, "element_offset"), p.element_offset)?;
            pd.set_item(intern!(py, "value_offset"), p.value_offset)?;
            pd.set_item(intern!(py, "value_length"), p.value_length)?;
            pd.set_item(intern!(py, "encapsulated"), p.encapsulated())?;
            pd.set_item(intern!(py, "number_of_frames"), p.number_of_frames)?;
            pd.set_item(intern!(py, "frame_size"), p.frame_size)?;
            pd.set_item(intern!(py, "frames_resolved"), p.frames_resolved)?;
            pd.set_item(
                intern!(py, "basic_offset_table"),
                p.basic_offset_table.clone(),
            )?;
            let fragments: Vec<(u64, u64, u32)> = p
                .fragments
                .iter()
                .map(|f| (f.offset, f.length, f.frame))
                .collect();
            pd.set_item(intern!(py, "fragments"), fragments)?;
            d.set_item(intern!(py, "pixel_data"), pd)?;
        }
    }
    Ok(d)
}

fn ingested_dict<'py>(py: Python<'py>, i: &Ingested) -> PyResult<Bound<'py, PyDict>> {
    let d = summary_dict(py, &i.summary)?;
    d.set_item(
        intern!(py, "manifest"),
        PyBytes::new(py, &i.manifest.encode()),
    )?;
    d.set_item(intern!(py, "new_bytes"), i.new_bytes)?;
    d.set_item(intern!(py, "frames"), i.manifest.frame_count())?;
    // Why the instance cannot be stored as it is (no SOP Class, SOP Instance, Study or Series
    // UID): the listener's own check, for every other way in (STOW-RS, import).
    let refused = crate::identity::identity(&i.summary, None)
        .err()
        .map(|e| e.to_string());
    d.set_item(intern!(py, "identity_error"), refused)?;
    Ok(d)
}

/// A scanner for a set of wanted (tag, VR) pairs, reused across files.
#[pyclass(frozen, module = "dicomvault._native")]
struct Scanner {
    wanted: Vec<(u32, [u8; 2])>,
}

#[pymethods]
impl Scanner {
    #[new]
    #[pyo3(signature = (wanted = Vec::new()))]
    fn new(wanted: Vec<(u32, String)>) -> PyResult<Self> {
        Ok(Scanner {
            wanted: parse_wanted(wanted)?,
        })
    }

    /// Scans a file, reading only its header and fragment items (pixel values are skipped).
    /// A file cut short is reported through "truncated_at", not refused.
    fn scan_file<'py>(&self, py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
        let options = ScanOptions {
            wanted: self.wanted.clone(),
            transfer_syntax: None,
            allow_truncated: true,
        };
        let summary = py
            .detach(|| scan::scan_file(&path, options))
            .map_err(feed_error)?;
        summary_dict(py, &summary)
    }

    /// Scans a file or a bare data set (in `transfer_syntax`) held in memory.
    #[pyo3(signature = (data, transfer_syntax = None, allow_truncated = false))]
    fn scan_bytes<'py>(
        &self,
        py: Python<'py>,
        data: PyBackedBytes,
        transfer_syntax: Option<String>,
        allow_truncated: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let options = ScanOptions {
            wanted: self.wanted.clone(),
            transfer_syntax,
            allow_truncated,
        };
        let summary = py
            .detach(|| scan::scan_bytes(&data, options))
            .map_err(|e| ScanError::new_err(e.to_string()))?;
        summary_dict(py, &summary)
    }
}

/// What a manifest says: sizes, transfer syntax, segments and blob hashes.
#[pyfunction]
fn manifest_info(py: Python<'_>, manifest: &[u8]) -> PyResult<ManifestInfo> {
    ManifestInfo::new(py, &decode_manifest(manifest)?)
}

/// An archive's content-addressed store (see `rust/src/cas.rs`).
#[pyclass(frozen, module = "dicomvault._native")]
pub(crate) struct Store {
    pub(crate) core: Storage,
    /// The one commit path into the pack log, and what the index has yet to apply of it.
    pub(crate) journal: std::sync::Arc<Journal>,
}

impl Store {
    fn over(core: Storage) -> Store {
        Store {
            journal: std::sync::Arc::new(Journal::new(core.clone())),
            core,
        }
    }
}

#[pymethods]
impl Store {
    #[new]
    #[pyo3(signature = (root, *, pack_size = 1 << 30, compression = "none", level = 3, sync = "always", sync_interval_ms = 1000, wanted = Vec::new(), exclusive = false, min_free_space = 0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        root: PathBuf,
        pack_size: u64,
        compression: &str,
        level: i32,
        sync: &str,
        sync_interval_ms: u64,
        wanted: Vec<(u32, String)>,
        exclusive: bool,
        min_free_space: u64,
    ) -> PyResult<Self> {
        let codec = codec(compression)?;
        let sync = match sync {
            "always" => SyncMode::Always,
            "batch" => SyncMode::Batch,
            "never" => SyncMode::Never,
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown sync mode {other:?} (always, batch or never)"
                )))
            }
        };
        let config = StoreConfig {
            pack_size: pack_size.max(1 << 16),
            codec,
            level,
            sync,
            sync_interval: Duration::from_millis(sync_interval_ms),
            wanted: parse_wanted(wanted)?,
            exclusive,
            min_free_space,
        };
        let core = py.detach(|| Packs::open(&root, config))?;
        Ok(Store::over(core.into()))
    }

    /// Node `node`'s store on an S3 bucket: large blobs objects of their own, small ones and
    /// the log in segments (see `cas::storage`). Credentials not given are taken from the
    /// standard `AWS_*` environment variables.
    #[staticmethod]
    #[pyo3(signature = (bucket, *, node, endpoint = None, region = "us-east-1", access_key_id = None, secret_access_key = None, prefix = "", wanted = Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn on_s3(
        py: Python<'_>,
        bucket: String,
        node: u32,
        endpoint: Option<String>,
        region: &str,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
        prefix: &str,
        wanted: Vec<(u32, String)>,
    ) -> PyResult<Self> {
        let s3 = S3Config {
            // Plain HTTP only where the endpoint says so (SeaweedFS on loopback, say).
            allow_http: endpoint.as_deref().is_some_and(|e| {
                e.get(..7)
                    .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://"))
            }),
            endpoint,
            region: region.into(),
            access_key_id,
            secret_access_key,
            ..S3Config::new(bucket)
        };
        let config = ObjectStoreConfig {
            prefix: prefix.into(),
            ..ObjectStoreConfig::new(ObjectBackend::S3(s3))
        };
        let wanted = parse_wanted(wanted)?;
        let core =
            py.detach(|| Storage::on_objects(&ObjectBlobStore::open(&config)?, node, wanted))?;
        Ok(Store::over(core))
    }

    /// Whether the blobs are on an object store (S3) rather than in packs.
    #[getter]
    fn on_objects(&self) -> bool {
        matches!(self.core, Storage::Objects(_))
    }

    /// Repairs made while opening (torn pack tails cut).
    #[getter]
    fn recovery(&self) -> Vec<String> {
        self.core.recovery_messages().to_vec()
    }

    /// OSError when the archive's filesystem has less free space than `min_free_space`.
    fn check_space(&self) -> PyResult<()> {
        Ok(self.core.check_space()?)
    }

    /// Starts streaming an instance: a file (transfer_syntax None) or a bare data set.
    #[pyo3(signature = (transfer_syntax = None, allow_truncated = None))]
    fn writer(
        &self,
        transfer_syntax: Option<String>,
        allow_truncated: Option<bool>,
    ) -> InstanceWriter {
        let mut options = self.core.file_options();
        options.allow_truncated = allow_truncated.unwrap_or(transfer_syntax.is_none());
        options.transfer_syntax = transfer_syntax;
        InstanceWriter {
            inner: Some(self.core.writer(options)),
        }
    }

    /// Stores a file's blobs (not yet durable: call persist with its manifest).
    fn ingest_file<'py>(&self, py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
        let ingested = py
            .detach(|| self.core.ingest_file(&path))
            .map_err(feed_error)?;
        ingested_dict(py, &ingested)
    }

    /// Appends manifest records for accepted instances and makes everything durable.
    /// `items` are (manifest, annotations) pairs; returns where each record ends (its
    /// position in the log).
    fn persist(&self, py: Python<'_>, items: Vec<(Vec<u8>, Vec<u8>)>) -> PyResult<Vec<(u32, u64)>> {
        Ok(py.detach(|| self.core.persist(&items))?)
    }

    /// Records deletions of (manifest, index key) durably, so that rebuilding or replaying
    /// the index from the packs does not resurrect them; returns where each record ends.
    fn tombstone(
        &self,
        py: Python<'_>,
        items: Vec<(Vec<u8>, String)>,
    ) -> PyResult<Vec<(u32, u64)>> {
        Ok(py.detach(|| self.core.tombstone(&items))?)
    }

    /// Manifest and tombstone records after the given {log: position} marks, oldest first,
    /// that this process is to replay (packs no other process is appending to; on S3, this
    /// node's log, or every node's with `every_node`), and the damaged records that may have
    /// been either.
    #[pyo3(signature = (after, every_node = false))]
    fn history(
        &self,
        py: Python<'_>,
        after: HashMap<u32, u64>,
        every_node: bool,
    ) -> PyResult<Vec<HistoryEvent>> {
        let events = py.detach(|| self.core.history(&after, every_node))?;
        Ok(events
            .into_iter()
            .map(|e| HistoryEvent::new(py, e))
            .collect())
    }

    /// Queues an instance prepared in Python — its manifest and annotations (see
    /// `annotations`) — for the next group commit of the pack log; returns the ticket to
    /// `wait_committed` on. The index's applier gets it back from `take_logged` with that
    /// ticket, in log order.
    fn submit_instance(&self, manifest: Vec<u8>, annotations: Vec<u8>) -> u64 {
        self.journal.submit(Write::Prepared {
            manifest,
            annotations,
        })
    }

    /// Queues the deletion of the instance indexed under `key` (whose manifest this is) for
    /// the next group commit, so that rebuilding or replaying the index from the packs does
    /// not bring it back; returns its ticket.
    fn submit_tombstone(&self, manifest: Vec<u8>, key: String) -> u64 {
        self.journal.submit(Write::Tombstone { manifest, key })
    }

    /// Returns once the write of `ticket` is durable in the pack log (committing what waits
    /// when no other writer is); OSError if it could not be made durable.
    fn wait_committed(&self, py: Python<'_>, ticket: u64) -> PyResult<()> {
        py.detach(|| self.journal.wait(ticket))
            .map(|_batch| ())
            .map_err(PyOSError::new_err)
    }

    /// For the index's applier: what the writers made durable since the last call, oldest
    /// first, as (count to pass to `log_applied`, [(pack, end, ticket, write)]). `write` is
    /// an ingested dict for an instance received on an association (with source, `AE@address`,
    /// and received_at), None for an instance submitted with `submit_instance` (its writer
    /// holds its entry) or the key of a tombstone. None once `close_log` was called and all
    /// were taken. Blocks until there is something.
    #[allow(clippy::type_complexity)]
    fn take_logged<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<(u64, Vec<(u32, u64, u64, Bound<'py, PyAny>)>)>> {
        let Some((through, taken)) = py.detach(|| self.journal.backlog().take()) else {
            return Ok(None);
        };
        let items = taken
            .into_iter()
            .map(|((pack, end), logged)| {
                let write = match &logged.write {
                    Write::Received(r) => {
                        let d = ingested_dict(py, &r.ingested)?;
                        d.set_item(intern!(py, "source"), &r.source)?;
                        d.set_item(intern!(py, "received_at"), &r.received_at)?;
                        d.into_any()
                    }
                    Write::Prepared { .. } => py.None().into_bound(py),
                    Write::Tombstone { key, .. } => PyString::new(py, key).into_any(),
                };
                Ok((pack, end, logged.ticket, write))
            })
            .collect::<PyResult<_>>()?;
        Ok(Some((through, items)))
    }

    /// Whether a segment of this node's log on S3 whose put had failed (its C-STOREs refused),
    /// found written since, lies before the log position `before` (the end of the first
    /// record of what `take_logged` returned): its records are to be replayed into the
    /// index before those, as a restart or a reindex would apply them. Each is told once.
    fn take_landed(&self, before: u64) -> bool {
        self.core.take_landed(before)
    }

    /// The applier is done with what `take_logged` returned up to `through` (and no longer
    /// stalled).
    fn log_applied(&self, through: u64) {
        self.journal.backlog().applied(through);
    }

    /// The applier gave up what `take_logged` returned up to `through`, for `why` (left for
    /// the replay at the next open): writers waiting for it to be indexed are told so.
    fn log_given_up(&self, through: u64, why: String) {
        self.journal.backlog().given_up(through, why);
    }

    /// The applier failed to index what it took, for `why`, and will retry: until it has,
    /// writes are refused and `log_barrier` answers `why`.
    fn log_stalled(&self, why: String) {
        self.journal.backlog().stalled(why);
    }

    /// Whether instances received on associations are acknowledged only once indexed (an
    /// index other nodes read), not as soon as they are durable in the log.
    fn acknowledge_indexed(&self, on: bool) {
        self.journal.acknowledge_indexed(on);
    }

    /// Refuses writes before they are acknowledged, for `why` (the index has no room left);
    /// None accepts them again.
    #[pyo3(signature = (why))]
    fn refuse_writes(&self, why: Option<String>) {
        self.journal.backlog().refuse(why);
    }

    /// Returns None once everything written before the call is indexed; or why it cannot
    /// be yet (the applier is stalled).
    fn log_barrier(&self, py: Python<'_>) -> Option<String> {
        py.detach(|| self.journal.backlog().barrier()).err()
    }

    /// Commits what is still queued, then takes no more writes; `take_logged` returns None
    /// once the rest is taken.
    fn close_log(&self, py: Python<'_>) {
        py.detach(|| self.journal.close());
    }

    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| self.core.sync())?)
    }

    /// The instance's bytes from `start` (0: the whole file, File Meta included).
    #[pyo3(signature = (manifest, start = 0))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        manifest: &[u8],
        start: u64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let m = decode_manifest(manifest)?;
        let data = py.detach(|| self.core.read_instance(&m, start))?;
        Ok(PyBytes::new(py, &data))
    }

    /// One frame's pixel bytes (encapsulated: the frame's fragments joined).
    fn read_frame<'py>(
        &self,
        py: Python<'py>,
        manifest: &[u8],
        index: u32,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let m = decode_manifest(manifest)?;
        let data = py.detach(|| self.core.read_frame(&m, index))?;
        Ok(PyBytes::new(py, &data))
    }

    /// Iterates over the instance's bytes from `start`, one blob (at most 8 MiB) at a time.
    #[pyo3(signature = (manifest, start = 0))]
    fn chunks(&self, manifest: &[u8], start: u64) -> PyResult<ChunkReader> {
        let m = decode_manifest(manifest)?;
        Ok(ChunkReader {
            store: self.core.clone(),
            manifest: m,
            next_blob: 0,
            position: 0,
            start,
        })
    }

    /// Whether two stored instances hold the same data set, whatever their File Meta
    /// (DamagedError when one cannot be read).
    fn same_data_set(&self, py: Python<'_>, a: &[u8], b: &[u8]) -> PyResult<bool> {
        let (a, b) = (decode_manifest(a)?, decode_manifest(b)?);
        Ok(py.detach(|| self.core.same_data_set(&a, &b))?)
    }

    /// Reads every blob of the instance and checks it (DamagedError if one fails), keeping
    /// nothing: a response checks before its first byte.
    fn check(&self, py: Python<'_>, manifest: &[u8]) -> PyResult<()> {
        let m = decode_manifest(manifest)?;
        Ok(py.detach(|| self.core.check_instance(&m))?)
    }

    /// Writes the instance to a file, byte-identical to what was stored.
    fn export(&self, py: Python<'_>, manifest: &[u8], path: PathBuf) -> PyResult<()> {
        let m = decode_manifest(manifest)?;
        Ok(py.detach(|| self.core.export(&m, &path))?)
    }

    /// Re-reads every record of every pack and checks it. What it finds damaged is known as
    /// such from then on (a re-sent copy is stored again).
    fn verify(&self, py: Python<'_>) -> PyResult<VerifyReport> {
        let report = py.detach(|| self.core.verify())?;
        VerifyReport::new(py, &report)
    }

    /// Hex hashes of the manifest's blobs that the store does not hold.
    fn missing_blobs(&self, py: Python<'_>, manifest: &[u8]) -> PyResult<Vec<String>> {
        let m = decode_manifest(manifest)?;
        let missing = py.detach(|| -> std::io::Result<Vec<String>> {
            let mut out = Vec::new();
            for b in &m.blobs {
                if !self.core.contains(&b.hash)? {
                    out.push(cas::hex(&b.hash));
                }
            }
            Ok(out)
        })?;
        Ok(missing)
    }

    /// Rescans an instance's header segment (what reindex indexes). A header blob whose record
    /// is damaged is read all the same, as far as it goes; "salvaged" then says so.
    fn rescan<'py>(&self, py: Python<'py>, manifest: &[u8]) -> PyResult<Bound<'py, PyDict>> {
        let m = decode_manifest(manifest)?;
        let mut options = self.core.file_options();
        options.allow_truncated = true;
        if m.dataset_offset == 0 {
            options.transfer_syntax = Some(m.transfer_syntax.clone());
        }
        let (summary, salvaged) = py
            .detach(|| -> Result<(Summary, bool), FeedError> {
                let mut parser = scan::Parser::new(options);
                let mut sink = scan::NullSink;
                let mut salvaged = false;
                for s in &m.segments {
                    if matches!(s.kind, SegmentKind::Frame(_) | SegmentKind::Trailer) {
                        break;
                    }
                    let blobs =
                        &m.blobs[s.first_blob as usize..(s.first_blob + s.blob_count) as usize];
                    for b in blobs {
                        let (data, damaged) = self
                            .core
                            .salvage_blob(&b.hash)
                            .map_err(std::io::Error::from)?;
                        salvaged |= damaged;
                        parser.feed(&data, &mut sink)?;
                    }
                }
                Ok((parser.finish(&mut sink)?, salvaged))
            })
            .map_err(feed_error)?;
        let d = summary_dict(py, &summary)?;
        d.set_item(intern!(py, "salvaged"), salvaged)?;
        Ok(d)
    }

    /// Rebuilds the blob index from the packs alone (torn tails moved to the quarantine).
    fn rebuild_blob_index(&self, py: Python<'_>) -> PyResult<RebuildReport> {
        let report = py.detach(|| self.core.packs("reindex")?.rebuild_blob_index())?;
        RebuildReport::new(py, &report)
    }

    /// gc on S3: moves the blob objects that neither the `live` manifests nor the log after
    /// the index's `marks` reference, written before `trash_before`, to the trash; deletes
    /// those trashed before `delete_before`, puts back those referenced again (times in
    /// seconds since the Unix epoch).
    fn collect(
        &self,
        py: Python<'_>,
        live: Vec<Vec<u8>>,
        marks: HashMap<u32, u64>,
        trash_before: f64,
        delete_before: f64,
    ) -> PyResult<Collected> {
        let manifests = live
            .iter()
            .map(|m| decode_manifest(m))
            .collect::<PyResult<Vec<_>>>()?;
        let at = |seconds: f64| {
            Duration::try_from_secs_f64(seconds)
                .map(|since| std::time::UNIX_EPOCH + since)
                .map_err(|e| PyValueError::new_err(format!("a time before 1970: {e}")))
        };
        let (trash_before, delete_before) = (at(trash_before)?, at(delete_before)?);
        let report = py.detach(|| {
            self.core
                .collect(&manifests, &marks, trash_before, delete_before)
        })?;
        Ok(Collected::new(&report))
    }

    /// Rewrites the packs, pack by pack, while the store is read and written: with `live`
    /// manifests keeping only what they reference (exclusive stores only), else every record;
    /// with `compression` ("none" or "zstd", at `level`) storing every blob anew that way.
    /// `on_event(kind, pack, bytes_before, bytes_after)` hears "claim" for each pack gc is
    /// about to write copies into and "rewritten" for each pack it has replaced.
    #[pyo3(signature = (live = None, compression = None, level = 3, on_event = None))]
    fn gc(
        &self,
        py: Python<'_>,
        live: Option<Vec<Vec<u8>>>,
        compression: Option<&str>,
        level: i32,
        on_event: Option<Py<PyAny>>,
    ) -> PyResult<GcReport> {
        let manifests = live
            .map(|l| {
                l.iter()
                    .map(|m| decode_manifest(m))
                    .collect::<PyResult<Vec<_>>>()
            })
            .transpose()?;
        let recode = compression.map(codec).transpose()?.map(|c| (c, level));
        let report = py.detach(|| {
            self.core
                .packs("gc")?
                .gc(manifests.as_deref(), recode, |event| {
                    let Some(callback) = &on_event else {
                        return Ok(());
                    };
                    let args = match event {
                        GcEvent::Claim(pack) => ("claim", pack, 0, 0),
                        GcEvent::Rewritten {
                            pack,
                            bytes_before,
                            bytes_after,
                        } => ("rewritten", pack, bytes_before, bytes_after),
                    };
                    Python::attach(|py| callback.call1(py, args).map(drop))
                        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))
                })
        })?;
        GcReport::new(py, &report)
    }

    /// {pack id: length} of the packs no other process is appending to.
    fn settled_pack_lengths(&self, py: Python<'_>) -> PyResult<HashMap<u32, u64>> {
        Ok(py.detach(|| match &self.core {
            Storage::Packs(packs) => packs.settled_pack_lengths(),
            Storage::Objects(_) => Ok(HashMap::new()),
        })?)
    }

    fn stats(&self, py: Python<'_>) -> PyResult<StoreStats> {
        Ok(StoreStats::new(py.detach(|| self.core.pack_stats())?))
    }
}

/// A manifest record's annotations (MessagePack): one encoding for every writer.
#[pyfunction]
#[pyo3(signature = (received_at, source, replace = false))]
fn annotations<'py>(
    py: Python<'py>,
    received_at: &str,
    source: &str,
    replace: bool,
) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &cas::annotations(received_at, source, replace))
}

/// A manifest's identity in the log (what a tombstone names and duplicates are logged by):
/// the hex BLAKE3 hash of its bytes.
#[pyfunction]
fn manifest_hash(manifest: &[u8]) -> String {
    cas::hex(blake3::hash(manifest).as_bytes())
}

/// Preamble and File Meta for a data set received on the network, as the listener writes
/// them: one definition for every receiving path.
#[pyfunction]
fn file_meta<'py>(
    py: Python<'py>,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax: &str,
    source_ae: &str,
    implementation_class_uid: &str,
    implementation_version_name: &str,
) -> Bound<'py, PyBytes> {
    let implementation = dimse::Implementation {
        class_uid: implementation_class_uid.to_string(),
        version_name: implementation_version_name.to_string(),
    };
    let meta = dimse::file_meta(
        sop_class_uid,
        sop_instance_uid,
        transfer_syntax,
        source_ae,
        &implementation,
    );
    PyBytes::new(py, &meta)
}

/// Streams one instance into the store; `finish` returns what the scanner found and the manifest.
#[pyclass(module = "dicomvault._native")]
struct InstanceWriter {
    inner: Option<cas::InstanceWriter>,
}

impl InstanceWriter {
    fn take(&mut self) -> PyResult<cas::InstanceWriter> {
        self.inner
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this writer is finished"))
    }
}

#[pymethods]
impl InstanceWriter {
    fn write(&mut self, py: Python<'_>, data: PyBackedBytes) -> PyResult<()> {
        let writer = self
            .inner
            .as_mut()
            .ok_or_else(|| PyRuntimeError::new_err("this writer is finished"))?;
        let result = py.detach(|| writer.write(&data));
        if result.is_err() {
            self.inner = None;
        }
        result.map_err(feed_error)
    }

    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let writer = self.take()?;
        let ingested = py.detach(|| writer.finish()).map_err(feed_error)?;
        ingested_dict(py, &ingested)
    }

    /// Abandons the instance (blobs already appended are reclaimed by gc).
    fn abort(&mut self) {
        self.inner = None;
    }
}

/// Iterator over an instance's bytes, one blob at a time.
#[pyclass(module = "dicomvault._native")]
struct ChunkReader {
    store: Storage,
    manifest: Manifest,
    next_blob: usize,
    position: u64,
    start: u64,
}

#[pymethods]
impl ChunkReader {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        while let Some(blob) = self.manifest.blobs.get(self.next_blob).copied() {
            self.next_blob += 1;
            let begin = self.position;
            self.position += blob.length;
            if self.position <= self.start {
                continue;
            }
            let skip = self.start.saturating_sub(begin);
            let data = py.detach(|| self.store.read_part_from(&blob, skip))?;
            return Ok(Some(PyBytes::new(py, &data)));
        }
        Ok(None)
    }
}

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Store>()?;
    m.add_class::<InstanceWriter>()?;
    m.add_class::<ChunkReader>()?;
    m.add_class::<Scanner>()?;
    crate::python_scp::register(m)?;
    crate::python_scu::register(m)?;
    crate::python_codec::register(m)?;
    m.add_function(wrap_pyfunction!(annotations, m)?)?;
    m.add_function(wrap_pyfunction!(file_meta, m)?)?;
    m.add_function(wrap_pyfunction!(manifest_info, m)?)?;
    m.add_function(wrap_pyfunction!(manifest_hash, m)?)?;
    m.add("ScanError", m.py().get_type::<ScanError>())?;
    m.add("ManifestError", m.py().get_type::<ManifestError>())?;
    m.add("DamagedError", m.py().get_type::<DamagedError>())?;
    crate::python_results::register(m)?;
    m.add("KNOWN_VRS", KNOWN_VRS.to_vec())?;
    m.add("LONG_LENGTH_VRS", crate::scan::LONG_LENGTH_VRS.to_vec())?;
    m.add(
        "STATUS",
        crate::status::ALL
            .iter()
            .copied()
            .collect::<HashMap<_, _>>(),
    )?;
    Ok(())
}
