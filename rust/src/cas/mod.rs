//! The content-addressed store: instances as manifests of BLAKE3-addressed blobs in packs.
//!
//! Blobs are appended to the process's open packs (one writer per pack, guarded by an advisory
//! lock, so several processes can share an archive; a large blob is streamed into a pack of its
//! own holding while it arrives, so concurrent writers use as many packs as they need) and found again through a blob index, an
//! LMDB environment under `<root>/blobs`, that maps each hash to its place in a pack. The blob
//! index is only a cache of the packs: it records how far it has indexed each pack, and opening
//! the store indexes (and, for a torn last record, cuts) whatever lies beyond.
//!
//! Durability is a group commit: writers append without syncing, then [`Store::commit`] makes
//! everything appended so far durable with one fdatasync per touched pack and one blob-index
//! transaction; callers that arrive while a commit runs find their records already covered.
//!
//! The module is split by concern: `blobs` (the [`BlobStore`] seam that instances are read and
//! ingested through), `pack_blobs` (the packs as a blob store), `memory` (blobs held in memory),
//! `object` (blobs as objects in S3 or another object store, and its log of segments),
//! `storage` (the archive's one handle over the packs or an object store, with its log),
//! `ingest` (streaming an instance in), `read` (frames and whole instances out), `history` (the
//! log of manifests and tombstones), `gc` (rewriting packs), `recovery` (what opening, reindex
//! and verify find in the packs), `early_sync`. What lies below the seam is per backend; the
//! packs' log, gc and recovery are their own.

mod blobs;
mod early_sync;
mod error;
mod gc;
mod history;
mod ingest;
mod memory;
mod object;
mod pack_blobs;
mod read;
mod recovery;
mod storage;

pub use blobs::{BlobStore, BlobWriter};
use early_sync::{EarlySync, FsyncFailure};
use error::Result;
pub use error::StoreError;
pub use gc::{GcEvent, GcReport};
pub use history::{annotations, utc_timestamp, HistoryEvent, HistoryKind};
pub use ingest::{Ingested, InstanceWriter};
pub use memory::MemoryBlobStore;
pub use object::{
    Collected, LogReport, ObjectBackend, ObjectBlobStore, ObjectLog, ObjectStoreConfig, S3Config,
    SegmentBlob, SegmentId, SegmentRecord, SegmentedBlobStore, S3_MIN_PART, SEGMENT_BLOB_MAX,
};
pub use read::ReadInstances;
pub use recovery::{DamageReport, RebuildReport, VerifyReport};
pub use storage::{Objects, Position, Storage};

use crate::manifest::Hash;
use crate::pack::{self, Codec, RecordHeader, RecordKind, PACK_HEADER_LEN, RECORD_HEADER_LEN};
use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Blobs larger than this are split, so a writer never buffers more than this per segment.
pub const MAX_BLOB: usize = 8 << 20;
/// Records at least this large are fsynced in the background as soon as they are appended
/// (and a blob streaming into its pack every time this much more of it has arrived).
const EARLY_SYNC: u64 = 64 << 10;
/// A blob growing past this is written into its pack as its bytes arrive (hashed on the way),
/// so that making it durable overlaps the receive and the commit finds little left to flush.
const STREAM_BLOB: usize = 128 << 10;

/// When appended records are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Every commit fsyncs before returning: nothing acknowledged is lost, even on power loss.
    Always,
    /// Commits reach the OS at once (a killed process loses nothing) but are fsynced at most every
    /// `sync_interval`: a power loss can lose that window.
    Batch,
    /// Never fsync: for scratch archives and benchmarks.
    Never,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub pack_size: u64,
    pub codec: Codec,
    pub level: i32,
    pub sync: SyncMode,
    pub sync_interval: Duration,
    /// Tags whose values ingest collects (see [`ScanOptions::wanted`]).
    pub wanted: Vec<(u32, [u8; 2])>,
    /// Open for maintenance that rewrites packs (gc, reindex): no other process may use it.
    pub exclusive: bool,
    /// Instances are refused (before they are acknowledged) once the archive's filesystem has
    /// less than this many bytes free, so that what was acknowledged can still be indexed.
    pub min_free_space: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            pack_size: 1 << 30,
            codec: Codec::Raw,
            level: 3,
            sync: SyncMode::Always,
            sync_interval: Duration::from_secs(1),
            wanted: Vec::new(),
            exclusive: false,
            min_free_space: 0,
        }
    }
}

/// Where a record lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    pub offset: u64,
    pub stored_len: u64,
    pub raw_len: u64,
}

impl Location {
    fn encode(&self) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[0..4].copy_from_slice(&self.pack.to_le_bytes());
        b[4..12].copy_from_slice(&self.offset.to_le_bytes());
        b[12..20].copy_from_slice(&self.stored_len.to_le_bytes());
        b[20..28].copy_from_slice(&self.raw_len.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Location> {
        if b.len() != 28 {
            return Err(invalid("blob index entry has the wrong size"));
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Ok(Location {
            pack: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
            offset: u64_at(4),
            stored_len: u64_at(12),
            raw_len: u64_at(20),
        })
    }
}

/// A record (or an index entry) found not to be what it must be.
fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::Damaged(message.into())
}

/// A blob's record: compressed with `codec` where that saves space, stored as is otherwise.
fn blob_record(
    hash: Hash,
    raw: &[u8],
    codec: Codec,
    level: i32,
) -> Result<(RecordHeader, Cow<'_, [u8]>)> {
    let (codec, stored): (Codec, Cow<[u8]>) = match codec {
        Codec::Zstd => {
            let packed = zstd::bulk::compress(raw, level)?;
            if packed.len() < raw.len() {
                (Codec::Zstd, Cow::Owned(packed))
            } else {
                (Codec::Raw, Cow::Borrowed(raw))
            }
        }
        Codec::Raw => (Codec::Raw, Cow::Borrowed(raw)),
    };
    let header = RecordHeader {
        kind: RecordKind::Blob,
        codec,
        raw_len: raw.len() as u64,
        stored_len: stored.len() as u64,
        hash,
        payload_crc: crc32fast::hash(&stored),
    };
    Ok((header, stored))
}

pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

struct Active {
    id: u32,
    file: Arc<File>,
    len: u64,
}

#[derive(Default)]
struct Appender {
    /// Packs open for appending that no streaming blob holds right now.
    idle: Vec<Active>,
    /// Every pack open for appending: the idle ones and those streaming blobs hold (which gc
    /// must leave alone).
    open: HashSet<u32>,
    /// Records appended but not yet in the blob index, in append order.
    unindexed: Vec<(Hash, Location)>,
    lookup: HashMap<Hash, Location>,
    /// Packs appended to since the last commit, with their length after the last append.
    written: HashMap<u32, (Arc<File>, u64)>,
    seq: u64,
}

impl Appender {
    /// Registers a record just written at `offset` of `act` (whose length already includes it).
    fn appended(
        &mut self,
        act: &Active,
        hash: Hash,
        offset: u64,
        header: &RecordHeader,
    ) -> Location {
        let loc = Location {
            pack: act.id,
            offset,
            stored_len: header.stored_len,
            raw_len: header.raw_len,
        };
        self.written.insert(act.id, (act.file.clone(), act.len));
        self.unindexed.push((hash, loc));
        self.lookup.insert(hash, loc);
        self.seq += 1;
        loc
    }
}

struct CommitState {
    committed: u64,
    last_sync: Instant,
    /// Packs written since their last fdatasync.
    unsynced: HashMap<u32, Arc<File>>,
}

struct Inner {
    packs_dir: PathBuf,
    config: StoreConfig,
    env: Env,
    blobs: Database<Bytes, Bytes>,
    packs: Database<Bytes, Bytes>,
    /// Records whose header is intact but whose payload is not (hash -> place): never found
    /// by `contains` (so a re-sent copy is stored again), read only to salvage what is left.
    damaged: Database<Bytes, Bytes>,
    /// Where bytes that opening or gc must take out of a pack are moved, never deleted.
    quarantine_dir: PathBuf,
    appender: Mutex<Appender>,
    readers: RwLock<HashMap<u32, Arc<File>>>,
    /// Packs this process has appended to (and holds locked).
    own: Mutex<HashSet<u32>>,
    commit: Mutex<CommitState>,
    /// Held while a gc runs: one at a time.
    gc: Mutex<()>,
    stamp: AtomicU64,
    recovery: Vec<String>,
    /// Makes packs durable in the background as records are appended (sync = always only).
    early_sync: Option<EarlySync>,
    /// An fsync of a pack failed: every later commit fails until a restart.
    fsync_failure: FsyncFailure,
    _archive_lock: File,
}

/// A record of the log that is not a blob: what the index is made from.
pub enum LogRecord<'a> {
    /// An accepted instance: its manifest, and the annotations the index records with it
    /// (receive time, source, whether it replaces an instance stored with other bytes).
    Manifest {
        manifest: &'a [u8],
        annotations: &'a [u8],
    },
    /// The deletion of the instance indexed under `key`, whose manifest this is.
    Tombstone { manifest: &'a [u8], key: &'a str },
}

impl LogRecord<'_> {
    fn kind(&self) -> RecordKind {
        match self {
            LogRecord::Manifest { .. } => RecordKind::Manifest,
            LogRecord::Tombstone { .. } => RecordKind::Tombstone,
        }
    }

    /// The record's payload, as [`HistoryEvent`] reads it back. Manifest: stamp, annotations
    /// length, annotations, manifest. Tombstone: stamp, the manifest's hash, the index key.
    fn payload(&self, stamp: u64) -> Vec<u8> {
        let mut payload = stamp.to_le_bytes().to_vec();
        match self {
            LogRecord::Manifest {
                manifest,
                annotations,
            } => {
                payload.extend_from_slice(&(annotations.len() as u32).to_le_bytes());
                payload.extend_from_slice(annotations);
                payload.extend_from_slice(manifest);
            }
            LogRecord::Tombstone { manifest, key } => {
                payload.extend_from_slice(blake3::hash(manifest).as_bytes());
                payload.extend_from_slice(key.as_bytes());
            }
        }
        payload
    }
}

/// A log record's stamp: the time in microseconds, past `last` (the last one given out).
fn next_stamp(last: &AtomicU64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut current = last.load(Ordering::Relaxed);
    loop {
        let next = now.max(current + 1);
        match last.compare_exchange(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => current = seen,
        }
    }
}

/// The header of a record whose payload is stored as it is.
fn raw_record(kind: RecordKind, payload: &[u8]) -> RecordHeader {
    RecordHeader {
        kind,
        codec: Codec::Raw,
        raw_len: payload.len() as u64,
        stored_len: payload.len() as u64,
        hash: *blake3::hash(payload).as_bytes(),
        payload_crc: crc32fast::hash(payload),
    }
}

/// A handle on an archive's store; cheap to clone and safe to share between threads. It is the
/// packs' [`BlobStore`] and, above it, the log of manifests and tombstones in the same packs.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these structures half-updated in a way that matters more
    // than refusing all further work would.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    pub fn open(root: &Path, mut config: StoreConfig) -> Result<Store> {
        add_identity_tags(&mut config.wanted);
        let packs_dir = root.join("packs");
        let index_dir = root.join("blobs");
        fs::create_dir_all(&packs_dir)?;
        fs::create_dir_all(&index_dir)?;
        let archive_lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("LOCK"))?;
        if !pack::flock(&archive_lock, config.exclusive, false)? {
            return Err(StoreError::Busy(
                if config.exclusive {
                    "the archive is in use by another process (stop it before gc or reindex)"
                } else {
                    "the archive is locked by a running gc or reindex"
                }
                .into(),
            ));
        }
        // The blob index is a cache of the packs: what it lost in a crash is walked again at
        // open, so it is never fsynced per commit (`sync` checkpoints it). The packs' own
        // fdatasync is what makes a commit durable.
        let flags = EnvFlags::NO_SYNC;
        let mut options = EnvOpenOptions::new();
        options.map_size(1 << 40).max_dbs(4).max_readers(1024);
        // SAFETY: heed requires that the environment is not opened twice in one process with
        // different options and that its files are not modified behind LMDB's back; the store
        // owns `<root>/blobs` and the Python layer opens one Store per root.
        let env = unsafe {
            options.flags(flags);
            options.open(&index_dir)
        }?;
        let mut wtxn = env.write_txn()?;
        let blobs = env.create_database(&mut wtxn, Some("blobs"))?;
        let packs = env.create_database(&mut wtxn, Some("packs"))?;
        let damaged = env.create_database(&mut wtxn, Some("damaged"))?;
        wtxn.commit()?;
        let fsync_failure = FsyncFailure::default();
        let early_sync = match config.sync {
            SyncMode::Always => Some(EarlySync::start(fsync_failure.clone())?),
            SyncMode::Batch | SyncMode::Never => None,
        };
        let mut inner = Inner {
            packs_dir,
            config,
            env,
            blobs,
            packs,
            damaged,
            quarantine_dir: root.join("quarantine"),
            appender: Mutex::new(Appender::default()),
            readers: RwLock::new(HashMap::new()),
            own: Mutex::new(HashSet::new()),
            gc: Mutex::new(()),
            commit: Mutex::new(CommitState {
                committed: 0,
                last_sync: Instant::now(),
                unsynced: HashMap::new(),
            }),
            stamp: AtomicU64::new(0),
            recovery: Vec::new(),
            early_sync,
            fsync_failure,
            _archive_lock: archive_lock,
        };
        inner.recover()?;
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// What opening the store found and repaired (damaged records skipped, torn tails moved
    /// to the quarantine), one message each.
    pub fn recovery_messages(&self) -> &[String] {
        &self.inner.recovery
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    fn location(&self, hash: &Hash) -> Result<Option<Location>> {
        if let Some(loc) = lock(&self.inner.appender).lookup.get(hash) {
            return Ok(Some(*loc));
        }
        let rtxn = self.inner.env.read_txn()?;
        match self.inner.blobs.get(&rtxn, hash)? {
            Some(b) => Ok(Some(Location::decode(b)?)),
            None => Ok(None),
        }
    }

    /// Appends a record and returns where it went; with `dedup`, nothing (None) when a record
    /// with its hash was appended meanwhile.
    fn append(&self, header: RecordHeader, stored: &[u8], dedup: bool) -> Result<Option<Location>> {
        let inner = &*self.inner;
        let mut a = lock(&inner.appender);
        if dedup && a.lookup.contains_key(&header.hash) {
            return Ok(None);
        }
        let record_len = header.record_len();
        let mut act = self.take_pack(&mut a, record_len)?;
        let offset = act.len;
        let written = act
            .file
            .write_all_at(&header.encode(), offset)
            .and_then(|()| act.file.write_all_at(stored, offset + RECORD_HEADER_LEN));
        if let Err(e) = written {
            // Leave no partial record behind (a full disk, say): the pack ends where it did.
            let _ = act.file.set_len(offset);
            a.idle.push(act);
            return Err(e.into());
        }
        if record_len >= EARLY_SYNC {
            inner.sync_early(&act.file);
        }
        act.len += record_len;
        let loc = a.appended(&act, header.hash, offset, &header);
        a.idle.push(act);
        Ok(Some(loc))
    }

    /// An open pack with room for `record_len` more bytes, taken out of the idle ones (a new
    /// pack when none has room; a full one is retired).
    fn take_pack(&self, a: &mut Appender, record_len: u64) -> Result<Active> {
        let limit = self.inner.config.pack_size;
        while let Some(act) = a.idle.pop() {
            if act.len == PACK_HEADER_LEN || act.len + record_len <= limit {
                return Ok(act);
            }
            a.open.remove(&act.id);
        }
        let (id, file) = self.inner.create_next_pack()?;
        a.open.insert(id);
        Ok(Active {
            id,
            file,
            len: PACK_HEADER_LEN,
        })
    }

    fn next_stamp(&self) -> u64 {
        next_stamp(&self.inner.stamp)
    }

    /// Appends `records` to the log in their order and makes everything durable, one commit
    /// for all; returns where each ends. An instance is refused below the free-space
    /// reserve, a deletion never is.
    pub fn append_log(&self, records: &[LogRecord<'_>]) -> Result<Vec<(u32, u64)>> {
        if records
            .iter()
            .any(|r| matches!(r, LogRecord::Manifest { .. }))
        {
            self.check_space()?;
        }
        let mut ends = Vec::with_capacity(records.len());
        for record in records {
            ends.push(self.append_small(record.kind(), &record.payload(self.next_stamp()))?);
        }
        self.commit()?;
        Ok(ends)
    }

    /// StorageFull when the archive's filesystem has less free space than the configured
    /// minimum: checked before an instance is taken in and again before it is acknowledged.
    pub fn check_space(&self) -> Result<()> {
        let minimum = self.inner.config.min_free_space;
        if minimum == 0 {
            return Ok(());
        }
        let free = free_space(&self.inner.packs_dir)?;
        if free < minimum {
            return Err(StoreError::NoRoom(format!(
                "{} MiB free on the archive's filesystem, less than the {} MiB kept in \
                     reserve ([storage] min_free_space_mb)",
                free >> 20,
                minimum >> 20
            )));
        }
        Ok(())
    }

    fn append_small(&self, kind: RecordKind, payload: &[u8]) -> Result<(u32, u64)> {
        let header = raw_record(kind, payload);
        let loc = self
            .append(header, payload, false)?
            .expect("appends without dedup always write");
        Ok((loc.pack, loc.offset + RECORD_HEADER_LEN + loc.stored_len))
    }

    /// Makes every record appended so far durable (per the sync mode) and indexed.
    pub fn commit(&self) -> Result<()> {
        let inner = &*self.inner;
        let target = lock(&inner.appender).seq;
        let mut c = lock(&inner.commit);
        if c.committed >= target {
            return Ok(());
        }
        inner.fsync_failure.check()?;
        let (entries, written, seq) = {
            let a = lock(&inner.appender);
            (a.unindexed.clone(), a.written.clone(), a.seq)
        };
        let sync_now = match inner.config.sync {
            SyncMode::Always => true,
            SyncMode::Batch => c.last_sync.elapsed() >= inner.config.sync_interval,
            SyncMode::Never => false,
        };
        for (id, (file, _)) in &written {
            c.unsynced.insert(*id, file.clone());
        }
        if sync_now {
            for file in c.unsynced.values() {
                inner.fsync_failure.sync(file)?;
            }
            // The background fsyncs of these packs succeeded too.
            inner.fsync_failure.check()?;
            c.unsynced.clear();
            c.last_sync = Instant::now();
        }
        let mut wtxn = inner.env.write_txn()?;
        for (hash, loc) in &entries {
            inner.blobs.put(&mut wtxn, hash, &loc.encode())?;
        }
        for (id, (_, len)) in &written {
            inner
                .packs
                .put(&mut wtxn, &id.to_be_bytes(), &len.to_le_bytes())?;
        }
        wtxn.commit()?;
        let mut a = lock(&inner.appender);
        a.unindexed.drain(..entries.len());
        for (hash, loc) in &entries {
            if a.lookup.get(hash) == Some(loc) {
                a.lookup.remove(hash);
            }
        }
        a.written
            .retain(|id, (_, len)| written.get(id).is_none_or(|(_, then)| then != len));
        c.committed = seq;
        Ok(())
    }

    /// Forces everything committed to disk, blob index included: a checkpoint (the end of a
    /// batch window, or shutdown).
    pub fn sync(&self) -> Result<()> {
        self.commit()?;
        let inner = &*self.inner;
        let mut c = lock(&inner.commit);
        for file in c.unsynced.values() {
            inner.fsync_failure.sync(file)?;
        }
        c.unsynced.clear();
        inner.env.force_sync()?;
        c.last_sync = Instant::now();
        Ok(())
    }

    fn pack_file(&self, id: u32) -> Result<Arc<File>> {
        if let Some(f) = self
            .inner
            .readers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(f.clone());
        }
        // Opened under the lock gc removes packs under, so a pack gc just removed is never put
        // back in the map (its file held open, its space never freed).
        let mut readers = self
            .inner
            .readers
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(f) = readers.get(&id) {
            return Ok(f.clone());
        }
        let file = Arc::new(File::open(pack::pack_path(&self.inner.packs_dir, id))?);
        readers.insert(id, file.clone());
        Ok(file)
    }

    fn require_exclusive(&self, what: &str) -> Result<()> {
        if self.inner.config.exclusive {
            Ok(())
        } else {
            Err(StoreError::Busy(format!(
                "{what} needs the store opened exclusively"
            )))
        }
    }

    /// Whether no other process is appending to pack `id`.
    fn settled(&self, id: u32) -> Result<bool> {
        if lock(&self.inner.own).contains(&id) {
            return Ok(true);
        }
        let probe = File::open(pack::pack_path(&self.inner.packs_dir, id))?;
        Ok(pack::flock(&probe, true, false)?)
    }

    /// Pack `id`, unless `settled_only` and another process is appending to it, or a gc
    /// removed it since it was listed.
    fn listed_pack(&self, id: u32, settled_only: bool) -> Result<Option<Arc<File>>> {
        let open = || -> Result<Option<Arc<File>>> {
            if settled_only && !self.settled(id)? {
                return Ok(None);
            }
            self.pack_file(id).map(Some)
        };
        match open() {
            Err(e) if e.is_missing_file() => Ok(None),
            found => found,
        }
    }

    /// The length of each pack no other process is appending to.
    pub fn settled_pack_lengths(&self) -> Result<HashMap<u32, u64>> {
        let mut lengths = HashMap::new();
        for id in pack::list_packs(&self.inner.packs_dir)? {
            if let Some(file) = self.listed_pack(id, true)? {
                lengths.insert(id, file.metadata()?.len());
            }
        }
        Ok(lengths)
    }

    /// Pack count, bytes in packs, and indexed records.
    pub fn stats(&self) -> Result<(u64, u64, u64)> {
        let (mut packs, mut bytes) = (0, 0);
        for id in pack::list_packs(&self.inner.packs_dir)? {
            match fs::metadata(pack::pack_path(&self.inner.packs_dir, id)) {
                Ok(m) => {
                    packs += 1;
                    bytes += m.len();
                }
                // Removed by a gc since it was listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        let rtxn = self.inner.env.read_txn()?;
        let records = self.inner.blobs.len(&rtxn)?;
        Ok((packs, bytes, records))
    }
}

/// Whatever else ingest collects, an instance's identifiers it does: the listener checks them.
fn add_identity_tags(wanted: &mut Vec<(u32, [u8; 2])>) {
    for (tag, vr) in crate::identity::TAGS {
        if !wanted.iter().any(|(t, _)| *t == tag) {
            wanted.push((tag, vr));
        }
    }
}

/// Bytes available to unprivileged writers on the filesystem holding `path`.
fn free_space(path: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| invalid("a path with a NUL byte"))?;
    // SAFETY: statvfs writes into the zeroed struct we own and reads a NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

impl Inner {
    /// How far the blob index has taken pack `id` into account.
    fn indexed_end(&self, id: u32) -> Result<u64> {
        let rtxn = self.env.read_txn()?;
        Ok(self
            .packs
            .get(&rtxn, &id.to_be_bytes())?
            .map_or(PACK_HEADER_LEN, |b| {
                u64::from_le_bytes(b.try_into().unwrap_or([0; 8])).max(PACK_HEADER_LEN)
            }))
    }

    /// Starts making a pack durable up to what was just appended, when commits fsync.
    fn sync_early(&self, file: &Arc<File>) {
        if let Some(early) = &self.early_sync {
            early.request(file);
        }
    }

    fn create_next_pack(&self) -> Result<(u32, Arc<File>)> {
        let mut id = pack::list_packs(&self.packs_dir)?
            .last()
            .map_or(1, |last| last + 1);
        loop {
            match pack::create_pack(&self.packs_dir, id) {
                Ok(file) => {
                    if !pack::flock(&file, true, false)? {
                        return Err(StoreError::Busy(
                            "a new pack is locked by another process".into(),
                        ));
                    }
                    let file = Arc::new(file);
                    self.readers
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id, file.clone());
                    lock(&self.own).insert(id);
                    return Ok((id, file));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => id += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
