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

use crate::manifest::{BlobRef, Hash, Manifest, Segment};
use crate::pack::{
    self, Codec, Found, RecordHeader, RecordKind, PACK_HEADER_LEN, RECORD_HEADER_LEN,
};
use crate::scan::{FeedError, Parser, ScanOptions, SegmentKind, Sink, Summary};
use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, RwLock};
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

    fn decode(b: &[u8]) -> io::Result<Location> {
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

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn heed_error(e: heed::Error) -> io::Error {
    match e {
        heed::Error::Io(io) => io,
        other => io::Error::other(format!("blob index: {other}")),
    }
}

/// A blob's record: compressed with `codec` where that saves space, stored as is otherwise.
fn blob_record(
    hash: Hash,
    raw: &[u8],
    codec: Codec,
    level: i32,
) -> io::Result<(RecordHeader, Cow<'_, [u8]>)> {
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

/// A blob written into a pack as its bytes arrive. Its record header goes in last, once the
/// hash is known: a crash before that leaves a torn tail that opening the store cuts, and the
/// pack held meanwhile has no other record after it.
struct StreamingBlob {
    store: Store,
    pack: Option<Active>,
    /// Where the record starts in the pack.
    offset: u64,
    /// How far into the pack an early sync was requested.
    early_synced: u64,
    hasher: blake3::Hasher,
    crc: crc32fast::Hasher,
    len: u64,
}

impl StreamingBlob {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let act = self.pack.as_ref().expect("a streaming blob holds its pack");
        let end = self.offset + RECORD_HEADER_LEN + self.len;
        act.file.write_all_at(bytes, end)?;
        self.hasher.update(bytes);
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
        // Whole pages only: a partial page synced now would be written again.
        let settled = (end + bytes.len() as u64) & !4095;
        if settled >= self.early_synced + EARLY_SYNC {
            self.store.inner.sync_early(&act.file);
            self.early_synced = settled;
        }
        Ok(())
    }

    /// Writes the record header; returns the blob's hash and whether it was new (a blob the
    /// store already has is taken back out of the pack).
    fn finish(mut self) -> io::Result<(Hash, bool)> {
        let hash = *self.hasher.finalize().as_bytes();
        let mut act = self.pack.take().expect("a streaming blob holds its pack");
        let store = self.store.clone();
        let known = store.contains(&hash);
        let mut a = lock(&store.inner.appender);
        if !matches!(known, Ok(false)) || a.lookup.contains_key(&hash) {
            let _ = act.file.set_len(self.offset);
            a.idle.push(act);
            return known.map(|_| (hash, false));
        }
        let header = RecordHeader {
            kind: RecordKind::Blob,
            codec: Codec::Raw,
            raw_len: self.len,
            stored_len: self.len,
            hash,
            payload_crc: self.crc.clone().finalize(),
        };
        if let Err(e) = act.file.write_all_at(&header.encode(), self.offset) {
            let _ = act.file.set_len(self.offset);
            a.idle.push(act);
            return Err(e);
        }
        act.len = self.offset + header.record_len();
        store.inner.sync_early(&act.file);
        a.appended(&act, hash, self.offset, &header);
        a.idle.push(act);
        Ok((hash, true))
    }
}

impl Drop for StreamingBlob {
    fn drop(&mut self) {
        // Abandoned (a broken association, a write error): the pack ends where it did.
        if let Some(act) = self.pack.take() {
            let _ = act.file.set_len(self.offset);
            lock(&self.store.inner.appender).idle.push(act);
        }
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
    _archive_lock: File,
}

/// A thread that fdatasyncs the packs a large record was just appended to, while the rest of
/// the instance arrives. A virtual disk's flush costs time in proportion to what it flushes,
/// so a commit that follows finds little left to flush: its fsync, which a C-STORE-RSP waits
/// for, takes a fraction of what flushing the whole instance at once would.
struct EarlySync {
    files: mpsc::Sender<Arc<File>>,
    /// The first failure, sticky: Linux reports a writeback error to one fsync only, so a
    /// commit must not take the next fsync's success for durability.
    failed: Arc<Mutex<Option<String>>>,
}

impl EarlySync {
    fn start() -> io::Result<EarlySync> {
        let (sender, files) = mpsc::channel::<Arc<File>>();
        let failed: Arc<Mutex<Option<String>>> = Arc::default();
        let failure = failed.clone();
        std::thread::Builder::new()
            .name("pack-early-sync".into())
            .spawn(move || {
                while let Ok(first) = files.recv() {
                    let mut batch = vec![first];
                    for file in files.try_iter() {
                        if !batch.iter().any(|f| Arc::ptr_eq(f, &file)) {
                            batch.push(file);
                        }
                    }
                    for file in batch {
                        if let Err(e) = file.sync_data() {
                            lock(&failure).get_or_insert_with(|| e.to_string());
                        }
                    }
                }
            })?;
        Ok(EarlySync {
            files: sender,
            failed,
        })
    }

    fn request(&self, file: &Arc<File>) {
        // The thread is gone only if it panicked: the commit's fsync then does all the work.
        let _ = self.files.send(file.clone());
    }

    fn check(&self) -> io::Result<()> {
        match &*lock(&self.failed) {
            None => Ok(()),
            Some(e) => Err(io::Error::other(format!(
                "an fsync of the packs failed ({e}); restart to recover what was acknowledged"
            ))),
        }
    }
}

/// A handle on an archive's store; cheap to clone and safe to share between threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these structures half-updated in a way that matters more
    // than refusing all further work would.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a manifest or tombstone record says (see [`Store::history`]).
#[derive(Debug, Clone)]
pub enum HistoryKind {
    Manifest {
        annotations: Vec<u8>,
        manifest: Vec<u8>,
    },
    /// The index key of the deleted instance.
    Tombstone { key: String },
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
    /// Manifest payload: stamp, annotations length, annotations, manifest. Tombstone payload:
    /// stamp, manifest hash, index key.
    fn parse(kind: RecordKind, payload: &[u8], pack: u32, end: u64) -> Option<HistoryEvent> {
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

/// Defects found by [`Store::verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub records_checked: u64,
    pub bytes_checked: u64,
    pub bad: Vec<(Hash, String)>,
}

/// What [`Store::gc`] did.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub packs_rewritten: u64,
    /// Packs left as they were: another process appends to them, or the blob index has not
    /// caught up with them yet.
    pub packs_skipped: u64,
    /// Bytes of the packs rewritten, and of the packs written in their place.
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub blobs_kept: u64,
    pub records_dropped: u64,
    /// Records that could not be read intact (so are gone), and live blobs not found.
    pub missing: Vec<Hash>,
}

/// What [`Store::gc`] reports as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcEvent {
    /// A new pack that will hold nothing but copies of records already in the log. Whoever
    /// replays the log must count it as applied throughout, durably, before the copies exist:
    /// replaying a copied tombstone would delete an instance stored again since.
    Claim(u32),
    /// A pack was rewritten and removed: its size, and what its copies take.
    Rewritten {
        pack: u32,
        bytes_before: u64,
        bytes_after: u64,
    },
}

/// What a gc keeps: every record, or what live manifests reference.
struct Keep {
    /// Live blobs and the hashes of live manifests.
    live: Option<(HashSet<Hash>, HashSet<Hash>)>,
}

impl Keep {
    fn new(live: Option<&[Manifest]>) -> Keep {
        Keep {
            live: live.map(|manifests| {
                let blobs = manifests
                    .iter()
                    .flat_map(|m| m.blobs.iter().map(|b| b.hash))
                    .collect();
                let hashes = manifests
                    .iter()
                    .map(|m| *blake3::hash(&m.encode()).as_bytes())
                    .collect();
                (blobs, hashes)
            }),
        }
    }

    fn blob(&self, hash: &Hash) -> bool {
        self.live
            .as_ref()
            .is_none_or(|(blobs, _)| blobs.contains(hash))
    }

    /// Manifest records of live manifests; tombstones go with the manifests they cancelled.
    fn history(&self, kind: RecordKind, payload: &[u8]) -> bool {
        let Some((_, manifests)) = &self.live else {
            return true;
        };
        kind == RecordKind::Manifest
            && HistoryEvent::parse(kind, payload, 0, 0)
                .is_some_and(|e| manifests.contains(&e.target))
    }
}

/// One run of [`Store::gc`]: the pack its copies go to and what it did so far.
struct Rewrite<'a, F: FnMut(GcEvent) -> io::Result<()>> {
    store: &'a Store,
    keep: &'a Keep,
    recode: Option<(Codec, i32)>,
    output: Option<Active>,
    report: GcReport,
    on_event: &'a mut F,
}

impl<F: FnMut(GcEvent) -> io::Result<()>> Rewrite<'_, F> {
    /// Copies what pack `id` keeps, points the blob index at the copies, removes the pack.
    fn pack(&mut self, id: u32) -> io::Result<()> {
        let store = self.store;
        let inner = &*store.inner;
        let Some(file) = store.closed_pack(id)? else {
            self.report.packs_skipped += 1;
            return Ok(());
        };
        let bytes_before = file.metadata()?.len();
        if inner.indexed_end(id)? != bytes_before {
            self.report.packs_skipped += 1;
            return Ok(());
        }
        let (found, _, _) = pack::walk(&file, PACK_HEADER_LEN, false)?;
        // Only the record the blob index points at is a hash's copy: any other is a duplicate.
        let current: Vec<bool> = {
            let rtxn = inner.env.read_txn().map_err(heed_error)?;
            found
                .iter()
                .map(|f| {
                    let at = inner.blobs.get(&rtxn, &f.header.hash).map_err(heed_error)?;
                    Ok(at.map(Location::decode).transpose()? == Some(found_location(id, f)))
                })
                .collect::<io::Result<_>>()?
        };
        let mut moved: Vec<(Hash, Location, Location)> = Vec::new();
        let mut dropped: Vec<(Hash, Location)> = Vec::new();
        let mut outputs: Vec<u32> = Vec::new();
        let mut bytes_after = 0;
        for (f, current) in found.iter().zip(current) {
            let here = found_location(id, f);
            let hash = f.header.hash;
            if !current || (f.header.kind == RecordKind::Blob && !self.keep.blob(&hash)) {
                self.report.records_dropped += 1;
                dropped.push((hash, here));
                continue;
            }
            let copy = pack::read_payload(&file, f.offset, &f.header).and_then(|stored| {
                if f.header.kind != RecordKind::Blob && !self.keep.history(f.header.kind, &stored) {
                    return Ok(None);
                }
                match self.recode {
                    Some((codec, level)) if f.header.kind == RecordKind::Blob => {
                        let raw = pack::decode_payload(&f.header, stored)?;
                        if blake3::hash(&raw).as_bytes() != &hash {
                            return Err("content does not match its hash".to_string());
                        }
                        blob_record(hash, &raw, codec, level)
                            .map(|(h, s)| Some((h, s.into_owned())))
                            .map_err(|e| e.to_string())
                    }
                    _ => Ok(Some((f.header, stored))),
                }
            });
            match copy {
                Ok(Some((header, stored))) => {
                    let to = self.append(&header, &stored, &mut outputs)?;
                    bytes_after += header.record_len();
                    if header.kind == RecordKind::Blob {
                        self.report.blobs_kept += 1;
                    }
                    moved.push((hash, here, to));
                }
                Ok(None) => {
                    self.report.records_dropped += 1;
                    dropped.push((hash, here));
                }
                Err(_) => {
                    self.report.missing.push(hash);
                    dropped.push((hash, here));
                }
            }
        }
        let mut ends = Vec::with_capacity(outputs.len());
        for &out in &outputs {
            let file = store.pack_file(out)?;
            file.sync_data()?;
            ends.push((out, file.metadata()?.len()));
        }
        // The copies' directory entries are durable before the old pack's removal can be.
        File::open(&inner.packs_dir)?.sync_all()?;
        let mut wtxn = inner.env.write_txn().map_err(heed_error)?;
        let is_at = |wtxn: &heed::RwTxn, hash: &Hash, loc: &Location| -> io::Result<bool> {
            let at = inner.blobs.get(wtxn, hash).map_err(heed_error)?;
            Ok(at.map(Location::decode).transpose()? == Some(*loc))
        };
        for (hash, from, to) in &moved {
            if is_at(&wtxn, hash, from)? {
                inner
                    .blobs
                    .put(&mut wtxn, hash, &to.encode())
                    .map_err(heed_error)?;
            }
        }
        for (hash, from) in &dropped {
            if is_at(&wtxn, hash, from)? {
                inner.blobs.delete(&mut wtxn, hash).map_err(heed_error)?;
            }
        }
        for (out, end) in &ends {
            inner
                .packs
                .put(&mut wtxn, &out.to_be_bytes(), &end.to_le_bytes())
                .map_err(heed_error)?;
        }
        inner
            .packs
            .delete(&mut wtxn, &id.to_be_bytes())
            .map_err(heed_error)?;
        wtxn.commit().map_err(heed_error)?;
        inner.env.force_sync().map_err(heed_error)?;
        store.remove_pack(id)?;
        self.report.packs_rewritten += 1;
        self.report.bytes_before += bytes_before;
        self.report.bytes_after += bytes_after;
        (self.on_event)(GcEvent::Rewritten {
            pack: id,
            bytes_before,
            bytes_after,
        })
    }

    /// Appends a copy to the gc's own output pack (claiming a new one when it is full).
    fn append(
        &mut self,
        header: &RecordHeader,
        stored: &[u8],
        outputs: &mut Vec<u32>,
    ) -> io::Result<Location> {
        let record_len = header.record_len();
        let limit = self.store.inner.config.pack_size;
        if self
            .output
            .as_ref()
            .is_none_or(|o| o.len > PACK_HEADER_LEN && o.len + record_len > limit)
        {
            let (id, file) = self.store.inner.create_next_pack()?;
            self.output = Some(Active {
                id,
                file,
                len: PACK_HEADER_LEN,
            });
            (self.on_event)(GcEvent::Claim(id))?;
        }
        let out = self.output.as_mut().expect("an output pack");
        if outputs.last() != Some(&out.id) {
            outputs.push(out.id);
        }
        let offset = out.len;
        out.file.write_all_at(&header.encode(), offset)?;
        out.file.write_all_at(stored, offset + RECORD_HEADER_LEN)?;
        out.len += record_len;
        Ok(Location {
            pack: out.id,
            offset,
            stored_len: header.stored_len,
            raw_len: header.raw_len,
        })
    }
}

fn found_location(pack: u32, f: &Found) -> Location {
    Location {
        pack,
        offset: f.offset,
        stored_len: f.header.stored_len,
        raw_len: f.header.raw_len,
    }
}

/// A manifest record's annotations: a MessagePack map of the instance's `received_at` and
/// `source`, which the index records and a replay restores.
pub fn annotations(received_at: &str, source: &str) -> Vec<u8> {
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
    let mut out = vec![0x82];
    str(&mut out, "received_at");
    str(&mut out, received_at);
    str(&mut out, "source");
    str(&mut out, source);
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
    pub fn open(root: &Path, config: StoreConfig) -> io::Result<Store> {
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
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                if config.exclusive {
                    "the archive is in use by another process (stop it before gc or reindex)"
                } else {
                    "the archive is locked by a running gc or reindex"
                },
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
        }
        .map_err(heed_error)?;
        let mut wtxn = env.write_txn().map_err(heed_error)?;
        let blobs = env
            .create_database(&mut wtxn, Some("blobs"))
            .map_err(heed_error)?;
        let packs = env
            .create_database(&mut wtxn, Some("packs"))
            .map_err(heed_error)?;
        wtxn.commit().map_err(heed_error)?;
        let early_sync = match config.sync {
            SyncMode::Always => Some(EarlySync::start()?),
            SyncMode::Batch | SyncMode::Never => None,
        };
        let mut inner = Inner {
            packs_dir,
            config,
            env,
            blobs,
            packs,
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
            _archive_lock: archive_lock,
        };
        inner.recover()?;
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// What opening the store repaired (cut torn pack tails), one message per repair.
    pub fn recovery_messages(&self) -> &[String] {
        &self.inner.recovery
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Starts streaming one instance into the store.
    pub fn writer(&self, options: ScanOptions) -> InstanceWriter {
        InstanceWriter {
            parser: Parser::new(options),
            sink: BlobSink {
                store: self.clone(),
                buf: Vec::new(),
                stream: None,
                blobs: Vec::new(),
                segments: Vec::new(),
                segment_start: 0,
                new_bytes: 0,
            },
        }
    }

    /// Options for ingesting a file: its transfer syntax comes from File Meta, truncation of a
    /// file that has File Meta is recorded rather than refused.
    pub fn file_options(&self) -> ScanOptions {
        ScanOptions {
            wanted: self.inner.config.wanted.clone(),
            transfer_syntax: None,
            allow_truncated: true,
        }
    }

    /// Streams a file into the store (not yet durable: see [`Store::persist`]).
    pub fn ingest_file(&self, path: &Path) -> Result<Ingested, FeedError> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        let mut writer = self.writer(self.file_options());
        // One read for files that fit a blob; larger ones stream in blob-sized chunks.
        let mut buf = vec![0u8; (size as usize).clamp(1, MAX_BLOB)];
        let mut offset = 0u64;
        loop {
            let n = file.read_at(&mut buf, offset)?;
            if n == 0 {
                break;
            }
            writer.write(&buf[..n])?;
            offset += n as u64;
        }
        writer.finish()
    }

    pub fn contains(&self, hash: &Hash) -> io::Result<bool> {
        Ok(self.location(hash)?.is_some())
    }

    fn location(&self, hash: &Hash) -> io::Result<Option<Location>> {
        if let Some(loc) = lock(&self.inner.appender).lookup.get(hash) {
            return Ok(Some(*loc));
        }
        let rtxn = self.inner.env.read_txn().map_err(heed_error)?;
        match self.inner.blobs.get(&rtxn, hash).map_err(heed_error)? {
            Some(b) => Ok(Some(Location::decode(b)?)),
            None => Ok(None),
        }
    }

    /// Appends a blob unless the store already has it; returns whether it was written.
    pub fn put_blob(&self, hash: Hash, raw: &[u8]) -> io::Result<bool> {
        if self.contains(&hash)? {
            return Ok(false);
        }
        let (header, stored) =
            blob_record(hash, raw, self.inner.config.codec, self.inner.config.level)?;
        Ok(self.append(header, &stored, true)?.is_some())
    }

    /// Appends a record and returns where it went; with `dedup`, nothing (None) when a record
    /// with its hash was appended meanwhile.
    fn append(
        &self,
        header: RecordHeader,
        stored: &[u8],
        dedup: bool,
    ) -> io::Result<Option<Location>> {
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
            return Err(e);
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
    fn take_pack(&self, a: &mut Appender, record_len: u64) -> io::Result<Active> {
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

    /// Starts a blob whose bytes are written into a pack as they arrive; the pack is held by
    /// the blob (no other record interleaves) until it is finished or dropped.
    fn stream_blob(&self) -> io::Result<StreamingBlob> {
        let act = self.take_pack(
            &mut lock(&self.inner.appender),
            RECORD_HEADER_LEN + MAX_BLOB as u64,
        )?;
        Ok(StreamingBlob {
            store: self.clone(),
            offset: act.len,
            early_synced: act.len,
            pack: Some(act),
            hasher: blake3::Hasher::new(),
            crc: crc32fast::Hasher::new(),
            len: 0,
        })
    }

    fn next_stamp(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut current = self.inner.stamp.load(Ordering::Relaxed);
        loop {
            let next = now.max(current + 1);
            match self.inner.stamp.compare_exchange(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => current = seen,
            }
        }
    }

    /// Appends the manifest records of accepted instances (with the caller's annotations:
    /// receive time, source) and makes them and their blobs durable. Returns where each record
    /// ends (pack, offset): the index remembers how far it has taken the packs into account.
    pub fn persist(&self, items: &[(Vec<u8>, Vec<u8>)]) -> io::Result<Vec<(u32, u64)>> {
        let mut ends = Vec::with_capacity(items.len());
        for (manifest, annotations) in items {
            let mut payload = Vec::with_capacity(12 + annotations.len() + manifest.len());
            payload.extend_from_slice(&self.next_stamp().to_le_bytes());
            payload.extend_from_slice(&(annotations.len() as u32).to_le_bytes());
            payload.extend_from_slice(annotations);
            payload.extend_from_slice(manifest);
            ends.push(self.append_small(RecordKind::Manifest, &payload)?);
        }
        self.commit()?;
        Ok(ends)
    }

    /// Records that instances (manifest, index key) were deleted, so that rebuilding or
    /// replaying the index from the packs does not bring them back, and makes that durable.
    pub fn tombstone(&self, items: &[(Vec<u8>, String)]) -> io::Result<Vec<(u32, u64)>> {
        let mut ends = Vec::with_capacity(items.len());
        for (manifest, key) in items {
            let mut payload = Vec::with_capacity(40 + key.len());
            payload.extend_from_slice(&self.next_stamp().to_le_bytes());
            payload.extend_from_slice(blake3::hash(manifest).as_bytes());
            payload.extend_from_slice(key.as_bytes());
            ends.push(self.append_small(RecordKind::Tombstone, &payload)?);
        }
        self.commit()?;
        Ok(ends)
    }

    fn append_small(&self, kind: RecordKind, payload: &[u8]) -> io::Result<(u32, u64)> {
        let header = RecordHeader {
            kind,
            codec: Codec::Raw,
            raw_len: payload.len() as u64,
            stored_len: payload.len() as u64,
            hash: *blake3::hash(payload).as_bytes(),
            payload_crc: crc32fast::hash(payload),
        };
        let loc = self
            .append(header, payload, false)?
            .expect("appends without dedup always write");
        Ok((loc.pack, loc.offset + RECORD_HEADER_LEN + loc.stored_len))
    }

    /// Makes every record appended so far durable (per the sync mode) and indexed.
    pub fn commit(&self) -> io::Result<()> {
        let inner = &*self.inner;
        let target = lock(&inner.appender).seq;
        let mut c = lock(&inner.commit);
        if c.committed >= target {
            return Ok(());
        }
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
                file.sync_data()?;
            }
            if let Some(early) = &inner.early_sync {
                early.check()?;
            }
            c.unsynced.clear();
            c.last_sync = Instant::now();
        }
        let mut wtxn = inner.env.write_txn().map_err(heed_error)?;
        for (hash, loc) in &entries {
            inner
                .blobs
                .put(&mut wtxn, hash, &loc.encode())
                .map_err(heed_error)?;
        }
        for (id, (_, len)) in &written {
            inner
                .packs
                .put(&mut wtxn, &id.to_be_bytes(), &len.to_le_bytes())
                .map_err(heed_error)?;
        }
        wtxn.commit().map_err(heed_error)?;
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
    pub fn sync(&self) -> io::Result<()> {
        self.commit()?;
        let inner = &*self.inner;
        let mut c = lock(&inner.commit);
        for file in c.unsynced.values() {
            file.sync_data()?;
        }
        c.unsynced.clear();
        inner.env.force_sync().map_err(heed_error)?;
        c.last_sync = Instant::now();
        Ok(())
    }

    fn pack_file(&self, id: u32) -> io::Result<Arc<File>> {
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

    /// Reads and checks one record: header, checksum, hash and (for blobs) decoded length.
    fn read_record(&self, hash: &Hash, loc: &Location, verify_hash: bool) -> io::Result<Vec<u8>> {
        let file = self.pack_file(loc.pack)?;
        let header = pack::read_record_header(&file, loc.offset, file.metadata()?.len())
            .map_err(|why| invalid(format!("blob {}: {why}", hex(hash))))?;
        if header.hash != *hash
            || header.stored_len != loc.stored_len
            || header.raw_len != loc.raw_len
        {
            return Err(invalid(format!(
                "blob {}: the pack holds another record at its place",
                hex(hash)
            )));
        }
        let stored = pack::read_payload(&file, loc.offset, &header)
            .map_err(|why| invalid(format!("blob {}: {why}", hex(hash))))?;
        let raw = pack::decode_payload(&header, stored)
            .map_err(|why| invalid(format!("blob {}: {why}", hex(hash))))?;
        if verify_hash && blake3::hash(&raw).as_bytes() != hash {
            return Err(invalid(format!(
                "blob {}: content does not match its hash",
                hex(hash)
            )));
        }
        Ok(raw)
    }

    pub fn read_blob(&self, hash: &Hash) -> io::Result<Vec<u8>> {
        let loc = self.location(hash)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("blob {} is not in the store", hex(hash)),
            )
        })?;
        self.read_found(hash, loc, false)
    }

    /// [`Store::read_record`] at `loc`, or where the record went: a gc that moved it and
    /// removed its pack after `loc` was looked up has pointed the blob index at its copy.
    fn read_found(&self, hash: &Hash, mut loc: Location, verify_hash: bool) -> io::Result<Vec<u8>> {
        loop {
            match self.read_record(hash, &loc, verify_hash) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => match self.location(hash)? {
                    Some(moved) if moved != loc => loc = moved,
                    _ => return Err(e),
                },
                read => return read,
            }
        }
    }

    /// Hands the instance's bytes from `start` on to `f`, one blob at a time.
    pub fn for_each_chunk(
        &self,
        manifest: &Manifest,
        start: u64,
        mut f: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut at = 0u64;
        for blob in &manifest.blobs {
            let end = at + blob.length;
            if end > start {
                let data = self.read_blob(&blob.hash)?;
                if data.len() as u64 != blob.length {
                    return Err(invalid(format!(
                        "blob {} has {} bytes, the manifest says {}",
                        hex(&blob.hash),
                        data.len(),
                        blob.length
                    )));
                }
                let skip = start.saturating_sub(at) as usize;
                f(&data[skip..])?;
            }
            at = end;
        }
        Ok(())
    }

    pub fn read_instance(&self, manifest: &Manifest, start: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(manifest.total_length.saturating_sub(start) as usize);
        self.for_each_chunk(manifest, start, |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }

    /// Writes the instance to `path` (through a temporary file, so a reader never sees half).
    pub fn export(&self, manifest: &Manifest, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("dvtmp");
        let file = File::create(&tmp)?;
        let mut offset = 0u64;
        let written = self.for_each_chunk(manifest, 0, |chunk| {
            file.write_all_at(chunk, offset)?;
            offset += chunk.len() as u64;
            Ok(())
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, path)
    }

    /// The pixel bytes of one frame: native values, or the encapsulated frame's fragments
    /// concatenated (item headers removed).
    pub fn read_frame(&self, manifest: &Manifest, index: u32) -> io::Result<Vec<u8>> {
        if !manifest.frames_resolved {
            return Err(invalid("the frames of this instance cannot be told apart (no offset table, no frame markers)"));
        }
        let blobs = manifest.frame_blobs(index).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "frame {index} is not in the instance ({} frames)",
                    manifest.frame_count()
                ),
            )
        })?;
        let mut data = Vec::new();
        for b in blobs {
            data.extend_from_slice(&self.read_blob(&b.hash)?);
        }
        if !manifest.encapsulated {
            return Ok(data);
        }
        let mut out = Vec::with_capacity(data.len());
        let mut at = 0usize;
        while at + 8 <= data.len() {
            let length =
                u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
            let end = (at + 8)
                .checked_add(length)
                .filter(|&e| e <= data.len())
                .ok_or_else(|| invalid("fragment runs past its frame"))?;
            out.extend_from_slice(&data[at + 8..end]);
            at = end;
        }
        Ok(out)
    }

    /// Re-reads every indexed record: header, checksum, decoded length and BLAKE3 hash.
    pub fn verify(&self) -> io::Result<VerifyReport> {
        self.commit()?;
        let mut entries = Vec::new();
        {
            let rtxn = self.inner.env.read_txn().map_err(heed_error)?;
            for item in self.inner.blobs.iter(&rtxn).map_err(heed_error)? {
                let (k, v) = item.map_err(heed_error)?;
                let hash: Hash = k
                    .try_into()
                    .map_err(|_| invalid("blob index key is not a hash"))?;
                entries.push((Location::decode(v)?, hash));
            }
        }
        entries.sort_by_key(|(loc, _)| (loc.pack, loc.offset));
        let mut report = VerifyReport::default();
        for (loc, hash) in entries {
            report.records_checked += 1;
            report.bytes_checked += loc.stored_len;
            if let Err(e) = self.read_found(&hash, loc, true) {
                report.bad.push((hash, e.to_string()));
            }
        }
        Ok(report)
    }

    /// Manifest and tombstone records that lie after the given offsets of their packs (all
    /// of them for a pack not in `after`), oldest first. With `settled_only`, packs another
    /// process is appending to are left out: their records are that process's to index.
    pub fn history(
        &self,
        after: &HashMap<u32, u64>,
        settled_only: bool,
    ) -> io::Result<Vec<HistoryEvent>> {
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
            let (found, _, _) = pack::walk(&file, from.max(PACK_HEADER_LEN), false)?;
            for Found { offset, header } in found {
                if header.kind == RecordKind::Blob {
                    continue;
                }
                let Ok(payload) = pack::read_payload(&file, offset, &header) else {
                    continue;
                };
                let end = offset + header.record_len();
                if let Some(event) = HistoryEvent::parse(header.kind, &payload, id, end) {
                    events.push(event);
                }
            }
        }
        events.sort_by_key(|e| (e.stamp, e.pack, e.end));
        Ok(events)
    }

    /// Whether no other process is appending to pack `id`.
    fn settled(&self, id: u32) -> io::Result<bool> {
        if lock(&self.inner.own).contains(&id) {
            return Ok(true);
        }
        let probe = File::open(pack::pack_path(&self.inner.packs_dir, id))?;
        pack::flock(&probe, true, false)
    }

    /// Pack `id`, unless `settled_only` and another process is appending to it, or a gc
    /// removed it since it was listed.
    fn listed_pack(&self, id: u32, settled_only: bool) -> io::Result<Option<Arc<File>>> {
        let open = || -> io::Result<Option<Arc<File>>> {
            if settled_only && !self.settled(id)? {
                return Ok(None);
            }
            self.pack_file(id).map(Some)
        };
        match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            found => found,
        }
    }

    /// Rebuilds the blob index from the packs alone.
    pub fn rebuild_blob_index(&self) -> io::Result<u64> {
        self.require_exclusive("reindex")?;
        self.commit()?;
        let inner = &*self.inner;
        let mut wtxn = inner.env.write_txn().map_err(heed_error)?;
        inner.blobs.clear(&mut wtxn).map_err(heed_error)?;
        inner.packs.clear(&mut wtxn).map_err(heed_error)?;
        let mut count = 0u64;
        for id in pack::list_packs(&inner.packs_dir)? {
            let file = self.pack_file(id)?;
            let (found, end, _) = pack::walk(&file, PACK_HEADER_LEN, true)?;
            for Found { offset, header } in found {
                let loc = Location {
                    pack: id,
                    offset,
                    stored_len: header.stored_len,
                    raw_len: header.raw_len,
                };
                inner
                    .blobs
                    .put(&mut wtxn, &header.hash, &loc.encode())
                    .map_err(heed_error)?;
                count += 1;
            }
            inner
                .packs
                .put(&mut wtxn, &id.to_be_bytes(), &end.to_le_bytes())
                .map_err(heed_error)?;
        }
        wtxn.commit().map_err(heed_error)?;
        inner.env.force_sync().map_err(heed_error)?;
        Ok(count)
    }

    fn require_exclusive(&self, what: &str) -> io::Result<()> {
        if self.inner.config.exclusive {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "{what} needs the store opened exclusively"
            )))
        }
    }

    /// Rewrites the packs, one at a time, while the store goes on being read and appended to:
    /// with `live`, keeping only what those manifests reference (the store must be exclusive:
    /// an instance still arriving references blobs no indexed manifest does); without, keeping
    /// every record. With `recode`, every blob is stored anew with that codec and level
    /// (repacking), its content checked against its hash first.
    ///
    /// The packs open for appending when it starts are closed first (later records go to new
    /// packs, which it leaves alone, as it does those a streaming blob holds and those of other
    /// processes). Each pack's records are copied into packs of its own, fsynced, then the blob
    /// index is pointed at the copies in one transaction, and only then is the old pack
    /// removed: a reader that found the old place either still holds the pack open (an
    /// unlinked file stays readable) or, failing to open it, looks the blob up again.
    ///
    /// `on_event` hears of each pack it claims before writing into it and of each pack it has
    /// rewritten; an error from it stops the gc with the old pack still in place.
    pub fn gc(
        &self,
        live: Option<&[Manifest]>,
        recode: Option<(Codec, i32)>,
        mut on_event: impl FnMut(GcEvent) -> io::Result<()>,
    ) -> io::Result<GcReport> {
        if live.is_some() {
            self.require_exclusive("gc")?;
        }
        let inner = &*self.inner;
        let _running = match inner.gc.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(io::Error::other("a gc or repack is already running"))
            }
        };
        let keep = Keep::new(live);
        let existing = pack::list_packs(&inner.packs_dir)?;
        let still_open = {
            let mut a = lock(&inner.appender);
            for act in std::mem::take(&mut a.idle) {
                a.open.remove(&act.id);
            }
            a.open.clone()
        };
        // Whatever was appended to the packs just closed is now indexed, so the blob index
        // says which of their records are current.
        self.commit()?;
        let mut rewrite = Rewrite {
            store: self,
            keep: &keep,
            recode,
            output: None,
            report: GcReport::default(),
            on_event: &mut on_event,
        };
        for id in existing {
            if !still_open.contains(&id) {
                rewrite.pack(id)?;
            }
        }
        let mut report = rewrite.report;
        if let Some(live) = live {
            for blob in live.iter().flat_map(|m| &m.blobs) {
                if !self.contains(&blob.hash)? {
                    report.missing.push(blob.hash);
                }
            }
        }
        report.missing.sort_unstable();
        report.missing.dedup();
        Ok(report)
    }

    /// Pack `id`, with its lock held so that no other process adopts it for appending while it
    /// is rewritten; None when another process appends to it.
    fn closed_pack(&self, id: u32) -> io::Result<Option<Arc<File>>> {
        if lock(&self.inner.own).contains(&id) {
            // Locked since this process created or adopted it, and closed by `gc`.
            return self.pack_file(id).map(Some);
        }
        let file = File::open(pack::pack_path(&self.inner.packs_dir, id))?;
        Ok(pack::flock(&file, true, false)?.then(|| Arc::new(file)))
    }

    /// Forgets pack `id` and removes its file. The readers' lock is held across the unlink so
    /// that no reader opens the file after its entry is gone and keeps it in the map.
    fn remove_pack(&self, id: u32) -> io::Result<()> {
        let mut readers = self
            .inner
            .readers
            .write()
            .unwrap_or_else(|p| p.into_inner());
        readers.remove(&id);
        lock(&self.inner.own).remove(&id);
        fs::remove_file(pack::pack_path(&self.inner.packs_dir, id))
    }

    /// The length of each pack no other process is appending to.
    pub fn settled_pack_lengths(&self) -> io::Result<HashMap<u32, u64>> {
        let mut lengths = HashMap::new();
        for id in pack::list_packs(&self.inner.packs_dir)? {
            if let Some(file) = self.listed_pack(id, true)? {
                lengths.insert(id, file.metadata()?.len());
            }
        }
        Ok(lengths)
    }

    /// Pack count, bytes in packs, and indexed records.
    pub fn stats(&self) -> io::Result<(u64, u64, u64)> {
        let (mut packs, mut bytes) = (0, 0);
        for id in pack::list_packs(&self.inner.packs_dir)? {
            match fs::metadata(pack::pack_path(&self.inner.packs_dir, id)) {
                Ok(m) => {
                    packs += 1;
                    bytes += m.len();
                }
                // Removed by a gc since it was listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let rtxn = self.inner.env.read_txn().map_err(heed_error)?;
        let records = self.inner.blobs.len(&rtxn).map_err(heed_error)?;
        Ok((packs, bytes, records))
    }
}

impl Inner {
    /// How far the blob index has taken pack `id` into account.
    fn indexed_end(&self, id: u32) -> io::Result<u64> {
        let rtxn = self.env.read_txn().map_err(heed_error)?;
        Ok(self
            .packs
            .get(&rtxn, &id.to_be_bytes())
            .map_err(heed_error)?
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

    /// Indexes what lies beyond each unlocked pack's indexed length, cutting a torn last record,
    /// and adopts the newest pack with room as the active one.
    fn recover(&mut self) -> io::Result<()> {
        let mut candidate: Option<Active> = None;
        for id in pack::list_packs(&self.packs_dir)? {
            let path = pack::pack_path(&self.packs_dir, id);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            if !pack::flock(&file, true, false)? {
                continue; // another process is appending to it
            }
            let len = file.metadata()?.len();
            if len < PACK_HEADER_LEN {
                // Created but never written: a crash between create and header write.
                drop(file);
                fs::remove_file(&path)?;
                self.recovery
                    .push(format!("removed empty pack {}", path.display()));
                continue;
            }
            pack::check_pack_header(&file)?;
            let indexed = self.indexed_end(id)?;
            let mut end = len;
            if len > indexed {
                let (found, valid_end, problem) = pack::walk(&file, indexed, true)?;
                let mut wtxn = self.env.write_txn().map_err(heed_error)?;
                for Found { offset, header } in &found {
                    let loc = Location {
                        pack: id,
                        offset: *offset,
                        stored_len: header.stored_len,
                        raw_len: header.raw_len,
                    };
                    self.blobs
                        .put(&mut wtxn, &header.hash, &loc.encode())
                        .map_err(heed_error)?;
                }
                if let Some(why) = problem {
                    file.set_len(valid_end)?;
                    file.sync_all()?;
                    self.recovery.push(format!(
                        "cut torn tail of {} at byte {valid_end} ({} bytes dropped: {why})",
                        path.display(),
                        len - valid_end
                    ));
                    end = valid_end;
                }
                self.packs
                    .put(&mut wtxn, &id.to_be_bytes(), &end.to_le_bytes())
                    .map_err(heed_error)?;
                wtxn.commit().map_err(heed_error)?;
                self.env.force_sync().map_err(heed_error)?;
            } else if len < indexed {
                self.recovery.push(format!(
                    "{} is shorter ({len} bytes) than the blob index says ({indexed}): run verify",
                    path.display()
                ));
            }
            if end < self.config.pack_size {
                candidate = Some(Active {
                    id,
                    file: Arc::new(file),
                    len: end,
                });
            }
        }
        if let Some(act) = candidate {
            self.readers
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .insert(act.id, act.file.clone());
            self.own
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .insert(act.id);
            let appender = self.appender.get_mut().unwrap_or_else(|p| p.into_inner());
            appender.open.insert(act.id);
            appender.idle.push(act);
        }
        Ok(())
    }

    fn create_next_pack(&self) -> io::Result<(u32, Arc<File>)> {
        let mut id = pack::list_packs(&self.packs_dir)?
            .last()
            .map_or(1, |last| last + 1);
        loop {
            match pack::create_pack(&self.packs_dir, id) {
                Ok(file) => {
                    if !pack::flock(&file, true, false)? {
                        return Err(io::Error::other("a new pack is locked by another process"));
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
                Err(e) => return Err(e),
            }
        }
    }
}

/// The result of streaming one instance into the store.
pub struct Ingested {
    pub summary: Summary,
    pub manifest: Manifest,
    /// Bytes of blobs this instance added (0 for a re-sent instance: everything de-duplicated).
    pub new_bytes: u64,
}

/// Cuts the stream into blobs at the scanner's segment boundaries (and every [`MAX_BLOB`]
/// bytes), hashing and appending each as it completes; a large blob of a store that keeps
/// blobs as they are goes into its pack while it arrives instead.
struct BlobSink {
    store: Store,
    buf: Vec<u8>,
    stream: Option<StreamingBlob>,
    blobs: Vec<BlobRef>,
    segments: Vec<Segment>,
    segment_start: u32,
    new_bytes: u64,
}

impl BlobSink {
    fn blob_len(&self) -> usize {
        self.stream
            .as_ref()
            .map_or(self.buf.len(), |s| s.len as usize)
    }

    fn flush_blob(&mut self) -> io::Result<()> {
        let (hash, length, new) = match self.stream.take() {
            Some(stream) => {
                let length = stream.len;
                let (hash, new) = stream.finish()?;
                (hash, length, new)
            }
            None if self.buf.is_empty() => return Ok(()),
            None => {
                let hash = *blake3::hash(&self.buf).as_bytes();
                let new = self.store.put_blob(hash, &self.buf)?;
                let length = self.buf.len() as u64;
                self.buf.clear();
                (hash, length, new)
            }
        };
        if new {
            self.new_bytes += length;
        }
        self.blobs.push(BlobRef { hash, length });
        Ok(())
    }
}

impl Sink for BlobSink {
    fn data(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.blob_len() == MAX_BLOB {
                self.flush_blob()?;
            }
            let n = bytes.len().min(MAX_BLOB - self.blob_len());
            match &mut self.stream {
                Some(stream) => stream.write(&bytes[..n])?,
                None => {
                    self.buf.extend_from_slice(&bytes[..n]);
                    if self.buf.len() >= STREAM_BLOB && self.store.inner.config.codec == Codec::Raw
                    {
                        let mut stream = self.store.stream_blob()?;
                        stream.write(&self.buf)?;
                        self.buf.clear();
                        self.stream = Some(stream);
                    }
                }
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }

    fn cut(&mut self, kind: SegmentKind) -> io::Result<()> {
        self.flush_blob()?;
        let count = self.blobs.len() as u32 - self.segment_start;
        if count > 0 {
            self.segments.push(Segment {
                kind,
                first_blob: self.segment_start,
                blob_count: count,
            });
            self.segment_start = self.blobs.len() as u32;
        }
        Ok(())
    }
}

/// Streams one instance into the store: feed it chunks as they arrive, then `finish`.
pub struct InstanceWriter {
    parser: Parser,
    sink: BlobSink,
}

impl InstanceWriter {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), FeedError> {
        self.parser.feed(bytes, &mut self.sink)
    }

    pub fn finish(mut self) -> Result<Ingested, FeedError> {
        let summary = self.parser.finish(&mut self.sink)?;
        let pixel = summary.pixel_data.as_ref();
        let manifest = Manifest {
            total_length: summary.total_length,
            dataset_offset: summary.dataset_offset,
            transfer_syntax: summary.transfer_syntax.clone(),
            encapsulated: pixel.is_some_and(|p| p.encapsulated()),
            frames_resolved: pixel.is_some_and(|p| p.frames_resolved) && !summary.deflated,
            deflated: summary.deflated,
            truncated: summary.truncated_at.is_some(),
            blobs: self.sink.blobs,
            segments: self.sink.segments,
        };
        Ok(Ingested {
            summary,
            manifest,
            new_bytes: self.sink.new_bytes,
        })
    }
}
