//! Blobs as objects in an object store (S3, SeaweedFS; memory or a local directory for tests):
//! the [`BlobStore`] that several archive nodes can share.
//!
//! Keys, under the store's prefix:
//! - `blobs/<hex BLAKE3>`: one object per blob, written once by a create-only PUT (S3's
//!   `If-None-Match: *`) and never overwritten. A key names its bytes, so of two writers of one
//!   blob the second finds it there and writes nothing.
//! - `uploads/<unique>`: a large blob while it streams in; nothing ever references one.
//! - `segments/<node>/<seq>`: the log, with the small blobs of each commit batch ([`ObjectLog`]).
//! - `trash/<hex BLAKE3>`: a blob gc found unreferenced, kept a grace period before it is
//!   deleted; reads fall back to it ([`ObjectBlobStore::collect`] says why).
//!
//! Streaming. A blob's hash, hence its key, is known only once its last byte has arrived. The
//! writer keeps up to `part_size` bytes (S3's least part, 5 MiB, by default): a blob that ends
//! within that — most, since blobs are at most [`super::MAX_BLOB`] — is one create-only PUT
//! under its key. A longer one becomes a multipart upload to `uploads/<unique>`, each part sent
//! in the background while the next arrives; on finish the upload is completed, copied to the
//! blob's key unless an object is there (copy-if-not-exists: on S3 a one-part multipart copy
//! completed with `If-None-Match: *`), and the temporary object deleted. So a hash key only ever
//! names a whole blob. A writer dropped unfinished aborts its upload. What a crash can leave is
//! never under `blobs/`: incomplete multipart uploads (a bucket lifecycle rule,
//! AbortIncompleteMultipartUpload, removes them) and completed ones under `uploads/`
//! ([`ObjectBlobStore::remove_stale_uploads`]).
//!
//! Durability: S3 acknowledges a PUT, a completed upload or a copy once it is durable, so there
//! is nothing left for [`BlobStore::flush`] to do. Every request is retried on transient
//! failures and bounded in time ([`S3Config`]); what still fails is an error of the call, never a
//! blob taken for stored.
//!
//! The core is synchronous: the store owns a small tokio runtime and blocks on it in each call.
//!
//! Split by concern: this module (the store, its configuration, the calls), `writer` (a blob
//! streaming in), `log` (the log's segments: [`ObjectLog`]), `segmented` (a node's blobs
//! with its log, small ones in its segments: [`SegmentedBlobStore`]) and `collect` (gc of
//! unreferenced objects).

mod collect;
mod log;
mod segmented;
mod writer;

use super::blobs::{check_length, check_range, BlobStore, BlobWriter};
use super::{hex, invalid, Result, StoreError};
use crate::manifest::{BlobRef, Hash};
pub use collect::Collected;
use futures_util::StreamExt;
pub use log::{LogReport, ObjectLog, SegmentBlob, SegmentId, SegmentRecord, SEGMENT_BLOB_MAX};
use object_store::aws::{AmazonS3Builder, S3CopyIfNotExists};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, RetryConfig,
};
pub use segmented::SegmentedBlobStore;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::runtime::Runtime;
use writer::ObjectBlobWriter;

/// S3's least part size (all parts but the last).
pub const S3_MIN_PART: usize = 5 << 20;

/// Where the objects are, and how blobs are cut into them.
#[derive(Debug, Clone)]
pub struct ObjectStoreConfig {
    pub backend: ObjectBackend,
    /// Keys start with this path (`archive/one`; empty: the bucket's root).
    pub prefix: String,
    /// A streamed blob longer than this is a multipart upload of parts this long; at least
    /// [`S3_MIN_PART`] on S3.
    pub part_size: usize,
}

impl ObjectStoreConfig {
    pub fn new(backend: ObjectBackend) -> ObjectStoreConfig {
        ObjectStoreConfig {
            backend,
            prefix: String::new(),
            part_size: S3_MIN_PART,
        }
    }
}

#[derive(Debug, Clone)]
pub enum ObjectBackend {
    /// An S3-compatible service.
    S3(S3Config),
    /// Objects in this process's memory (tests).
    InMemory,
    /// Objects as files under a directory (tests).
    LocalFileSystem(PathBuf),
}

/// An S3 bucket and how to reach it. Credentials not given here are taken from the standard
/// `AWS_*` environment variables.
#[derive(Clone)]
pub struct S3Config {
    /// `http://127.0.0.1:8333` for SeaweedFS; None for AWS itself (from the region).
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Plain HTTP, for an endpoint on loopback.
    pub allow_http: bool,
    pub connect_timeout: Duration,
    /// For one request, its body included (a part is at most `part_size`).
    pub request_timeout: Duration,
    /// Retries of a request that failed transiently (a 5xx, a dropped connection) ...
    pub max_retries: usize,
    /// ... within this time from its first attempt: then the call fails, and a C-STORE with it.
    pub retry_timeout: Duration,
}

/// The secret stays out of any debug print or log.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = self.secret_access_key.as_ref().map(|_| "***");
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &secret)
            .field("allow_http", &self.allow_http)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_timeout", &self.retry_timeout)
            .finish()
    }
}

impl S3Config {
    pub fn new(bucket: impl Into<String>) -> S3Config {
        S3Config {
            endpoint: None,
            bucket: bucket.into(),
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_retries: 5,
            retry_timeout: Duration::from_secs(30),
        }
    }
}

/// A handle on blobs in an object store; clones share its connections and runtime.
#[derive(Clone)]
pub struct ObjectBlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    // Dropped before the runtime its connections were made on.
    objects: Arc<dyn ObjectStore>,
    runtime: Runtime,
    blobs: Key,
    uploads: Key,
    segments: Key,
    trash: Key,
    part_size: usize,
    /// Whether listing returns keys in order (S3 and memory do; a directory's walk does not).
    ordered_listing: bool,
}

impl ObjectBlobStore {
    pub fn open(config: &ObjectStoreConfig) -> Result<ObjectBlobStore> {
        let (objects, ordered_listing): (Arc<dyn ObjectStore>, bool) = match &config.backend {
            ObjectBackend::S3(s3) => (Arc::new(s3_store(s3)?), true),
            ObjectBackend::InMemory => (Arc::new(InMemory::new()), true),
            ObjectBackend::LocalFileSystem(dir) => (
                Arc::new(LocalFileSystem::new_with_prefix(dir).map_err(object_error)?),
                false,
            ),
        };
        let prefix = Key::parse(&config.prefix).map_err(|e| {
            StoreError::Io(io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
        })?;
        // Two workers: parts upload in the background while the callers block on their calls.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dicomvault-objects")
            .enable_all()
            .build()?;
        Ok(ObjectBlobStore {
            inner: Arc::new(Inner {
                objects,
                runtime,
                blobs: prefix.clone().join("blobs"),
                uploads: prefix.clone().join("uploads"),
                segments: prefix.clone().join("segments"),
                trash: prefix.join("trash"),
                part_size: config.part_size.max(1),
                ordered_listing,
            }),
        })
    }

    /// Deletes the objects under `uploads/` last written more than `grace` ago: completed
    /// uploads that a crash kept from their copy or their deletion (gc's to call, with a grace
    /// longer than any upload takes). Returns how many there were.
    pub fn remove_stale_uploads(&self, grace: Duration) -> Result<usize> {
        let cutoff = SystemTime::now() - grace;
        self.run(async {
            let mut stale = Vec::new();
            let mut listing = self.objects().list(Some(&self.inner.uploads));
            while let Some(meta) = listing.next().await {
                let meta = meta?;
                if SystemTime::from(meta.last_modified) <= cutoff {
                    stale.push(meta.location);
                }
            }
            for key in &stale {
                self.objects().delete(key).await?;
            }
            Ok(stale.len())
        })
        .map_err(object_error)
    }

    fn key(&self, hash: &Hash) -> Key {
        self.inner.blobs.clone().join(hex(hash))
    }

    /// Where gc keeps blob `hash` while its grace period runs.
    fn trash_key(&self, hash: &Hash) -> Key {
        self.inner.trash.clone().join(hex(hash))
    }

    /// A ranged GET of the object under `key` holding `blob` (a HEAD for an empty range).
    fn get_range_of(&self, key: Key, blob: &BlobRef, range: Range<u64>) -> Result<Vec<u8>> {
        if range.is_empty() {
            let meta = self.run(self.objects().head(&key)).map_err(object_error)?;
            check_length(blob, meta.size as usize)?;
            return Ok(Vec::new());
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        };
        let got = self.run(async {
            let got = self.objects().get_opts(&key, options).await?;
            let size = got.meta.size;
            Ok::<_, object_store::Error>((size, got.bytes().await?))
        });
        match got {
            Ok((size, bytes)) => {
                check_length(blob, size as usize)?;
                check_length(
                    &BlobRef {
                        length: range.end - range.start,
                        ..*blob
                    },
                    bytes.len(),
                )?;
                Ok(bytes.into())
            }
            // A range past the object's end is refused: the manifest says a longer blob.
            Err(e @ object_store::Error::Generic { .. }) => {
                let meta = self.run(self.objects().head(&key)).map_err(object_error)?;
                check_length(blob, meta.size as usize)?;
                Err(object_error(e))
            }
            Err(e) => Err(object_error(e)),
        }
    }

    /// The key of blob `hash`'s object, to name it in a report.
    pub fn blob_key(&self, hash: &Hash) -> String {
        self.key(hash).to_string()
    }

    fn run<F: std::future::Future>(&self, future: F) -> F::Output {
        self.inner.runtime.block_on(future)
    }

    fn objects(&self) -> &dyn ObjectStore {
        self.inner.objects.as_ref()
    }
}

fn s3_store(config: &S3Config) -> Result<object_store::aws::AmazonS3> {
    // The HTTP client speaks TLS through rustls with ring, as the DICOM TLS does; a process
    // takes one default provider, and a second install of the same is refused harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&config.bucket)
        .with_region(&config.region)
        .with_allow_http(config.allow_http)
        .with_copy_if_not_exists(S3CopyIfNotExists::Multipart)
        .with_unsigned_payload(!signs_payload(config))
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(config.allow_http)
                .with_connect_timeout(config.connect_timeout)
                .with_timeout(config.request_timeout),
        )
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: config.max_retries,
            retry_timeout: config.retry_timeout,
        });
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(id) = &config.access_key_id {
        builder = builder.with_access_key_id(id);
    }
    if let Some(secret) = &config.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    builder.build().map_err(object_error)
}

/// Whether a request's signature covers its body's SHA-256 (SigV4's signed payload): only
/// where nothing else guards the body in transit, plain HTTP to another machine. Over TLS the
/// records' MACs do, over loopback it never leaves this machine, and a blob's BLAKE3 is
/// checked at every read either way; hashing costs the node and the service about a
/// millisecond per 0.5 MB each.
fn signs_payload(config: &S3Config) -> bool {
    let Some(rest) = config
        .endpoint
        .as_deref()
        .filter(|e| {
            e.get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
        })
        .map(|e| &e[7..])
    else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !loopback
}

/// An object store's error as the store's: a missing object is NotFound; a refused credential
/// says so; everything else (the service unreachable or failing after the retries) is I/O.
fn object_error(e: object_store::Error) -> StoreError {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => StoreError::NotFound(e.to_string()),
        E::NotSupported { .. } | E::NotImplemented { .. } => StoreError::Unsupported(e.to_string()),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            StoreError::Io(io::Error::new(io::ErrorKind::PermissionDenied, e))
        }
        e => StoreError::Io(io::Error::other(e)),
    }
}

/// The hash a key under `blobs/` names, if it is one.
fn key_hash(key: &Key) -> Option<Hash> {
    let name = key.filename()?.as_bytes();
    if name.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(name.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    // Only the lowercase spelling is a blob's key.
    (hex(&hash).as_bytes() == name).then_some(hash)
}

impl BlobStore for ObjectBlobStore {
    /// A create-only PUT: an object already under the key is left as it is.
    fn put(&self, hash: Hash, bytes: &[u8]) -> Result<bool> {
        let create = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let payload = PutPayload::from(bytes.to_vec());
        match self.run(self.objects().put_opts(&self.key(&hash), payload, create)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(object_error(e)),
        }
    }

    fn stream_blob(&self) -> Result<Option<Box<dyn BlobWriter>>> {
        Ok(Some(Box::new(ObjectBlobWriter::new(self.clone()))))
    }

    /// A GET (of the trashed copy if gc has moved it there), and the bytes' BLAKE3 checked against
    /// the key.
    fn get(&self, hash: &Hash) -> Result<Vec<u8>> {
        let get = |key: Key| {
            self.run(async {
                let got = self.objects().get(&key).await?;
                got.bytes().await
            })
        };
        // Home, trash, home again: gc may have put it back in between.
        let bytes = match get(self.key(hash)) {
            Err(object_store::Error::NotFound { .. }) => match get(self.trash_key(hash)) {
                Err(object_store::Error::NotFound { .. }) => get(self.key(hash)),
                got => got,
            },
            got => got,
        }
        .map_err(object_error)?;
        if blake3::hash(&bytes).as_bytes() != hash {
            return Err(invalid(format!(
                "object {} does not hold the blob its key names",
                self.key(hash)
            )));
        }
        Ok(bytes.into())
    }

    /// A ranged GET (a HEAD for an empty range): the blob's length is checked against the
    /// object's, its bytes only as far as the whole blob is read elsewhere.
    fn get_range(&self, blob: &BlobRef, range: Range<u64>) -> Result<Vec<u8>> {
        check_range(blob, &range)?;
        let home = || self.get_range_of(self.key(&blob.hash), blob, range.clone());
        match home() {
            Err(StoreError::NotFound(_)) => {
                match self.get_range_of(self.trash_key(&blob.hash), blob, range.clone()) {
                    Err(StoreError::NotFound(_)) => home(),
                    got => got,
                }
            }
            got => got,
        }
    }

    /// A HEAD (of the trashed copy if gc has moved it): whether the blob is held (its bytes
    /// are checked when read). An object a read found damaged stays held until deleted: a
    /// create-only put never replaces it.
    fn contains(&self, hash: &Hash) -> Result<bool> {
        for key in [self.key(hash), self.trash_key(hash), self.key(hash)] {
            match self.run(self.objects().head(&key)) {
                Ok(_) => return Ok(true),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(object_error(e)),
            }
        }
        Ok(false)
    }

    /// A listing of `blobs/` from after `after`'s key (S3's StartAfter), its pages fetched only
    /// as far as `limit` needs; a directory's, which comes in no order, is read whole and sorted.
    fn list(&self, after: Option<&Hash>, limit: usize) -> Result<Vec<BlobRef>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let dir = &self.inner.blobs;
        let mut stream = match after {
            Some(hash) => self.objects().list_with_offset(Some(dir), &self.key(hash)),
            None => self.objects().list(Some(dir)),
        };
        let ordered = self.inner.ordered_listing;
        let mut blobs: Vec<BlobRef> = self
            .run(async {
                let mut blobs = Vec::new();
                while let Some(meta) = stream.next().await {
                    let meta = meta?;
                    if let Some(hash) = key_hash(&meta.location) {
                        blobs.push(BlobRef {
                            hash,
                            length: meta.size,
                        });
                        if ordered && blobs.len() == limit {
                            break;
                        }
                    }
                }
                Ok::<_, object_store::Error>(blobs)
            })
            .map_err(object_error)?;
        if !ordered {
            blobs.sort_unstable_by_key(|b| b.hash);
            blobs.truncate(limit);
        }
        Ok(blobs)
    }

    /// A HEAD, then a DELETE (which S3 answers alike whether the object was there or not).
    fn delete(&self, hash: &Hash) -> Result<bool> {
        let key = self.key(hash);
        match self.run(self.objects().head(&key)) {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(object_error(e)),
        }
        match self.run(self.objects().delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(object_error(e)),
        }
    }

    /// Every put was durable when it returned.
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{signs_payload, S3Config};

    #[test]
    fn only_plain_http_to_another_machine_signs_the_body() {
        let signs = |endpoint: Option<&str>| {
            signs_payload(&S3Config {
                endpoint: endpoint.map(str::to_string),
                ..S3Config::new("b")
            })
        };
        for endpoint in [
            None,
            Some("https://s3.example.org"),
            Some("http://127.0.0.1:8333"),
            Some("http://localhost:8333/"),
            Some("http://[::1]:8333"),
        ] {
            assert!(!signs(endpoint), "{endpoint:?}");
        }
        for endpoint in [
            "HTTP://10.0.0.5:8333",
            "http://seaweedfs:8333",
            "http://[fd00::1]",
        ] {
            assert!(signs(Some(endpoint)), "{endpoint}");
        }
    }
}
