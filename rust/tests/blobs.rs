//! The blob-store suite, written once against `BlobStore` and run on every implementation:
//! the packs (blobs kept as they are, and zstd, which takes blobs whole only), memory, and
//! object stores (object_store's memory and local directory, and S3 on a real SeaweedFS).

mod common;
#[path = "common/seaweedfs.rs"]
mod seaweedfs;

use common::{instance, large_instance, pattern};
use dicomvault_native::cas::{
    BlobStore, InstanceWriter, MemoryBlobStore, ObjectBackend, ObjectBlobStore, ObjectStoreConfig,
    ReadInstances, S3Config, SegmentedBlobStore, Store, StoreConfig, StoreError, MAX_BLOB,
    S3_MIN_PART, SEGMENT_BLOB_MAX,
};
use dicomvault_native::manifest::{BlobRef, Hash, Manifest};
use dicomvault_native::pack::Codec;
use dicomvault_native::scan::ScanOptions;
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

/// A blob store under test.
trait Backend {
    type Store: BlobStore + Clone + 'static;

    /// An empty store.
    fn create() -> Self;

    /// A handle on the store.
    fn store(&self) -> Self::Store;

    /// What a restarted process finds (every handle must have been dropped).
    fn reopen(&mut self);

    /// Whether this machine has the backend (SeaweedFS may be missing, except in CI).
    fn available() -> bool {
        true
    }
}

struct Packs {
    dir: tempfile::TempDir,
    config: StoreConfig,
    store: Option<Store>,
}

impl Packs {
    fn with(config: StoreConfig) -> Packs {
        let dir = tempfile::tempdir().unwrap();
        let store = Some(Store::open(dir.path(), config.clone()).unwrap());
        Packs { dir, config, store }
    }
}

impl Backend for Packs {
    type Store = Store;

    fn create() -> Packs {
        Packs::with(StoreConfig::default())
    }

    fn store(&self) -> Store {
        self.store.clone().expect("open")
    }

    fn reopen(&mut self) {
        drop(self.store.take());
        let store = Store::open(self.dir.path(), self.config.clone()).unwrap();
        assert!(
            store.recovery_messages().is_empty(),
            "{:?}",
            store.recovery_messages()
        );
        self.store = Some(store);
    }
}

/// Packs that compress: every blob is buffered and put whole, none streams.
struct ZstdPacks(Packs);

impl Backend for ZstdPacks {
    type Store = Store;

    fn create() -> ZstdPacks {
        ZstdPacks(Packs::with(StoreConfig {
            codec: Codec::Zstd,
            ..StoreConfig::default()
        }))
    }

    fn store(&self) -> Store {
        self.0.store()
    }

    fn reopen(&mut self) {
        self.0.reopen()
    }
}

struct Memory(MemoryBlobStore);

impl Backend for Memory {
    type Store = MemoryBlobStore;

    fn create() -> Memory {
        Memory(MemoryBlobStore::new())
    }

    fn store(&self) -> MemoryBlobStore {
        self.0.clone()
    }

    /// Memory outlives no process: a reopened store is the same one.
    fn reopen(&mut self) {}
}

/// A part size well below the blobs the suite streams, so that memory and a directory take
/// them as multipart uploads (S3 takes parts of 5 MiB at least: there only larger blobs are).
const SMALL_PART: usize = 256 << 10;

/// object_store's in-memory store.
struct ObjectsInMemory(ObjectBlobStore);

impl Backend for ObjectsInMemory {
    type Store = ObjectBlobStore;

    fn create() -> ObjectsInMemory {
        ObjectsInMemory(
            ObjectBlobStore::open(&ObjectStoreConfig {
                part_size: SMALL_PART,
                ..ObjectStoreConfig::new(ObjectBackend::InMemory)
            })
            .unwrap(),
        )
    }

    fn store(&self) -> ObjectBlobStore {
        self.0.clone()
    }

    /// Memory outlives no process: a reopened store is the same one.
    fn reopen(&mut self) {}
}

/// Opened anew from its configuration on every reopen.
struct Objects {
    config: ObjectStoreConfig,
    store: Option<ObjectBlobStore>,
    _dir: Option<tempfile::TempDir>,
}

impl Objects {
    fn with(config: ObjectStoreConfig, dir: Option<tempfile::TempDir>) -> Objects {
        let store = Some(ObjectBlobStore::open(&config).unwrap());
        Objects {
            config,
            store,
            _dir: dir,
        }
    }
}

/// object_store's local-directory store.
struct ObjectsOnDisk(Objects);

impl Backend for ObjectsOnDisk {
    type Store = ObjectBlobStore;

    fn create() -> ObjectsOnDisk {
        let dir = tempfile::tempdir().unwrap();
        let config = ObjectStoreConfig {
            part_size: SMALL_PART,
            ..ObjectStoreConfig::new(ObjectBackend::LocalFileSystem(dir.path().into()))
        };
        ObjectsOnDisk(Objects::with(config, Some(dir)))
    }

    fn store(&self) -> ObjectBlobStore {
        self.0.store.clone().expect("open")
    }

    fn reopen(&mut self) {
        drop(self.0.store.take());
        self.0.store = Some(ObjectBlobStore::open(&self.0.config).unwrap());
    }
}

/// S3 on SeaweedFS: each store under a prefix of its own in the server's one bucket.
struct ObjectsOnS3(Objects);

impl Backend for ObjectsOnS3 {
    type Store = ObjectBlobStore;

    fn create() -> ObjectsOnS3 {
        static STORES: AtomicUsize = AtomicUsize::new(0);
        let server = seaweedfs::seaweedfs().expect("available");
        let config = ObjectStoreConfig {
            prefix: format!("suite/{}", STORES.fetch_add(1, Ordering::Relaxed)),
            ..ObjectStoreConfig::new(ObjectBackend::S3(server.s3_config()))
        };
        ObjectsOnS3(Objects::with(config, None))
    }

    fn store(&self) -> ObjectBlobStore {
        self.0.store.clone().expect("open")
    }

    fn reopen(&mut self) {
        drop(self.0.store.take());
        self.0.store = Some(ObjectBlobStore::open(&self.0.config).unwrap());
    }

    fn available() -> bool {
        seaweedfs::seaweedfs().is_some()
    }
}

/// A node's blobs with its log, on an object-store backend: small blobs in log segments.
struct Segmented<B> {
    objects: B,
    store: Option<SegmentedBlobStore>,
}

impl<B: Backend<Store = ObjectBlobStore>> Backend for Segmented<B> {
    type Store = SegmentedBlobStore;

    fn create() -> Segmented<B> {
        let objects = B::create();
        let store = Some(SegmentedBlobStore::open(&objects.store(), 1).unwrap());
        Segmented { objects, store }
    }

    fn store(&self) -> SegmentedBlobStore {
        self.store.clone().expect("open")
    }

    /// Finds the small blobs again in the segments flushed.
    fn reopen(&mut self) {
        drop(self.store.take());
        self.objects.reopen();
        self.store = Some(SegmentedBlobStore::open(&self.objects.store(), 1).unwrap());
    }

    fn available() -> bool {
        B::available()
    }
}

fn hash(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

fn put(store: &impl BlobStore, bytes: &[u8]) -> BlobRef {
    let hash = hash(bytes);
    store.put(hash, bytes).unwrap();
    BlobRef {
        hash,
        length: bytes.len() as u64,
    }
}

/// Every blob the store lists, paging `page` at a time.
fn list_all(store: &impl BlobStore, page: usize) -> Vec<BlobRef> {
    let mut all: Vec<BlobRef> = Vec::new();
    loop {
        let got = store.list(all.last().map(|b| &b.hash), page).unwrap();
        assert!(got.len() <= page);
        let short = got.len() < page;
        all.extend(got);
        if short {
            return all;
        }
    }
}

fn options() -> ScanOptions {
    ScanOptions {
        wanted: Vec::new(),
        transfer_syntax: None,
        allow_truncated: true,
    }
}

/// Streams `data` in `chunk`-sized pieces into the store: its manifest and the new bytes.
fn ingest<S: BlobStore>(store: S, data: &[u8], chunk: usize) -> (Manifest, u64) {
    let mut w = InstanceWriter::new(store, options());
    for piece in data.chunks(chunk) {
        w.write(piece).unwrap();
    }
    let ingested = w.finish().unwrap();
    (ingested.manifest, ingested.new_bytes)
}

fn puts_are_found_once_and_unknown_hashes_are_not_found<B: Backend>() {
    let backend = B::create();
    let store = backend.store();
    let bytes = pattern(5000, 1);
    let h = hash(&bytes);
    assert!(!store.contains(&h).unwrap());
    assert!(store.put(h, &bytes).unwrap(), "a new blob is written");
    assert!(
        !store.put(h, &bytes).unwrap(),
        "a blob held is not written again"
    );
    assert!(store.contains(&h).unwrap());
    assert_eq!(store.get(&h).unwrap(), bytes);
    let unknown = hash(b"never stored");
    assert!(!store.contains(&unknown).unwrap());
    assert!(matches!(store.get(&unknown), Err(StoreError::NotFound(_))));
    assert_eq!(list_all(&store, 10).len(), 1);
}

fn ranges_read_what_they_ask_and_check_the_blob_length<B: Backend>() {
    let backend = B::create();
    let store = backend.store();
    let bytes = pattern(1000, 2);
    let blob = put(&store, &bytes);
    assert_eq!(store.get_range(&blob, 10..20).unwrap(), bytes[10..20]);
    assert_eq!(store.get_range(&blob, 0..1000).unwrap(), bytes);
    assert!(store.get_range(&blob, 1000..1000).unwrap().is_empty());
    assert!(matches!(
        store.get_range(&blob, 990..1001),
        Err(StoreError::NotFound(_))
    ));
    let shorter = BlobRef {
        length: 999,
        ..blob
    };
    assert!(matches!(
        store.get_range(&shorter, 0..10),
        Err(StoreError::Damaged(_))
    ));
    let unknown = BlobRef {
        hash: hash(b"never stored"),
        length: 10,
    };
    assert!(matches!(
        store.get_range(&unknown, 0..10),
        Err(StoreError::NotFound(_))
    ));
}

fn listing_pages_through_every_blob_in_hash_order<B: Backend>() {
    let backend = B::create();
    let store = backend.store();
    let mut expected: Vec<BlobRef> = (0..25u8)
        .map(|i| put(&store, &pattern(100 + i as usize, i)))
        .collect();
    expected.sort_by_key(|b| b.hash);
    assert!(store.list(None, 0).unwrap().is_empty());
    for page in [1, 7, 25, 100] {
        assert_eq!(list_all(&store, page), expected, "pages of {page}");
    }
    assert_eq!(
        store.list(Some(&expected[9].hash), 3).unwrap(),
        expected[10..13]
    );
    assert!(store.list(Some(&expected[24].hash), 3).unwrap().is_empty());
}

fn deleted_blobs_are_gone_until_stored_again<B: Backend>() {
    let mut backend = B::create();
    let store = backend.store();
    let (a, b, c) = (
        put(&store, &pattern(300, 3)),
        put(&store, &pattern(300, 4)),
        put(&store, &pattern(300, 5)),
    );
    assert!(store.delete(&a.hash).unwrap());
    assert!(!store.delete(&a.hash).unwrap(), "deleted once");
    assert!(store.delete(&c.hash).unwrap());
    assert!(!store.contains(&a.hash).unwrap());
    assert!(matches!(store.get(&a.hash), Err(StoreError::NotFound(_))));
    assert_eq!(list_all(&store, 10), vec![b]);
    assert_eq!(store.get(&b.hash).unwrap(), pattern(300, 4));
    assert!(store.put(a.hash, &pattern(300, 3)).unwrap(), "stored anew");
    store.flush().unwrap();
    drop(store);
    backend.reopen();
    let store = backend.store();
    assert_eq!(store.get(&a.hash).unwrap(), pattern(300, 3));
    assert!(!store.contains(&c.hash).unwrap(), "still deleted");
    let mut left = vec![a, b];
    left.sort_by_key(|x| x.hash);
    assert_eq!(list_all(&store, 10), left);
}

fn instances_read_back_byte_identical_whole_by_frame_and_from_any_offset<B: Backend>() {
    let mut backend = B::create();
    let data = instance("1.2.3", "A^B", 4, 1);
    let (manifest, new_bytes) = ingest(backend.store(), &data, 100);
    assert_eq!(new_bytes, data.len() as u64);
    assert_eq!(manifest.frame_count(), 4);
    backend.store().flush().unwrap();
    backend.reopen();
    let store = backend.store();
    store.check_instance(&manifest).unwrap();
    assert_eq!(store.read_instance(&manifest, 0).unwrap(), data);
    let frame = store.read_frame(&manifest, 2).unwrap();
    assert_eq!(frame, pattern(16 * 16 * 2 * 4, 1)[2 * 512..3 * 512]);
    // From the data set, and from the middle of a blob: a range of it is read.
    for start in [manifest.dataset_offset, 200, manifest.blobs[0].length + 17] {
        assert_eq!(
            store.read_instance(&manifest, start).unwrap(),
            data[start as usize..]
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.dcm");
    store.export(&manifest, &path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
}

fn identical_pixels_are_stored_once<B: Backend>() {
    let backend = B::create();
    let store = backend.store();
    let first = instance("1.2.3", "A^B", 2, 7);
    let corrected = instance("1.2.3", "Corrected^Name", 2, 7);
    let (m1, new1) = ingest(store.clone(), &first, 4096);
    let (_, again) = ingest(store.clone(), &first, 4096);
    let (m2, new2) = ingest(store.clone(), &corrected, 4096);
    assert_eq!(new1, first.len() as u64);
    assert_eq!(again, 0, "a re-sent instance adds nothing");
    assert_eq!(
        new2, m2.blobs[0].length,
        "a corrected header shares the pixel blobs"
    );
    assert_eq!(store.read_instance(&m2, 0).unwrap(), corrected);
    assert!(!store.same_data_set(&m1, &m2).unwrap());
    assert!(store.same_data_set(&m1, &m1.clone()).unwrap());
}

fn large_frames_stream_in_and_a_resent_instance_adds_nothing<B: Backend>() {
    let mut backend = B::create();
    let store = backend.store();
    let data = large_instance("1.2.3", 3, 7);
    let (manifest, new_bytes) = ingest(store.clone(), &data, 16 << 10);
    assert_eq!(new_bytes, data.len() as u64);
    assert_eq!(manifest.frame_count(), 3);
    assert_eq!(store.read_instance(&manifest, 0).unwrap(), data);
    let blobs = list_all(&store, 100);
    let (again, new_bytes) = ingest(store.clone(), &data, 100_000);
    assert_eq!((&again, new_bytes), (&manifest, 0));
    assert_eq!(list_all(&store, 100), blobs);
    store.flush().unwrap();
    drop(store);
    backend.reopen();
    let store = backend.store();
    assert_eq!(store.read_instance(&manifest, 0).unwrap(), data);
    assert_eq!(list_all(&store, 100), blobs);
}

fn an_abandoned_instance_leaves_no_frame_behind<B: Backend>() {
    let mut backend = B::create();
    let store = backend.store();
    let first = large_instance("1.2.3", 1, 1);
    let (m1, _) = ingest(store.clone(), &first, 1 << 20);
    let before: BTreeSet<Hash> = list_all(&store, 100).iter().map(|b| b.hash).collect();
    let broken = large_instance("1.2.4", 2, 2);
    let mut w = InstanceWriter::new(store.clone(), options());
    w.write(&broken[..broken.len() - 600_000]).unwrap();
    drop(w); // the association broke half-way through the first frame
    let second = large_instance("1.2.5", 2, 3);
    let (m2, _) = ingest(store.clone(), &second, 1 << 20);
    let kept: BTreeSet<Hash> = before
        .iter()
        .chain(m2.blobs.iter().map(|b| &b.hash))
        .copied()
        .collect();
    // What stays is the header's blob, a complete blob that nothing references, not the frame.
    let stray: Vec<BlobRef> = list_all(&store, 100)
        .into_iter()
        .filter(|b| !kept.contains(&b.hash))
        .collect();
    assert!(
        stray.iter().map(|b| b.length).sum::<u64>() < 1024,
        "{stray:?}"
    );
    store.flush().unwrap();
    drop(store);
    backend.reopen();
    let store = backend.store();
    assert_eq!(store.read_instance(&m1, 0).unwrap(), first);
    assert_eq!(store.read_instance(&m2, 0).unwrap(), second);
}

fn a_blob_the_store_lacks_is_damage_to_its_instance<B: Backend>() {
    let backend = B::create();
    let store = backend.store();
    let data = instance("1.2.3", "A^B", 3, 4);
    let (manifest, _) = ingest(store.clone(), &data, 1 << 20);
    let lost = manifest.frame_blobs(1).unwrap()[0].hash;
    assert!(store.delete(&lost).unwrap());
    for read in [
        store.read_instance(&manifest, 0).map(drop),
        store.read_instance(&manifest, 200).map(drop),
        store.check_instance(&manifest),
        store.read_frame(&manifest, 1).map(drop),
    ] {
        assert!(matches!(read, Err(StoreError::Damaged(_))), "{read:?}");
    }
    assert_eq!(
        store.read_frame(&manifest, 2).unwrap(),
        pattern(16 * 16 * 2 * 3, 4)[2 * 512..3 * 512]
    );
    // A manifest that says another length than the blob's is damaged too.
    let mut wrong = manifest.clone();
    wrong.blobs[0].length += 1;
    assert!(matches!(
        store.read_instance(&wrong, 0),
        Err(StoreError::Damaged(_))
    ));
}

fn concurrent_writers_share_the_store<B: Backend>() {
    let mut backend = B::create();
    let store = backend.store();
    let handles: Vec<_> = (0..4u8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..10u8)
                    .map(|i| {
                        // Every other instance has a frame large enough to stream.
                        let data = if i % 2 == 0 {
                            instance(&format!("{t}.{i}"), "P", 2, t * 16 + i)
                        } else {
                            large_instance(&format!("{t}.{i}"), 1, t * 16 + i)
                        };
                        (ingest(store.clone(), &data, 777).0, data)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    store.flush().unwrap();
    drop(store);
    backend.reopen();
    let store = backend.store();
    for (m, data) in &all {
        assert_eq!(&store.read_instance(m, 0).unwrap(), data);
    }
}

/// Streams `bytes` in through `stream_blob`, `chunk` at a time: its hash and whether it was new.
fn stream(store: &impl BlobStore, bytes: &[u8], chunk: usize) -> (Hash, bool) {
    let mut w = store.stream_blob().unwrap().expect("object stores stream");
    for piece in bytes.chunks(chunk) {
        w.write(piece).unwrap();
    }
    assert_eq!(w.written(), bytes.len() as u64);
    w.finish().unwrap()
}

/// Object stores only: a blob of several parts (a multipart upload to a temporary key, copied
/// to the blob's) is stored whole under its hash, once, and leaves no temporary behind; one
/// abandoned half-way leaves nothing.
fn a_blob_of_several_parts_is_stored_once_under_its_hash<B: Backend<Store = ObjectBlobStore>>() {
    let mut backend = B::create();
    let store = backend.store();
    let bytes = pattern(MAX_BLOB, 9);
    let h = hash(&bytes);
    assert_eq!(stream(&store, &bytes, 100_000), (h, true));
    assert_eq!(stream(&store, &bytes, 1 << 20), (h, false), "held already");
    let mut w = store.stream_blob().unwrap().unwrap();
    w.write(&pattern(MAX_BLOB - 1, 10)).unwrap();
    drop(w);
    assert_eq!(store.remove_stale_uploads(Duration::ZERO).unwrap(), 0);
    drop(store);
    backend.reopen();
    let store = backend.store();
    let blob = BlobRef {
        hash: h,
        length: bytes.len() as u64,
    };
    assert_eq!(list_all(&store, 10), vec![blob]);
    assert_eq!(store.get(&h).unwrap(), bytes);
    // Across where S3 cut the parts (and the other stores too: 5 MiB is 20 small parts).
    let (start, end) = (S3_MIN_PART - 10, S3_MIN_PART + 10);
    assert_eq!(
        store.get_range(&blob, start as u64..end as u64).unwrap(),
        bytes[start..end]
    );
}

/// Object stores only: bytes that are not the blob their key names are damage when read whole
/// (a put must be given the bytes' hash: here it is not, as a disk or a bug might make it).
fn an_object_that_is_not_its_blob_is_damaged<B: Backend<Store = ObjectBlobStore>>() {
    let backend = B::create();
    let store = backend.store();
    let h = hash(b"the blob");
    assert!(store.put(h, b"not the blob").unwrap());
    assert!(matches!(store.get(&h), Err(StoreError::Damaged(_))));
    assert!(!store.put(h, b"the blob").unwrap(), "never overwritten");
}

/// Object stores only: gc leaves referenced and recent blobs alone, moves an unreferenced one
/// written more than the grace period ago to the trash — where it is still read, and whence a
/// later gc puts it back once something references it — and deletes it from there once it
/// has been trashed for the grace period.
fn unreferenced_objects_go_through_the_trash<B: Backend<Store = ObjectBlobStore>>() {
    let backend = B::create();
    let store = backend.store();
    let (kept, dropped) = (
        put(&store, &pattern(1000, 1)),
        put(&store, &pattern(1000, 2)),
    );
    let live: HashSet<Hash> = [kept.hash].into();
    // S3 dates objects to the second.
    let grace = Duration::from_secs(3);
    let collect = |live: &HashSet<Hash>, grace: Duration| {
        let before = SystemTime::now() - grace;
        store.collect(live, before, before).unwrap()
    };
    let report = collect(&live, grace);
    assert_eq!((report.blobs, report.recent, report.trashed), (2, 1, 0));

    std::thread::sleep(grace + Duration::from_secs(1));
    let report = collect(&live, grace);
    assert_eq!((report.trashed, report.trashed_bytes), (1, 1000));
    assert_eq!(report.deleted, 0, "trashed just now");
    assert_eq!(list_all(&store, 10), vec![kept]);
    assert_eq!(store.get(&dropped.hash).unwrap(), pattern(1000, 2));
    assert_eq!(
        store.get_range(&dropped, 10..20).unwrap(),
        pattern(1000, 2)[10..20]
    );
    assert!(store.contains(&dropped.hash).unwrap());

    let report = collect(&[kept.hash, dropped.hash].into(), grace);
    assert_eq!((report.restored, report.trashed, report.deleted), (1, 0, 0));
    assert_eq!(list_all(&store, 10).len(), 2);

    // Without a grace period: trashed by one gc, deleted by the next (its copy in the trash
    // is dated after the first began).
    std::thread::sleep(Duration::from_millis(1100));
    let report = collect(&live, Duration::ZERO);
    assert_eq!((report.trashed, report.deleted), (1, 0));
    std::thread::sleep(Duration::from_millis(1100));
    let report = collect(&live, Duration::ZERO);
    assert_eq!(
        (report.trashed, report.deleted, report.deleted_bytes),
        (0, 1, 1000)
    );
    assert!(!store.contains(&dropped.hash).unwrap());
    assert!(matches!(
        store.get(&dropped.hash),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.get(&kept.hash).unwrap(), pattern(1000, 1));
}

/// Segmented stores only: a small blob is held pending until flushed into a segment, and
/// cannot then be deleted on its own; a large one is an object, deleted as any.
fn small_blobs_in_segments_are_not_deleted_alone<B: Backend<Store = SegmentedBlobStore>>() {
    let backend = B::create();
    let store = backend.store();
    let (small, large) = (
        put(&store, &pattern(100, 1)),
        put(&store, &pattern(SEGMENT_BLOB_MAX + 1, 2)),
    );
    store.flush().unwrap();
    assert!(matches!(
        store.delete(&small.hash),
        Err(StoreError::Unsupported(_))
    ));
    assert!(store.delete(&large.hash).unwrap());
    assert_eq!(list_all(&store, 10), vec![small]);
}

/// Each case as a test of its own on one backend, where the machine has it.
macro_rules! cases {
    ($backend:ty: $($case:ident),+ $(,)?) => {$(
        #[test]
        fn $case() {
            if <$backend as Backend>::available() {
                super::$case::<$backend>();
            }
        }
    )+};
}

/// The suite, less the cases that delete a blob, for one backend.
macro_rules! keeping_suite {
    ($backend:ty) => {
        cases!($backend:
            puts_are_found_once_and_unknown_hashes_are_not_found,
            ranges_read_what_they_ask_and_check_the_blob_length,
            listing_pages_through_every_blob_in_hash_order,
            instances_read_back_byte_identical_whole_by_frame_and_from_any_offset,
            identical_pixels_are_stored_once,
            large_frames_stream_in_and_a_resent_instance_adds_nothing,
            an_abandoned_instance_leaves_no_frame_behind,
            concurrent_writers_share_the_store,
        );
    };
}

/// The whole suite for one backend.
macro_rules! suite {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;

            keeping_suite!($backend);
            cases!($backend:
                deleted_blobs_are_gone_until_stored_again,
                a_blob_the_store_lacks_is_damage_to_its_instance,
            );
        }
    };
}

/// The suite and the object-store cases, for one object-store backend.
macro_rules! object_suite {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;

            keeping_suite!($backend);
            cases!($backend:
                deleted_blobs_are_gone_until_stored_again,
                a_blob_the_store_lacks_is_damage_to_its_instance,
                a_blob_of_several_parts_is_stored_once_under_its_hash,
                an_object_that_is_not_its_blob_is_damaged,
            );
        }
    };
}

/// The suite for a node's blobs with its log: the cases that keep their blobs (a small blob in
/// a segment is deleted only by gc rewriting segments).
macro_rules! segmented_suite {
    ($module:ident, $backend:ty) => {
        mod $module {
            use super::*;

            keeping_suite!($backend);
            cases!($backend: small_blobs_in_segments_are_not_deleted_alone);
        }
    };
}

suite!(packs, Packs);
suite!(zstd_packs, ZstdPacks);
suite!(memory, Memory);
object_suite!(objects_in_memory, ObjectsInMemory);
object_suite!(objects_on_disk, ObjectsOnDisk);
object_suite!(objects_on_s3, ObjectsOnS3);
// gc dates a trashed blob by its copy, which S3 and memory write anew; a local directory's
// copy is a hard link that keeps the original's date (that backend is the tests' only).
mod trash_in_memory {
    use super::*;
    cases!(ObjectsInMemory: unreferenced_objects_go_through_the_trash);
}
mod trash_on_s3 {
    use super::*;
    cases!(ObjectsOnS3: unreferenced_objects_go_through_the_trash);
}
segmented_suite!(segmented_in_memory, Segmented<ObjectsInMemory>);
segmented_suite!(segmented_on_disk, Segmented<ObjectsOnDisk>);
segmented_suite!(segmented_on_s3, Segmented<ObjectsOnS3>);

/// A completed upload a crash left under `uploads/` is collected once past its grace period.
#[test]
fn stale_uploads_are_removed_after_their_grace_period() {
    let backend = ObjectsOnDisk::create();
    let dir = backend.0._dir.as_ref().unwrap().path().join("uploads");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("left-by-a-crash"), b"a completed upload").unwrap();
    let store = backend.store();
    assert_eq!(
        store
            .remove_stale_uploads(Duration::from_secs(3600))
            .unwrap(),
        0
    );
    assert_eq!(store.remove_stale_uploads(Duration::ZERO).unwrap(), 1);
    assert!(!dir.join("left-by-a-crash").exists());
}

/// An S3 service that does not answer fails the put (an I/O error, within the configured
/// time): never a blob taken for stored.
#[test]
fn an_unreachable_service_fails_the_call() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let config = S3Config {
        endpoint: Some(endpoint),
        access_key_id: Some("key".into()),
        secret_access_key: Some("secret".into()),
        allow_http: true,
        max_retries: 1,
        retry_timeout: Duration::from_secs(2),
        ..S3Config::new("dicomvault")
    };
    let store = ObjectBlobStore::open(&ObjectStoreConfig::new(ObjectBackend::S3(config))).unwrap();
    let started = std::time::Instant::now();
    let bytes = pattern(100, 1);
    for result in [
        store.put(hash(&bytes), &bytes).map(drop),
        store.get(&hash(&bytes)).map(drop),
        store.list(None, 10).map(drop),
    ] {
        assert!(matches!(result, Err(StoreError::Io(_))), "{result:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(30));
}
