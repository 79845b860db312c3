//! The archive's DICOM listener: every association, served in Rust with the `Host` deciding.
//!
//! Negotiation (with SCP/SCU role selection; SOP classes other than Verification, Storage and
//! the Query/Retrieve FIND, MOVE and GET models are refused), PDU reading with large buffers,
//! and the DIMSE services:
//! - C-ECHO; C-STORE data sets streamed from their PDVs straight into the store's writer, the
//!   instance's manifest record appended to the pack log and made durable (the one commit
//!   path, `commit::Journal`: one fsync per batch) before its C-STORE-RSP goes out, and left
//!   in its backlog for the host's index to apply;
//! - C-FIND: the `Host` matches (access policy and the query engine live in Python) and
//!   encodes each response identifier, sent as it comes; a C-CANCEL-RQ is honoured;
//! - C-GET: the `Host` selects, sub-operations stream from the store to the socket (the next
//!   instance read ahead), the `Host` transcoding what the peer cannot take as stored; the
//!   storage contexts the requestor takes the SCP role for get the syntax it prefers;
//! - C-MOVE: the `Host` selects and sends over its own association to the destination, each
//!   sub-operation's status reported here as a pending response.
//!
//! It listens on a plain port and, when configured, a TLS port (`tls`, `transport`): the same
//! association code runs over either stream. Limits: a deadline for the whole A-ASSOCIATE-RQ
//! (ARTIM), one for each PDU, associations in all and per calling AE, the PDU size, the
//! instance size; the accept loop backs off when out of file descriptors.
//!
//! The module is split by concern: `listener` (ports, accept loops, limits, logging),
//! `policy` (which AE may do what, which SOP classes are served), `association` (negotiation,
//! PDUs, the DIMSE request loop, C-ECHO, C-STORE, Storage Commitment), `find` (C-FIND),
//! `retrieve` (C-GET and C-MOVE).

mod association;
mod find;
mod listener;
mod policy;
mod retrieve;

pub use listener::Listener;
pub use policy::{KnownAe, Policy, Service};

use crate::dimse::Implementation;
use crate::manifest::Manifest;
use crate::scan::{
    EXPLICIT_VR_LITTLE_ENDIAN as EXPLICIT_VR_LE, IMPLICIT_VR_LITTLE_ENDIAN as IMPLICIT_VR_LE,
};
use crate::status::*;
use rustls::ServerConfig;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// Storage Commitment Push Model (PS3.4 J): N-ACTION requests served, the host reporting.
pub const STORAGE_COMMITMENT: &str = "1.2.840.10008.1.20.1";

/// An A-ASSOCIATE-RQ larger than this is not read.
const MAX_ASSOCIATE_RQ: usize = 256 << 10;
const MAX_COMMAND: usize = 64 << 10;
/// Responses are gathered into writes of about this size.
const GATHER: usize = 64 << 10;
/// A C-GET reads the next instance ahead while the peer stores one, up to this size.
const PREFETCH_MAX: u64 = 16 << 20;
const LOG_INTERVAL: Duration = Duration::from_millis(50);
/// Out of file descriptors, the accept loop waits this long at first, doubling up to
/// `ACCEPT_BACKOFF_MAX`, rather than spin on the connection it cannot take.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Running out of descriptors again within this is not logged again: at the limit, each
/// connection that closes lets one in and the next fails.
const ACCEPT_RELOG: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub policy: Policy,
    pub storage_classes: HashSet<String>,
    /// Private SOP classes (UIDs outside the standard's root) are stored too, whatever they
    /// are (as Orthanc's UnknownSopClassAccepted): an old archive holds vendors' own.
    pub private_classes: bool,
    /// The C-FIND, C-MOVE and C-GET information models served here.
    pub find_classes: HashSet<String>,
    pub move_classes: HashSet<String>,
    pub retrieve_classes: HashSet<String>,
    /// In order of preference when a context offers several.
    pub transfer_syntaxes: Vec<String>,
    /// The largest P-DATA-TF variable field we accept (advertised; a larger PDU aborts).
    pub max_pdu: u32,
    /// Associations at once, and from one calling AE title; more are rejected (transient,
    /// local limit exceeded).
    pub max_associations: usize,
    pub max_associations_per_ae: usize,
    /// From the connection to its A-ASSOCIATE-RQ received whole, TLS handshake included: the
    /// ARTIM timer of PS3.8 9.1.5, a deadline however the bytes trickle in.
    pub association_timeout: Duration,
    /// Each PDU of an established association must arrive whole within this of our waiting for
    /// it (an idle association ends then).
    pub dimse_timeout: Duration,
    /// A C-STORE data set larger than this is refused (Out of Resources), nothing stored.
    pub max_instance_size: u64,
    pub implementation: Implementation,
    /// An instance received again with other bytes replaces the one stored (`[storage]
    /// on_duplicate = "replace"`), else the first is kept; recorded in its manifest record.
    pub replace_duplicates: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warning,
    Error,
}

/// A C-FIND or C-GET request, for the host to match.
pub struct QueryRequest {
    pub calling_ae: String,
    pub address: String,
    /// The information model (the request's Affected SOP Class).
    pub sop_class_uid: String,
    /// The identifier's transfer syntax.
    pub transfer_syntax: String,
    pub identifier: Vec<u8>,
}

pub type Matches = Box<dyn Iterator<Item = Result<Vec<u8>, String>>>;
pub type SubOperationStatuses = Box<dyn Iterator<Item = Result<u16, String>>>;

/// An archived instance a retrieve sends.
pub struct Selected {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax: String,
    pub dataset_offset: u64,
    pub manifest: Manifest,
}

/// What the listener leaves to its embedding application.
pub trait Host: Send + Sync + 'static {
    /// Log lines, in order (delivered in batches, at most `LOG_INTERVAL` late).
    fn log(&self, lines: Vec<(LogLevel, String)>);
    /// The instances a C-GET retrieves, or the status refusing it (the host logs why).
    fn select(&self, request: QueryRequest) -> Result<Vec<Selected>, u16>;
    /// A C-FIND's response identifiers, encoded in the request's transfer syntax and produced
    /// as they are sent (an error ends the responses), or the status refusing it.
    fn find(&self, request: QueryRequest) -> Result<Matches, u16>;
    /// A C-MOVE to `destination` (an AE title): the SOP Instance UIDs it sends and their
    /// sub-operations' statuses as the host sends them, or the status refusing it. The host
    /// watches `requestor` (the socket, which the listener does not read meanwhile): whatever
    /// arrives on it (a C-CANCEL, an A-ABORT, the end of the connection) stops the sending at
    /// once, rather than after a slow destination's next answer.
    fn move_to(
        &self,
        request: QueryRequest,
        destination: &str,
        requestor: RawFd,
    ) -> Result<(Vec<String>, SubOperationStatuses), u16>;
    /// The data set of `instance` in the first of `accepted` (the syntaxes the peer took its
    /// SOP class in, its preferred first) the host can make it in without changing a pixel:
    /// (transfer syntax, data set), or why it cannot be.
    fn transcode(
        &self,
        instance: &Selected,
        accepted: &[String],
    ) -> Result<(String, Vec<u8>), String>;
    /// Storage Commitment: a request (`report` None; its Action Information in
    /// `request.identifier`), whose N-ACTION status this is and on which the host reports
    /// later itself; or a peer's report on a request of ours (`report`: its Event Type ID;
    /// the Event Information in `request.identifier`), whose N-EVENT-REPORT status this is.
    fn commit(&self, request: QueryRequest, report: Option<u16>) -> u16;
}

/// Where the listener listens: the plain port, and the TLS port with its configuration.
pub struct Endpoints {
    pub plain: SocketAddr,
    pub tls: Option<(SocketAddr, Arc<ServerConfig>)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
