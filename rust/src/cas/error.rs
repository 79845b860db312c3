//! What can go wrong in the store, by kind, so that each caller answers it as it deserves: a
//! DIMSE status, an HTTP code, a Python exception, a line in a report.

use std::fmt;
use std::io;

/// A store operation that failed.
#[derive(Debug)]
pub enum StoreError {
    /// The disk: reading or writing a pack, the quarantine, a file.
    Io(io::Error),
    /// The blob index (LMDB under `<root>/blobs`).
    Index(heed::Error),
    /// A record an instance is made of is missing or fails its checks.
    Damaged(String),
    /// The filesystem is full, or below the free-space reserve: nothing is taken in.
    NoRoom(String),
    /// An fsync of a pack failed: nothing more is acknowledged until a restart.
    FsyncFailed(String),
    /// What this needs the store for alone is in use (another process, a running gc).
    Busy(String),
    /// Asked for something the store or the instance does not hold.
    NotFound(String),
    /// Asked for something the instance cannot give as it is stored.
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// A file that is not there: a pack a gc removed since it was looked up, say.
    pub fn is_missing_file(&self) -> bool {
        matches!(self, StoreError::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io(e) => write!(f, "{e}"),
            StoreError::Index(e) => write!(f, "blob index: {e}"),
            StoreError::Damaged(why)
            | StoreError::NoRoom(why)
            | StoreError::FsyncFailed(why)
            | StoreError::Busy(why)
            | StoreError::NotFound(why)
            | StoreError::Unsupported(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io(e) => Some(e),
            StoreError::Index(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                StoreError::NoRoom(e.to_string())
            }
            _ => StoreError::Io(e),
        }
    }
}

impl From<heed::Error> for StoreError {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Io(io) => io.into(),
            other => StoreError::Index(other),
        }
    }
}

/// For the paths that speak `io::Error` (the scanner's sink, the listener's backlog): each
/// kind keeps an `ErrorKind` that says it.
impl From<StoreError> for io::Error {
    fn from(e: StoreError) -> Self {
        let kind = match &e {
            StoreError::Io(io) => return io::Error::new(io.kind(), e),
            StoreError::Index(_) | StoreError::FsyncFailed(_) => io::ErrorKind::Other,
            StoreError::Damaged(_) => io::ErrorKind::InvalidData,
            StoreError::NoRoom(_) => io::ErrorKind::StorageFull,
            StoreError::Busy(_) => io::ErrorKind::WouldBlock,
            StoreError::NotFound(_) => io::ErrorKind::NotFound,
            StoreError::Unsupported(_) => io::ErrorKind::Unsupported,
        };
        io::Error::new(kind, e)
    }
}
