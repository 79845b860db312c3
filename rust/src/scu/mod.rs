//! The archive as an SCU, in Rust: associations we request (`association`), C-FIND with its
//! identifiers encoded and decoded here (`identifier`, `find`), and the retrieves (`retrieve`):
//! C-MOVE to a destination, and C-GET whose C-STORE sub-operations stream from the socket into
//! the store through the listener's own receive path (`crate::receive`). Each runs over plain
//! TCP or DICOM TLS alike (`crate::tls`, `crate::transport`).
//!
//! Every wait is a blocking read on the association's socket, bounded by its timeout: nothing
//! polls.

pub mod association;
pub mod find;
pub mod identifier;
pub mod retrieve;

use crate::tls::TlsError;
use std::fmt;
use std::io;

pub use association::{Association, Peer};
pub use find::find;
pub use identifier::Key;
pub use retrieve::{get, move_to, Retrieved};

/// Why an SCU operation failed.
#[derive(Debug)]
pub enum ScuError {
    /// The connection could not be made, or broke (or the peer stayed silent past the timeout).
    Io(io::Error),
    /// The TLS handshake failed: the peer's certificate not signed by our CAs or not naming
    /// the host, ours refused, no TLS spoken at all, or no answer in time.
    TlsHandshake(TlsError),
    /// TLS failed after the handshake: an alert from the peer (with TLS 1.3, how a peer
    /// refuses our certificate), or a record that does not decrypt.
    Tls(rustls::Error),
    /// The peer rejected the association: (result, source, reason) as PS3.8 Table 9-21 numbers.
    Rejected(u8, u8, u8),
    /// The peer aborted the association.
    Aborted,
    /// The peer accepted no presentation context for this service.
    NoContext(String),
    /// The peer broke the protocol (what it sent that it should not have).
    Protocol(String),
}

impl fmt::Display for ScuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScuError::Io(e) => write!(f, "{e}"),
            ScuError::TlsHandshake(TlsError::Handshake(e @ rustls::Error::InvalidMessage(_))) => {
                write!(
                    f,
                    "TLS handshake failed: {e} (does the peer speak DICOM TLS on this port?)"
                )
            }
            ScuError::TlsHandshake(e) => write!(f, "TLS handshake failed: {e}"),
            ScuError::Tls(e) => write!(f, "TLS: {e}"),
            ScuError::Rejected(result, source, reason) => {
                let how = if *result == 2 {
                    "transient"
                } else {
                    "permanent"
                };
                match crate::pdu::RejectReason::from_code(*source, *reason) {
                    Some(why) => write!(
                        f,
                        "rejected the association ({how}): {} (source {source}, reason {reason})",
                        why.describe()
                    ),
                    None => write!(
                        f,
                        "rejected the association ({how}, source {source}, reason {reason})"
                    ),
                }
            }
            ScuError::Aborted => f.write_str("aborted the association"),
            ScuError::NoContext(what) => write!(f, "accepted no presentation context for {what}"),
            ScuError::Protocol(what) => write!(f, "broke the protocol: {what}"),
        }
    }
}

impl std::error::Error for ScuError {}

impl From<io::Error> for ScuError {
    /// The TLS failure a read or write over TLS reports as an I/O error is told as such.
    fn from(e: io::Error) -> Self {
        match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(tls) => ScuError::Tls(tls.clone()),
            None => ScuError::Io(e),
        }
    }
}

impl From<crate::pdu::PduError> for ScuError {
    fn from(e: crate::pdu::PduError) -> Self {
        ScuError::Protocol(e.to_string())
    }
}
