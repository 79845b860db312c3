//! The archive's DICOM listener: every association, served in Rust with the `Host` deciding.
//!
//! Negotiation (with SCP/SCU role selection; SOP classes other than Verification, Storage and
//! the Query/Retrieve FIND, MOVE and GET models are refused), PDU reading with large buffers,
//! and the DIMSE services:
//! - C-ECHO; C-STORE data sets streamed from their PDVs straight into the store's writer, the
//!   instance's manifest record appended to the pack log and made durable (group commit: one
//!   fsync per batch) before its C-STORE-RSP goes out, and left in the `Backlog` for the
//!   host's index to apply;
//! - C-FIND: the `Host` matches (access policy and the query engine live in Python) and
//!   encodes each response identifier, sent as it comes; a C-CANCEL-RQ is honoured;
//! - C-GET: the `Host` selects, sub-operations stream from the store to the socket (the next
//!   instance read ahead), the `Host` transcoding what the peer cannot take as stored; the
//!   storage contexts the requestor takes the SCP role for get the syntax it prefers;
//! - C-MOVE: the `Host` selects and sends over its own association to the destination, each
//!   sub-operation's status reported here as a pending response.
//!
//! It listens on a plain port and, when configured, a TLS port (`transport`): the same
//! association code runs over either stream. Limits: a deadline for the whole A-ASSOCIATE-RQ
//! (ARTIM), one for each PDU, associations in all and per calling AE, the PDU size, the
//! instance size; the accept loop backs off when out of file descriptors.

use crate::backlog::Backlog;
use crate::cas::{InstanceWriter, Store};
use crate::dimse::{self, Command, Implementation, SubOperations};
use crate::manifest::Manifest;
use crate::pdu::{
    self, AbortReason, AssociateRq, ContextResult, PdvWriter, RejectReason, RejectResult,
    RoleSelection,
};
pub use crate::receive::Received;
use crate::receive::{Receiver, Refused, Sender};
use crate::scan::FeedError;
use crate::transport::{self, Channel, Socket};
use rustls::ServerConfig;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// Storage Commitment Push Model (PS3.4 J): N-ACTION requests served, the host reporting.
pub const STORAGE_COMMITMENT: &str = "1.2.840.10008.1.20.1";
pub const SUCCESS: u16 = 0x0000;
pub const NOT_AUTHORIZED: u16 = 0x0124;
/// The request's SOP class is not what its presentation context was negotiated for (PS3.7 C).
pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
pub const OUT_OF_RESOURCES: u16 = 0xA700;
/// C-STORE: the data set is not the instance the request names, or lacks its identifiers
/// (PS3.4 B.2.3).
pub const DATA_SET_DOES_NOT_MATCH: u16 = 0xA900;
pub const CANNOT_UNDERSTAND: u16 = 0xC000;
/// C-GET: every sub-operation failed; one or more failed or warned (PS3.4 C.4.3.1.4).
pub const SUB_OPERATIONS_FAILED: u16 = 0xA702;
pub const SUB_OPERATIONS_WARNING: u16 = 0xB000;
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

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

/// A configured remote AE and what it may do here.
#[derive(Debug, Clone)]
pub struct KnownAe {
    pub aet: String,
    /// The addresses its host resolves to (checked when `check_modality_host`).
    pub addresses: Vec<String>,
    pub echo: bool,
    pub store: bool,
}

/// The [dicom] access policy, for the services served here.
#[derive(Debug, Clone)]
pub struct Policy {
    pub ae_title: String,
    pub check_called_aet: bool,
    pub always_allow_echo: bool,
    pub always_allow_store: bool,
    pub check_modality_host: bool,
    pub known: Vec<KnownAe>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Echo,
    Store,
}

impl Policy {
    pub fn allows(&self, calling_ae: &str, address: &str, service: Service) -> bool {
        let known = self
            .known
            .iter()
            .find(|k| k.aet == calling_ae)
            .filter(|k| !self.check_modality_host || k.addresses.iter().any(|a| a == address));
        match (known, service) {
            (Some(k), Service::Echo) => k.echo,
            (Some(k), Service::Store) => k.store,
            (None, Service::Echo) => self.always_allow_echo,
            (None, Service::Store) => self.always_allow_store,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub policy: Policy,
    pub storage_classes: HashSet<String>,
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

/// Log lines wait here for the logging thread, so that a request does not take Python's lock
/// to log itself.
#[derive(Default)]
struct Logs {
    lines: Mutex<Vec<(LogLevel, String)>>,
}

struct Shared {
    config: ListenerConfig,
    store: Store,
    /// Where C-STOREs' data sets go (the receive path C-GET's sub-operations share).
    receiver: Receiver,
    host: Arc<dyn Host>,
    stopping: AtomicBool,
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    associations: Mutex<Associations>,
    logs: Logs,
}

/// The associations established now: in all, and by calling AE title.
#[derive(Default)]
struct Associations {
    total: usize,
    by_ae: HashMap<String, usize>,
}

/// An association's place within the limits, given back when it ends.
struct Slot<'a> {
    shared: &'a Shared,
    calling_ae: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut associations = lock(&self.shared.associations);
        associations.total -= 1;
        if let Some(count) = associations.by_ae.get_mut(&self.calling_ae) {
            *count -= 1;
            if *count == 0 {
                associations.by_ae.remove(&self.calling_ae);
            }
        }
    }
}

impl Shared {
    fn log(&self, level: LogLevel, message: String) {
        lock(&self.logs.lines).push((level, message));
    }

    /// A slot for an association from `calling_ae`, or which limit it would exceed.
    fn slot(&self, calling_ae: &str) -> Result<Slot<'_>, &'static str> {
        let mut associations = lock(&self.associations);
        let from_ae = associations.by_ae.get(calling_ae).copied().unwrap_or(0);
        if associations.total >= self.config.max_associations {
            return Err("max_associations");
        }
        if from_ae >= self.config.max_associations_per_ae {
            return Err("max_associations_per_ae");
        }
        associations.total += 1;
        associations
            .by_ae
            .insert(calling_ae.to_string(), from_ae + 1);
        Ok(Slot {
            shared: self,
            calling_ae: calling_ae.to_string(),
        })
    }

    fn flush_logs(&self) {
        let lines = std::mem::take(&mut *lock(&self.logs.lines));
        if !lines.is_empty() {
            self.host.log(lines);
        }
    }
}

/// Where the listener listens: the plain port, and the TLS port with its configuration.
pub struct Endpoints {
    pub plain: SocketAddr,
    pub tls: Option<(SocketAddr, Arc<ServerConfig>)>,
}

/// A bound listening socket; TLS is spoken on it when it has a configuration.
struct Port {
    socket: TcpListener,
    address: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
}

/// A running listener; `stop` it to finish.
pub struct Listener {
    shared: Arc<Shared>,
    ports: Vec<Port>,
    acceptors: Vec<JoinHandle<()>>,
    logger: Option<JoinHandle<()>>,
}

impl Listener {
    pub fn start(
        endpoints: Endpoints,
        config: ListenerConfig,
        store: Store,
        backlog: Arc<Backlog<Received>>,
        host: Arc<dyn Host>,
    ) -> io::Result<Listener> {
        let mut ports = Vec::new();
        let tls = endpoints
            .tls
            .map(|(address, config)| (address, Some(config)));
        for (address, tls) in std::iter::once((endpoints.plain, None)).chain(tls) {
            let socket = TcpListener::bind(address)?;
            let address = socket.local_addr()?;
            ports.push(Port {
                socket,
                address,
                tls,
            });
        }
        let receiver = Receiver::new(
            store.clone(),
            backlog,
            config.implementation.clone(),
            config.replace_duplicates,
        );
        let shared = Arc::new(Shared {
            config,
            store,
            receiver,
            host,
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            connections: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            associations: Mutex::new(Associations::default()),
            logs: Logs::default(),
        });
        let logger = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("dicom-log".into())
                .spawn(move || {
                    while !shared.stopping.load(Ordering::SeqCst) {
                        std::thread::sleep(LOG_INTERVAL);
                        shared.flush_logs();
                    }
                })?
        };
        let mut acceptors = Vec::new();
        for port in &ports {
            let shared = shared.clone();
            let socket = port.socket.try_clone()?;
            let tls = port.tls.clone();
            let name = if tls.is_some() {
                "dicom-accept-tls"
            } else {
                "dicom-accept"
            };
            acceptors.push(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || accept_loop(&shared, &socket, tls))?,
            );
        }
        Ok(Listener {
            shared,
            ports,
            acceptors,
            logger: Some(logger),
        })
    }

    /// The plain port's address.
    pub fn address(&self) -> SocketAddr {
        self.ports[0].address
    }

    /// The TLS port's address, when there is one.
    pub fn tls_address(&self) -> Option<SocketAddr> {
        self.ports
            .iter()
            .find(|p| p.tls.is_some())
            .map(|p| p.address)
    }

    /// Stops accepting, ends the associations in progress (what they had acknowledged is
    /// durable; an instance not yet answered is dropped whole) and drains the commits.
    pub fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for port in &self.ports {
            // SAFETY: shutting down a listening socket we own only wakes its blocked accept().
            unsafe {
                libc::shutdown(port.socket.as_raw_fd(), libc::SHUT_RDWR);
            }
        }
        for acceptor in self.acceptors.drain(..) {
            let _ = acceptor.join();
        }
        for stream in lock(&self.shared.connections).values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let threads: Vec<_> = lock(&self.shared.threads).drain(..).collect();
        for thread in threads {
            let _ = thread.join();
        }
        if let Some(logger) = self.logger.take() {
            let _ = logger.join();
        }
        self.shared.flush_logs();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.logger.is_some() {
            self.stop();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Failures of accept() that free file descriptors or memory, not another try, will cure.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn accept_loop(shared: &Arc<Shared>, socket: &TcpListener, tls: Option<Arc<ServerConfig>>) {
    // While out of descriptors: the current wait, the failed tries, whether that was logged.
    let mut backoff: Option<(Duration, u64, bool)> = None;
    let mut last_logged: Option<Instant> = None;
    loop {
        let accepted = socket.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if out_of_resources(&e) => {
                let (wait, tries, logged) = match backoff {
                    None => {
                        // Logged once, not once per try: the condition lasts.
                        let log = last_logged.is_none_or(|at| at.elapsed() >= ACCEPT_RELOG);
                        if log {
                            last_logged = Some(Instant::now());
                            shared.log(
                                LogLevel::Error,
                                format!(
                                    "cannot accept connections on {}: {e}; waiting for \
                                     connections to close",
                                    socket.local_addr().map_or("?".into(), |a| a.to_string())
                                ),
                            );
                        }
                        (ACCEPT_BACKOFF, 1, log)
                    }
                    Some((wait, tries, logged)) => {
                        ((wait * 2).min(ACCEPT_BACKOFF_MAX), tries + 1, logged)
                    }
                };
                backoff = Some((wait, tries, logged));
                std::thread::sleep(wait);
                continue;
            }
            Err(_) => continue,
        };
        if let Some((_, tries, true)) = backoff.take() {
            shared.log(
                LogLevel::Warning,
                format!("accepting connections again after {tries} failed tries"),
            );
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(copy) = stream.try_clone() {
            lock(&shared.connections).insert(id, copy);
        }
        let worker = shared.clone();
        let tls = tls.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("dicom-assoc-{id}"))
            .spawn(move || {
                connection(&worker, stream, peer, tls);
                lock(&worker.connections).remove(&id);
            });
        let mut threads = lock(&shared.threads);
        threads.retain(|t| !t.is_finished());
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                lock(&shared.connections).remove(&id);
                shared.log(
                    LogLevel::Error,
                    format!("connection from {peer} dropped: no thread for it: {e}"),
                );
            }
        }
    }
}

/// The first of `ours` (in our order of preference) that the peer proposed.
fn first_in<'a>(ours: &'a [String], proposed: &[String]) -> Option<&'a String> {
    ours.iter().find(|ts| proposed.contains(ts))
}

/// How the first PDU went: an A-ASSOCIATE-RQ's body, or why the connection ends.
enum Opening {
    Request(Vec<u8>),
    /// Something else arrived: aborted (PS3.8 9.2, state Sta2) and logged.
    Abort(AbortReason, String),
    /// Closed, or silent past the deadline: nothing to answer.
    Gone(io::Error),
}

/// Reads the first PDU, within the deadline already set on the stream's socket.
fn read_associate_rq(stream: &mut impl Channel) -> Opening {
    let mut header = [0u8; 6];
    if let Err(e) = stream.read_exact(&mut header) {
        return Opening::Gone(e);
    }
    let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    if header[0] != pdu::A_ASSOCIATE_RQ {
        let reason = AbortReason::for_pdu(header[0]);
        return Opening::Abort(
            reason,
            format!(
                "a PDU of type 0x{:02X} before any A-ASSOCIATE-RQ",
                header[0]
            ),
        );
    }
    if length > MAX_ASSOCIATE_RQ {
        return Opening::Abort(
            AbortReason::InvalidPduParameterValue,
            format!("an A-ASSOCIATE-RQ of {length} bytes (at most {MAX_ASSOCIATE_RQ})"),
        );
    }
    let mut body = vec![0u8; length];
    match stream.read_exact(&mut body) {
        Ok(()) => Opening::Request(body),
        Err(e) => Opening::Gone(e),
    }
}

impl ListenerConfig {
    fn serves_class(&self, abstract_syntax: &str) -> bool {
        abstract_syntax == VERIFICATION
            || self.storage_classes.contains(abstract_syntax)
            || self.is_query(abstract_syntax)
    }

    fn is_query(&self, abstract_syntax: &str) -> bool {
        abstract_syntax == STORAGE_COMMITMENT
            || self.find_classes.contains(abstract_syntax)
            || self.move_classes.contains(abstract_syntax)
            || self.retrieve_classes.contains(abstract_syntax)
    }
}

fn connection(shared: &Shared, tcp: TcpStream, peer: SocketAddr, tls: Option<Arc<ServerConfig>>) {
    let config = &shared.config;
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_write_timeout(Some(config.dimse_timeout));
    let mut socket = Socket::new(tcp);
    // ARTIM (PS3.8 9.1.5): the TLS handshake and the whole A-ASSOCIATE-RQ by this deadline.
    socket.set_deadline(Some(Instant::now() + config.association_timeout));
    match tls {
        None => associate(shared, socket, peer),
        Some(tls) => match transport::accept(tls, socket) {
            Ok(stream) => associate(shared, stream, peer),
            Err(e) => shared.log(
                LogLevel::Warning,
                format!("TLS handshake with {peer} failed: {e}"),
            ),
        },
    }
}

fn associate<S: Channel>(shared: &Shared, mut stream: S, peer: SocketAddr) {
    let request = match read_associate_rq(&mut stream) {
        Opening::Request(body) => body,
        Opening::Abort(reason, why) => {
            let _ = stream.write_all(&pdu::encode_abort(reason));
            shared.log(
                LogLevel::Warning,
                format!("connection from {peer} aborted: {why}"),
            );
            return;
        }
        Opening::Gone(e) => {
            // A connection closed before a byte (a port probe) is not worth a line.
            if e.kind() == io::ErrorKind::TimedOut {
                shared.log(
                    LogLevel::Warning,
                    format!(
                        "connection from {peer} dropped: no A-ASSOCIATE-RQ within the \
                         association timeout ({:.0} s)",
                        shared.config.association_timeout.as_secs_f64()
                    ),
                );
            }
            return;
        }
    };
    let rq = match pdu::parse_associate_rq(&request) {
        Ok(rq) => rq,
        Err(e) => {
            let _ = stream.write_all(&pdu::encode_abort(AbortReason::InvalidPduParameterValue));
            shared.log(
                LogLevel::Warning,
                format!("association from {peer} aborted: {e}"),
            );
            return;
        }
    };
    Association {
        shared,
        stream,
        peer,
        rq,
        contexts: HashMap::new(),
        sendable: HashSet::new(),
        started: Instant::now(),
        requests: 0,
        cancelled: false,
    }
    .run();
}

struct Association<'a, S: Channel> {
    shared: &'a Shared,
    stream: S,
    peer: SocketAddr,
    rq: AssociateRq,
    /// Accepted contexts: id -> (abstract syntax, transfer syntax).
    contexts: HashMap<u8, (String, String)>,
    /// Storage SOP classes the requestor takes the SCP role for: C-GET may send them.
    sendable: HashSet<String>,
    started: Instant,
    requests: u64,
    /// A C-CANCEL-RQ arrived during the current C-GET.
    cancelled: bool,
}

/// A request whose data set is arriving.
enum Incoming {
    Store(Box<IncomingStore>),
    /// A C-FIND, C-GET, C-MOVE or N-ACTION (boxed: the variants stay small).
    Query {
        command: Box<Command>,
        context_id: u8,
        identifier: Vec<u8>,
        started: Instant,
    },
}

/// A C-STORE whose data set is arriving.
struct IncomingStore {
    command: Command,
    context_id: u8,
    writer: Option<InstanceWriter>,
    /// Set when the data set is refused or failed: it is still read to its end.
    status: Option<u16>,
    /// Data set bytes received so far.
    received: u64,
    started: Instant,
}

enum Flow {
    Continue,
    Done(&'static str),
}

/// A C-GET's or C-MOVE's sub-operations so far, and the responses that report them.
struct Progress {
    request: Command,
    context_id: u8,
    explicit_vr: bool,
    counts: SubOperations,
    total: usize,
    failed: Vec<String>,
    status: u16,
}

impl Progress {
    fn new(request: &Command, context_id: u8, transfer_syntax: &str) -> Progress {
        Progress {
            request: request.clone(),
            context_id,
            explicit_vr: transfer_syntax == EXPLICIT_VR_LE,
            counts: SubOperations::default(),
            total: 0,
            failed: Vec::new(),
            status: dimse::PENDING,
        }
    }

    fn begin(&mut self, total: usize) {
        self.total = total;
        self.counts.remaining = total as u32;
    }

    /// For the request's log line.
    fn detail(&self, extra: &str) -> String {
        format!("{} instances {extra}", self.total)
            .trim_end()
            .to_string()
    }

    /// Counts one sub-operation; returns the pending response saying so.
    fn record<S: Channel>(
        &mut self,
        association: &Association<'_, S>,
        status: u16,
        uid: &str,
    ) -> Vec<u8> {
        self.counts.remaining = self.counts.remaining.saturating_sub(1);
        match status {
            SUCCESS => self.counts.completed += 1,
            0xB000..=0xBFFF => self.counts.warning += 1,
            _ => {
                self.counts.failed += 1;
                self.failed.push(uid.to_string());
            }
        }
        let pending = dimse::retrieve_response(&self.request, dimse::PENDING, self.counts, false);
        association.message(self.context_id, true, &pending)
    }

    /// The final response (PS3.4 C.4.2.1.5, C.4.3.1.4): with the failed instances' UIDs
    /// unless every sub-operation succeeded.
    fn finish<S: Channel>(&mut self, association: &Association<'_, S>) -> Vec<u8> {
        let done = self.counts.completed + self.counts.failed + self.counts.warning;
        self.status = if association.cancelled {
            dimse::CANCEL
        } else if self.counts.failed == 0 && self.counts.warning == 0 {
            SUCCESS
        } else if self.counts.failed == done {
            SUB_OPERATIONS_FAILED
        } else {
            SUB_OPERATIONS_WARNING
        };
        let with_list = !self.failed.is_empty() && self.status != SUCCESS;
        let last = dimse::retrieve_response(&self.request, self.status, self.counts, with_list);
        let mut out = association.message(self.context_id, true, &last);
        if with_list {
            let list = dimse::failed_instances_identifier(&self.failed, self.explicit_vr);
            out.extend(association.message(self.context_id, false, &list));
        }
        out
    }
}

/// How a C-GET's C-STORE sub-operation went.
enum SubOperation {
    Answered(u16),
    /// Not sent: no way to give the peer this instance (logged).
    NotSent,
    /// The association ended (how).
    Ended(&'static str),
}

impl<'a, S: Channel> Association<'a, S> {
    fn who(&self) -> String {
        format!("{}@{}", self.rq.calling_ae, self.peer.ip())
    }

    fn log(&self, level: LogLevel, message: String) {
        self.shared.log(level, message);
    }

    fn run(mut self) {
        let Some(_slot) = self.negotiate() else {
            return;
        };
        let how = match self.serve() {
            Ok(how) => how,
            Err(e) => {
                let _ = self
                    .stream
                    .write_all(&pdu::encode_abort(AbortReason::NotSpecified));
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut {
                    "aborted (peer silent past the DIMSE timeout)".to_string()
                } else {
                    format!("aborted ({e})")
                }
            }
        };
        self.log(
            LogLevel::Info,
            format!(
                "association from {} {how} after {:.3} s, {} requests",
                self.who(),
                self.started.elapsed().as_secs_f64(),
                self.requests
            ),
        );
    }

    /// Accepts or rejects the association; its slot within the limits while it lasts.
    fn negotiate(&mut self) -> Option<Slot<'a>> {
        let shared = self.shared;
        let config = &shared.config;
        let slot = if self.rq.contexts.is_empty() {
            // PS3.8 9.3.2: a request proposes one or more presentation contexts.
            Err((
                RejectResult::Permanent,
                RejectReason::NoReasonGiven,
                "no presentation context proposed".to_string(),
            ))
        } else if config.policy.check_called_aet && self.rq.called_ae != config.policy.ae_title {
            Err((
                RejectResult::Permanent,
                RejectReason::CalledAeNotRecognized,
                "called AE title not recognised".to_string(),
            ))
        } else {
            // PS3.8 9.3.4: transient, service provider (presentation), local limit exceeded.
            shared.slot(&self.rq.calling_ae).map_err(|limit| {
                (
                    RejectResult::Transient,
                    RejectReason::LocalLimitExceeded,
                    format!("local limit exceeded ({limit})"),
                )
            })
        };
        let slot = match slot {
            Ok(slot) => slot,
            Err((result, reason, why)) => {
                let _ = self
                    .stream
                    .write_all(&pdu::encode_associate_rj(result, reason));
                self.log(
                    LogLevel::Warning,
                    format!("association from {} rejected: {why}", self.who()),
                );
                return None;
            }
        };
        // The requestor may act as SCP for storage SOP classes (C-GET sends them back) and
        // Storage Commitment (it reports); the roles it proposes for anything else are
        // declined.
        let roles: Vec<RoleSelection> = self
            .rq
            .roles
            .iter()
            .map(|r| RoleSelection {
                sop_class_uid: r.sop_class_uid.clone(),
                scu: r.scu,
                // A Storage Commitment SCP reporting on a new association takes the SCP role.
                scp: r.scp
                    && (config.storage_classes.contains(&r.sop_class_uid)
                        || r.sop_class_uid == STORAGE_COMMITMENT),
            })
            .collect();
        self.sendable = roles
            .iter()
            .filter(|r| r.scp && config.storage_classes.contains(&r.sop_class_uid))
            .map(|r| r.sop_class_uid.clone())
            .collect();
        let mut results = Vec::with_capacity(self.rq.contexts.len());
        let identifier_syntaxes = [EXPLICIT_VR_LE.to_string(), IMPLICIT_VR_LE.to_string()];
        for proposed in &self.rq.contexts {
            let chosen = if config.is_query(&proposed.abstract_syntax) {
                // Identifiers are read in the uncompressed little endian syntaxes only.
                first_in(&identifier_syntaxes, &proposed.transfer_syntaxes)
            } else if self.sendable.contains(&proposed.abstract_syntax) {
                // What C-GET sends back: the requestor's order decides (its first syntax the
                // archive knows; the host makes each instance in it, or sends it as stored).
                proposed
                    .transfer_syntaxes
                    .iter()
                    .find(|ts| config.transfer_syntaxes.contains(ts))
            } else {
                first_in(&config.transfer_syntaxes, &proposed.transfer_syntaxes)
            };
            let result = match chosen {
                _ if !config.serves_class(&proposed.abstract_syntax) => ContextResult {
                    id: proposed.id,
                    result: pdu::ABSTRACT_SYNTAX_NOT_SUPPORTED,
                    transfer_syntax: proposed
                        .transfer_syntaxes
                        .first()
                        .cloned()
                        .unwrap_or_default(),
                },
                Some(ts) => {
                    self.contexts
                        .insert(proposed.id, (proposed.abstract_syntax.clone(), ts.clone()));
                    ContextResult {
                        id: proposed.id,
                        result: pdu::ACCEPTANCE,
                        transfer_syntax: ts.clone(),
                    }
                }
                None => ContextResult {
                    id: proposed.id,
                    result: pdu::TRANSFER_SYNTAXES_NOT_SUPPORTED,
                    transfer_syntax: proposed
                        .transfer_syntaxes
                        .first()
                        .cloned()
                        .unwrap_or_default(),
                },
            };
            results.push(result);
        }
        let implementation = &config.implementation;
        let ac = pdu::encode_associate_ac(
            &self.rq,
            &results,
            &roles,
            config.max_pdu,
            &implementation.class_uid,
            &implementation.version_name,
        );
        if self.stream.write_all(&ac).is_err() {
            return None;
        }
        self.log(
            LogLevel::Info,
            format!("association from {} accepted", self.who()),
        );
        Some(slot)
    }

    fn send(&mut self, context_id: u8, command: &[u8]) -> io::Result<()> {
        self.stream
            .write_all(&self.message(context_id, true, command))
    }

    /// A command or data set as the P-DATA-TF PDUs the peer's maximum length allows.
    fn message(&self, context_id: u8, command: bool, data: &[u8]) -> Vec<u8> {
        pdu::encode_message(context_id, command, data, self.rq.max_pdu)
    }

    /// Reads one PDU into `body`, whole within the DIMSE timeout; its type, or None when it
    /// exceeds what we negotiated.
    fn read_pdu(&mut self, body: &mut Vec<u8>) -> io::Result<Option<u8>> {
        let config = &self.shared.config;
        self.stream
            .socket()
            .set_deadline(Some(Instant::now() + config.dimse_timeout));
        let mut header = [0u8; 6];
        self.stream.read_exact(&mut header)?;
        let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        // The maximum length negotiated bounds a P-DATA-TF's variable field (PS3.8 D.1).
        if length > config.max_pdu as usize {
            self.stream
                .write_all(&pdu::encode_abort(AbortReason::InvalidPduParameterValue))?;
            return Ok(None);
        }
        body.resize(length, 0);
        self.stream.read_exact(body)?;
        Ok(Some(header[0]))
    }

    fn serve(&mut self) -> io::Result<String> {
        let mut body = Vec::new();
        let mut command = Vec::new();
        let mut incoming: Option<Incoming> = None;
        let invalid = pdu::encode_abort(AbortReason::InvalidPduParameterValue);
        loop {
            let Some(kind) = self.read_pdu(&mut body)? else {
                return Ok(format!(
                    "aborted (PDU larger than the {} bytes negotiated)",
                    self.shared.config.max_pdu
                ));
            };
            match kind {
                pdu::P_DATA_TF => {
                    let pdvs = match pdu::parse_pdvs(&body) {
                        Ok(pdvs) => pdvs,
                        Err(e) => {
                            self.stream.write_all(&invalid)?;
                            return Ok(format!("aborted ({e})"));
                        }
                    };
                    for pdv in pdvs {
                        if !self.contexts.contains_key(&pdv.context_id) {
                            self.stream.write_all(&invalid)?;
                            return Ok(format!(
                                "aborted (PDV on presentation context {}, not accepted)",
                                pdv.context_id
                            ));
                        }
                        let flow = if pdv.command {
                            if command.len() + pdv.data.len() > MAX_COMMAND {
                                self.stream.write_all(&invalid)?;
                                return Ok("aborted (oversized command)".into());
                            }
                            command.extend_from_slice(pdv.data);
                            if !pdv.last {
                                continue;
                            }
                            let flow = self.command(pdv.context_id, &command, &mut incoming)?;
                            command.clear();
                            flow
                        } else {
                            self.data(pdv.data, pdv.last, &mut incoming)?
                        };
                        if let Flow::Done(how) = flow {
                            self.stream
                                .write_all(&pdu::encode_abort(AbortReason::UnexpectedPdu))?;
                            return Ok(how.into());
                        }
                    }
                }
                pdu::A_RELEASE_RQ => {
                    self.stream.write_all(&pdu::encode_release_rp())?;
                    return Ok(match incoming {
                        // Released mid-message: what had arrived of it is dropped.
                        Some(_) => "released with a data set unfinished (dropped)".into(),
                        None if !command.is_empty() => {
                            "released with a command unfinished (dropped)".into()
                        }
                        None => "released".into(),
                    });
                }
                pdu::A_ABORT => return Ok("aborted by the peer".into()),
                _ => {
                    self.stream
                        .write_all(&pdu::encode_abort(AbortReason::for_pdu(kind)))?;
                    return Ok(format!("aborted (unexpected PDU of type 0x{kind:02X})"));
                }
            }
        }
    }

    fn command(
        &mut self,
        context_id: u8,
        bytes: &[u8],
        incoming: &mut Option<Incoming>,
    ) -> io::Result<Flow> {
        let Ok(command) = dimse::parse_command(bytes) else {
            return Ok(Flow::Done("aborted (unreadable command)"));
        };
        if incoming.is_some() {
            return Ok(Flow::Done(
                "aborted (command before the previous data set ended)",
            ));
        }
        self.requests += 1;
        let started = Instant::now();
        let policy = &self.shared.config.policy;
        match command.field {
            dimse::C_ECHO_RQ => {
                let allowed = policy.allows(
                    &self.rq.calling_ae,
                    &self.peer.ip().to_string(),
                    Service::Echo,
                );
                let status = if allowed { SUCCESS } else { NOT_AUTHORIZED };
                self.send(context_id, &dimse::response(&command, status))?;
                self.log_request("C-ECHO", started, status, "");
                Ok(Flow::Continue)
            }
            dimse::C_STORE_RQ if command.has_data_set => {
                let allowed = policy.allows(
                    &self.rq.calling_ae,
                    &self.peer.ip().to_string(),
                    Service::Store,
                );
                let context = &self.contexts[&context_id].0;
                let mut next = IncomingStore {
                    command,
                    context_id,
                    writer: None,
                    status: None,
                    received: 0,
                    started,
                };
                let refused = if !allowed {
                    Some((NOT_AUTHORIZED, "not allowed for this AE".to_string()))
                } else if !self.shared.config.storage_classes.contains(context)
                    || *context != next.command.affected_sop_class_uid
                {
                    Some((
                        SOP_CLASS_NOT_SUPPORTED,
                        format!(
                            "{} sent on a context negotiated for {context}",
                            next.command.affected_sop_class_uid
                        ),
                    ))
                } else {
                    let started = self.shared.receiver.begin(
                        &next.command.affected_sop_class_uid,
                        &next.command.affected_sop_instance_uid,
                        &self.contexts[&context_id].1,
                        &self.rq.calling_ae,
                    );
                    match started {
                        Ok(writer) => {
                            next.writer = Some(writer);
                            None
                        }
                        Err(refused) => Some((refused.status, refused.why)),
                    }
                };
                if let Some((status, why)) = refused {
                    self.log(
                        LogLevel::Warning,
                        format!(
                            "C-STORE from {} of {} refused: {why}",
                            self.who(),
                            next.command.affected_sop_instance_uid
                        ),
                    );
                    next.status = Some(status);
                }
                *incoming = Some(Incoming::Store(Box::new(next)));
                Ok(Flow::Continue)
            }
            dimse::C_GET_RQ
            | dimse::C_FIND_RQ
            | dimse::C_MOVE_RQ
            | dimse::N_ACTION_RQ
            | dimse::N_EVENT_REPORT_RQ
                if command.has_data_set && {
                    let config = &self.shared.config;
                    let model = &self.contexts[&context_id].0;
                    match command.field {
                        dimse::C_GET_RQ => config.retrieve_classes.contains(model),
                        dimse::C_MOVE_RQ => config.move_classes.contains(model),
                        dimse::N_ACTION_RQ | dimse::N_EVENT_REPORT_RQ => {
                            model == STORAGE_COMMITMENT
                        }
                        _ => config.find_classes.contains(model),
                    }
                } =>
            {
                *incoming = Some(Incoming::Query {
                    command: Box::new(command),
                    context_id,
                    identifier: Vec::new(),
                    started,
                });
                Ok(Flow::Continue)
            }
            // A cancel arriving after its request ended has nothing left to cancel.
            dimse::C_CANCEL_RQ => Ok(Flow::Continue),
            _ => Ok(Flow::Done(
                "aborted (command not served on this association)",
            )),
        }
    }

    fn data(
        &mut self,
        bytes: &[u8],
        last: bool,
        incoming: &mut Option<Incoming>,
    ) -> io::Result<Flow> {
        match incoming.as_mut() {
            None => Ok(Flow::Done("aborted (data set without a command)")),
            Some(Incoming::Store(current)) => {
                current.received += bytes.len() as u64;
                let limit = self.shared.config.max_instance_size;
                if current.received > limit && current.status.is_none() {
                    // Its blobs written so far are referenced by nothing: gc reclaims them.
                    current.writer = None;
                    current.status = Some(OUT_OF_RESOURCES);
                    self.log(
                        LogLevel::Warning,
                        format!(
                            "C-STORE from {} of {} refused: data set larger than \
                             max_instance_size ({limit} bytes)",
                            self.who(),
                            current.command.affected_sop_instance_uid
                        ),
                    );
                }
                if let Some(writer) = current.writer.as_mut() {
                    if let Err(e) = writer.write(bytes) {
                        current.writer = None;
                        current.status = Some(self.failure(&current.command, &e));
                    }
                }
                if !last {
                    return Ok(Flow::Continue);
                }
                let Some(Incoming::Store(current)) = incoming.take() else {
                    unreachable!("matched above")
                };
                self.stored(*current)
            }
            Some(Incoming::Query { identifier, .. }) => {
                if identifier.len() + bytes.len() > MAX_COMMAND {
                    return Ok(Flow::Done("aborted (oversized identifier)"));
                }
                identifier.extend_from_slice(bytes);
                if !last {
                    return Ok(Flow::Continue);
                }
                let Some(Incoming::Query {
                    command,
                    context_id,
                    identifier,
                    started,
                }) = incoming.take()
                else {
                    unreachable!("matched above")
                };
                match command.field {
                    dimse::C_FIND_RQ => self.find(&command, context_id, identifier, started),
                    dimse::C_MOVE_RQ => self.move_to(&command, context_id, identifier, started),
                    dimse::N_ACTION_RQ | dimse::N_EVENT_REPORT_RQ => {
                        self.commitment(&command, context_id, identifier)
                    }
                    _ => self.retrieve(&command, context_id, identifier, started),
                }
            }
        }
    }

    /// C-FIND: a pending response with each identifier the host produces, then the final one;
    /// a C-CANCEL-RQ arriving meanwhile ends the responses with status Cancel.
    fn find(
        &mut self,
        command: &Command,
        context_id: u8,
        identifier: Vec<u8>,
        started: Instant,
    ) -> io::Result<Flow> {
        let request = self.query_request(command, context_id, identifier);
        let mut status = SUCCESS;
        let mut count = 0usize;
        let mut unsent = Vec::new();
        match self.shared.host.find(request) {
            Err(refused) => status = refused,
            Ok(matches) => {
                let pending = dimse::find_response(command, dimse::PENDING);
                for found in matches {
                    if self.cancel_arrived()? {
                        status = dimse::CANCEL;
                        break;
                    }
                    let found = match found {
                        Ok(found) => found,
                        Err(why) => {
                            self.log(
                                LogLevel::Error,
                                format!("C-FIND from {}: {why}", self.who()),
                            );
                            status = OUT_OF_RESOURCES;
                            break;
                        }
                    };
                    unsent.extend(self.message(context_id, true, &pending));
                    unsent.extend(self.message(context_id, false, &found));
                    count += 1;
                    if unsent.len() >= GATHER {
                        self.stream.write_all(&unsent)?;
                        unsent.clear();
                    }
                }
            }
        }
        unsent.extend(self.message(context_id, true, &dimse::find_response(command, status)));
        self.stream.write_all(&unsent)?;
        self.log_request("C-FIND", started, status, &format!("{count} matches"));
        Ok(Flow::Continue)
    }

    fn query_request(
        &self,
        command: &Command,
        context_id: u8,
        identifier: Vec<u8>,
    ) -> QueryRequest {
        QueryRequest {
            calling_ae: self.rq.calling_ae.clone(),
            address: self.peer.ip().to_string(),
            sop_class_uid: command.affected_sop_class_uid.clone(),
            transfer_syntax: self.contexts[&context_id].1.clone(),
            identifier,
        }
    }

    /// Whether a C-CANCEL-RQ has arrived, without waiting for one: the only message a peer
    /// may send while its C-FIND is answered.
    fn cancel_arrived(&mut self) -> io::Result<bool> {
        if !self.stream.input_waiting()? {
            return Ok(false);
        }
        let mut body = Vec::new();
        match self.read_pdu(&mut body)? {
            Some(pdu::P_DATA_TF) => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "peer ended the association",
                ))
            }
        }
        let pdvs = pdu::parse_pdvs(&body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(pdvs.iter().any(|pdv| {
            pdv.command
                && dimse::parse_command(pdv.data).is_ok_and(|c| c.field == dimse::C_CANCEL_RQ)
        }))
    }

    fn stored(&mut self, current: IncomingStore) -> io::Result<Flow> {
        let command = &current.command;
        let status = match (current.status, current.writer) {
            (Some(status), _) => status,
            (None, Some(writer)) => {
                let requested = (
                    command.affected_sop_class_uid.as_str(),
                    command.affected_sop_instance_uid.as_str(),
                );
                let sender = Sender {
                    ae: self.rq.calling_ae.clone(),
                    address: self.peer.ip().to_string(),
                };
                match self
                    .shared
                    .receiver
                    .finish(writer, requested, |_| Ok(()), &sender)
                {
                    Ok(()) => SUCCESS,
                    Err(refused) => {
                        let level = if refused.is_the_senders() {
                            LogLevel::Warning
                        } else {
                            LogLevel::Error
                        };
                        self.log(
                            level,
                            format!(
                                "C-STORE from {} of {} refused: {refused}",
                                self.who(),
                                command.affected_sop_instance_uid
                            ),
                        );
                        refused.status
                    }
                }
            }
            (None, None) => OUT_OF_RESOURCES,
        };
        self.send(
            current.context_id,
            &dimse::response(&current.command, status),
        )?;
        self.log_request(
            "C-STORE",
            current.started,
            status,
            &current.command.affected_sop_instance_uid,
        );
        Ok(Flow::Continue)
    }

    /// C-GET: the host selects the instances, each goes back over this association as a
    /// C-STORE sub-operation, with a pending response after each and a final one with the
    /// counts (and the failed instances' UIDs).
    fn retrieve(
        &mut self,
        command: &Command,
        context_id: u8,
        identifier: Vec<u8>,
        started: Instant,
    ) -> io::Result<Flow> {
        let (request, mut progress) = self.begin_retrieve(command, context_id, identifier);
        let selected = match self.shared.host.select(request) {
            Ok(selected) => selected,
            Err(status) => return self.refused(&progress, "C-GET", started, status, ""),
        };
        progress.begin(selected.len());
        self.cancelled = false;
        // Each pending response goes out in one write with the next C-STORE-RQ.
        let mut unsent = Vec::new();
        let mut prefetched = None;
        for (i, instance) in selected.iter().enumerate() {
            if self.cancelled {
                break;
            }
            let message_id = command.message_id.wrapping_add(1 + i as u16);
            let stored = prefetched.take();
            let next = selected.get(i + 1);
            let (outcome, next_data) =
                self.send_instance(instance, message_id, &mut unsent, stored, next)?;
            prefetched = next_data;
            let status = match outcome {
                SubOperation::Answered(status) => status,
                SubOperation::NotSent => OUT_OF_RESOURCES,
                SubOperation::Ended(how) => return Ok(Flow::Done(how)),
            };
            unsent.extend(progress.record(self, status, &instance.sop_instance_uid));
        }
        unsent.extend(progress.finish(self));
        self.stream.write_all(&unsent)?;
        self.log_request("C-GET", started, progress.status, &progress.detail(""));
        Ok(Flow::Continue)
    }

    fn begin_retrieve(
        &self,
        command: &Command,
        context_id: u8,
        identifier: Vec<u8>,
    ) -> (QueryRequest, Progress) {
        let request = self.query_request(command, context_id, identifier);
        let progress = Progress::new(command, context_id, &request.transfer_syntax);
        (request, progress)
    }

    /// C-MOVE: the host selects the instances and sends them to the destination over its own
    /// association, reporting each sub-operation's status; a pending response follows each.
    fn move_to(
        &mut self,
        command: &Command,
        context_id: u8,
        identifier: Vec<u8>,
        started: Instant,
    ) -> io::Result<Flow> {
        let (request, mut progress) = self.begin_retrieve(command, context_id, identifier);
        let destination = command.move_destination.clone();
        let detail = format!("to {destination}");
        // Over TLS too: what the host watches for is the requestor sending anything at all.
        let requestor = self.stream.socket().as_raw_fd();
        let (uids, sub_operations) =
            match self.shared.host.move_to(request, &destination, requestor) {
                Ok(moving) => moving,
                Err(status) => return self.refused(&progress, "C-MOVE", started, status, &detail),
            };
        progress.begin(uids.len());
        self.cancelled = false;
        for (uid, status) in uids.iter().zip(sub_operations) {
            let status = status.unwrap_or_else(|why| {
                self.log(
                    LogLevel::Error,
                    format!("C-MOVE from {}: sub-operation failed: {why}", self.who()),
                );
                OUT_OF_RESOURCES
            });
            let pending = progress.record(self, status, uid);
            self.stream.write_all(&pending)?;
            if self.cancel_arrived()? {
                self.cancelled = true;
                break;
            }
        }
        let last = progress.finish(self);
        self.stream.write_all(&last)?;
        self.log_request(
            "C-MOVE",
            started,
            progress.status,
            &progress.detail(&detail),
        );
        Ok(Flow::Continue)
    }

    /// Storage Commitment (PS3.4 J.3.2, J.3.3): the host takes a request (and reports on it
    /// later, over an association of its own), or a peer's report on one of ours; the
    /// N-ACTION-RSP or N-EVENT-REPORT-RSP says whether it did.
    fn commitment(
        &mut self,
        command: &Command,
        context_id: u8,
        identifier: Vec<u8>,
    ) -> io::Result<Flow> {
        let started = Instant::now();
        let mut request = self.query_request(command, context_id, identifier);
        let (status, response, what) = if command.field == dimse::N_ACTION_RQ {
            request.sop_class_uid = command.requested_sop_class_uid.clone();
            let status = self.shared.host.commit(request, None);
            let response = dimse::action_response(command, status);
            (status, response, "N-ACTION (storage commitment)")
        } else {
            let status = self.shared.host.commit(request, Some(command.event_type));
            let response = dimse::event_report_response(command, status);
            (status, response, "N-EVENT-REPORT (storage commitment)")
        };
        self.send(context_id, &response)?;
        self.log_request(what, started, status, "");
        Ok(Flow::Continue)
    }

    /// The final response of a query refused before it started.
    fn refused(
        &mut self,
        progress: &Progress,
        what: &str,
        started: Instant,
        status: u16,
        detail: &str,
    ) -> io::Result<Flow> {
        let rsp =
            dimse::retrieve_response(&progress.request, status, SubOperations::default(), false);
        self.send(progress.context_id, &rsp)?;
        self.log_request(what, started, status, &progress.detail(detail));
        Ok(Flow::Continue)
    }

    /// A context the peer takes `sop_class` on with us as SCU, in `transfer_syntax`.
    fn sending_context(&self, sop_class: &str, transfer_syntax: &str) -> Option<u8> {
        if !self.sendable.contains(sop_class) {
            return None;
        }
        self.contexts
            .iter()
            .filter(|(_, (abstract_syntax, ts))| {
                abstract_syntax == sop_class && ts == transfer_syntax
            })
            .map(|(id, _)| *id)
            .min()
    }

    /// The syntaxes the peer took `sop_class` in with us as SCU, in the order it proposed
    /// their contexts (its order of preference).
    fn accepted_for(&self, sop_class: &str) -> Vec<String> {
        if !self.sendable.contains(sop_class) {
            return Vec::new();
        }
        let mut contexts: Vec<(u8, &String)> = self
            .contexts
            .iter()
            .filter(|(_, (abstract_syntax, _))| abstract_syntax == sop_class)
            .map(|(id, (_, ts))| (*id, ts))
            .collect();
        contexts.sort();
        let mut syntaxes: Vec<String> = Vec::new();
        for (_, ts) in contexts {
            if !syntaxes.contains(ts) {
                syntaxes.push(ts.clone());
            }
        }
        syntaxes
    }

    /// The data set of `instance` read ahead, when it is sent as stored and small enough.
    fn prefetch(&self, instance: &Selected) -> Option<Vec<u8>> {
        let size = instance
            .manifest
            .total_length
            .saturating_sub(instance.dataset_offset);
        if size > PREFETCH_MAX
            || self
                .sending_context(&instance.sop_class_uid, &instance.transfer_syntax)
                .is_none()
        {
            return None;
        }
        // A read error surfaces when the instance is checked before it is sent.
        self.shared
            .store
            .read_instance(&instance.manifest, instance.dataset_offset)
            .ok()
    }

    /// One C-STORE sub-operation: the instance as stored (`stored`, when read ahead) when the
    /// peer accepted its syntax, else decoded by the host into one it did accept; `unsent` PDUs
    /// go out first. While the peer stores it, the `next` instance is read ahead.
    fn send_instance(
        &mut self,
        instance: &Selected,
        message_id: u16,
        unsent: &mut Vec<u8>,
        stored: Option<Vec<u8>>,
        next: Option<&Selected>,
    ) -> io::Result<(SubOperation, Option<Vec<u8>>)> {
        let uid = &instance.sop_instance_uid;
        let (context_id, decoded) =
            match self.sending_context(&instance.sop_class_uid, &instance.transfer_syntax) {
                Some(id) => (id, None),
                None => {
                    let accepted = self.accepted_for(&instance.sop_class_uid);
                    let transcoded =
                        self.shared
                            .host
                            .transcode(instance, &accepted)
                            .and_then(|(ts, data)| {
                                self.sending_context(&instance.sop_class_uid, &ts)
                                    .map(|id| (id, data))
                                    .ok_or_else(|| format!("{uid}: no context for {ts}"))
                            });
                    match transcoded {
                        Ok((id, data)) => (id, Some(data)),
                        Err(why) => {
                            self.log(
                                LogLevel::Error,
                                format!(
                                    "C-GET from {}: sub-operation for {uid} failed: {why}",
                                    self.who()
                                ),
                            );
                            return Ok((SubOperation::NotSent, None));
                        }
                    }
                }
            };
        let data = decoded.or(stored);
        if data.is_none() {
            // Not read ahead (too large, or the read failed): checked whole before its first
            // byte goes out, so that damage fails this sub-operation, not the association.
            if let Err(e) = self.shared.store.check_instance(&instance.manifest) {
                self.log(
                    LogLevel::Error,
                    format!(
                        "C-GET from {}: sub-operation for {uid} failed: {e}",
                        self.who()
                    ),
                );
                return Ok((SubOperation::NotSent, next.and_then(|n| self.prefetch(n))));
            }
        }
        let request = dimse::store_request(&instance.sop_class_uid, uid, message_id);
        unsent.extend(self.message(context_id, true, &request));
        let mut writer = PdvWriter::new(context_id, false, self.rq.max_pdu);
        writer.after(unsent);
        unsent.clear();
        let stream = &mut self.stream;
        match data {
            Some(data) => writer.write(&data, stream)?,
            None => self.shared.store.for_each_chunk(
                &instance.manifest,
                instance.dataset_offset,
                |chunk| writer.write(chunk, stream),
            )?,
        }
        writer.finish(stream)?;
        let next_data = next.and_then(|n| self.prefetch(n));
        Ok((self.store_response(message_id)?, next_data))
    }

    /// Waits for the C-STORE-RSP to `message_id`, noting a C-CANCEL-RQ that arrives meanwhile.
    fn store_response(&mut self, message_id: u16) -> io::Result<SubOperation> {
        let mut body = Vec::new();
        let mut command = Vec::new();
        loop {
            let Some(kind) = self.read_pdu(&mut body)? else {
                return Ok(SubOperation::Ended("aborted (PDU larger than negotiated)"));
            };
            match kind {
                pdu::P_DATA_TF => {}
                pdu::A_ABORT => return Ok(SubOperation::Ended("aborted by the peer")),
                _ => return Ok(SubOperation::Ended("aborted (unexpected PDU during C-GET)")),
            }
            let Ok(pdvs) = pdu::parse_pdvs(&body) else {
                return Ok(SubOperation::Ended("aborted (malformed P-DATA-TF)"));
            };
            for pdv in pdvs {
                if !pdv.command || command.len() + pdv.data.len() > MAX_COMMAND {
                    return Ok(SubOperation::Ended(
                        "aborted (unexpected data during C-GET)",
                    ));
                }
                command.extend_from_slice(pdv.data);
                if !pdv.last {
                    continue;
                }
                let Ok(response) = dimse::parse_command(&command) else {
                    return Ok(SubOperation::Ended("aborted (unreadable command)"));
                };
                command.clear();
                match response.field {
                    dimse::C_STORE_RSP if response.responding_to == message_id => {
                        return Ok(SubOperation::Answered(response.status));
                    }
                    dimse::C_CANCEL_RQ => self.cancelled = true,
                    _ => {
                        return Ok(SubOperation::Ended(
                            "aborted (unexpected command during C-GET)",
                        ))
                    }
                }
            }
        }
    }

    fn failure(&self, command: &Command, error: &FeedError) -> u16 {
        let refused = Refused::from_feed(error);
        self.log(
            LogLevel::Error,
            format!(
                "C-STORE from {} of {}: {refused}",
                self.who(),
                command.affected_sop_instance_uid
            ),
        );
        refused.status
    }

    fn log_request(&self, what: &str, started: Instant, status: u16, detail: &str) {
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" ({detail})")
        };
        self.log(
            LogLevel::Info,
            format!(
                "{what} from {}: status 0x{status:04X} in {:.1} ms{detail}",
                self.who(),
                started.elapsed().as_secs_f64() * 1e3
            ),
        );
    }
}
