//! The archive's DICOM listener: storage and C-GET served in Rust, the rest handed over.
//!
//! Every connection's A-ASSOCIATE-RQ is peeked, not read. An association that proposes none of
//! the SOP classes left to the host (C-FIND and C-MOVE; what modalities, storescu and getscu
//! open) is served here, end to end, its other unknown SOP classes refused in negotiation:
//! negotiation (with SCP/SCU role selection), PDU reading with large buffers, C-ECHO; C-STORE
//! data sets streamed from their PDVs straight into the store's writer, the instance handed to
//! the `Host` to be made durable and indexed (group commit: one call per batch) before its
//! C-STORE-RSP goes out; C-GET sub-operations streamed from the store to the socket, the `Host`
//! selecting the instances (access policy and query matching stay in Python) and decoding those
//! the peer cannot take as stored. An association proposing C-FIND or C-MOVE is handed, still
//! unread, to the `Host`, which gives it to pynetdicom.

use crate::cas::{Ingested, InstanceWriter, Store};
use crate::dimse::{self, Command, Implementation, SubOperations};
use crate::manifest::Manifest;
use crate::pdu::{self, AssociateRq, ContextResult, PdvWriter, RoleSelection};
use crate::scan::{FeedError, ScanOptions};
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const VERIFICATION: &str = "1.2.840.10008.1.1";
pub const SUCCESS: u16 = 0x0000;
pub const NOT_AUTHORIZED: u16 = 0x0124;
pub const OUT_OF_RESOURCES: u16 = 0xA700;
pub const CANNOT_UNDERSTAND: u16 = 0xC000;
/// C-GET: every sub-operation failed; one or more failed or warned (PS3.4 C.4.3.1.4).
pub const SUB_OPERATIONS_FAILED: u16 = 0xA702;
pub const SUB_OPERATIONS_WARNING: u16 = 0xB000;
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// An A-ASSOCIATE-RQ larger than this is not peeked (it would not fit a socket buffer).
const MAX_ASSOCIATE_RQ: usize = 256 << 10;
const MAX_COMMAND: usize = 64 << 10;
const MAX_BATCH: usize = 256;
/// A C-GET reads the next instance ahead while the peer stores one, up to this size.
const PREFETCH_MAX: u64 = 16 << 20;
const LOG_INTERVAL: Duration = Duration::from_millis(50);

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
    /// The C-GET information models served here.
    pub retrieve_classes: HashSet<String>,
    /// SOP classes served by the host: an association proposing any is handed over.
    pub handed_off_classes: HashSet<String>,
    /// In order of preference when a context offers several.
    pub transfer_syntaxes: Vec<String>,
    pub max_pdu: u32,
    pub max_associations: usize,
    pub timeout: Duration,
    pub implementation: Implementation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warning,
    Error,
}

/// An instance received in full, to be made durable and indexed.
pub struct Received {
    pub ingested: Ingested,
    pub calling_ae: String,
    pub address: String,
}

/// A C-GET request, for the host to select what it retrieves.
pub struct RetrieveRequest {
    pub calling_ae: String,
    pub address: String,
    /// The information model (the request's Affected SOP Class).
    pub sop_class_uid: String,
    /// The identifier's transfer syntax.
    pub transfer_syntax: String,
    pub identifier: Vec<u8>,
}

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
    /// An association this listener does not serve: its socket, the request still unread.
    fn hand_off(&self, stream: TcpStream, peer: SocketAddr);
    /// Makes a batch durable and indexes it; returns one DIMSE status per instance.
    fn commit(&self, batch: Vec<Received>) -> Vec<u16>;
    /// Log lines, in order (delivered in batches, at most `LOG_INTERVAL` late).
    fn log(&self, lines: Vec<(LogLevel, String)>);
    /// The instances a C-GET retrieves, or the status refusing it (the host logs why).
    fn select(&self, request: RetrieveRequest) -> Result<Vec<Selected>, u16>;
    /// The data set of `instance` decoded into one of `accepted` (native syntaxes the peer
    /// took for its SOP class): (transfer syntax, data set), or why it cannot be.
    fn transcode(
        &self,
        instance: &Selected,
        accepted: &[String],
    ) -> Result<(String, Vec<u8>), String>;
}

/// Group commit without a committer thread: the first association thread to arrive commits
/// everything waiting (its own instance among them) while the others wait for their status;
/// arrivals during a commit form the next group.
#[derive(Default)]
struct Commits {
    queue: Mutex<CommitQueue>,
    done: Condvar,
}

#[derive(Default)]
struct CommitQueue {
    waiting: Vec<(u64, Received)>,
    results: HashMap<u64, u16>,
    leading: bool,
    next_ticket: u64,
}

impl Commits {
    fn commit(&self, host: &dyn Host, received: Received) -> u16 {
        let mut queue = lock(&self.queue);
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push((ticket, received));
        loop {
            if let Some(status) = queue.results.remove(&ticket) {
                return status;
            }
            if queue.leading {
                queue = self.done.wait(queue).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            queue.leading = true;
            let take = queue.waiting.len().min(MAX_BATCH);
            let (tickets, batch): (Vec<u64>, Vec<Received>) = queue.waiting.drain(..take).unzip();
            drop(queue);
            let mut statuses = host.commit(batch);
            statuses.resize(tickets.len(), OUT_OF_RESOURCES);
            queue = lock(&self.queue);
            queue.results.extend(tickets.into_iter().zip(statuses));
            queue.leading = false;
            self.done.notify_all();
        }
    }
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
    host: Arc<dyn Host>,
    stopping: AtomicBool,
    active: AtomicUsize,
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    commits: Commits,
    logs: Logs,
}

impl Shared {
    fn log(&self, level: LogLevel, message: String) {
        lock(&self.logs.lines).push((level, message));
    }

    fn flush_logs(&self) {
        let lines = std::mem::take(&mut *lock(&self.logs.lines));
        if !lines.is_empty() {
            self.host.log(lines);
        }
    }
}

/// A running listener; `stop` it to finish.
pub struct Listener {
    shared: Arc<Shared>,
    socket: TcpListener,
    address: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
    logger: Option<JoinHandle<()>>,
}

impl Listener {
    pub fn start(
        address: SocketAddr,
        config: ListenerConfig,
        store: Store,
        host: Arc<dyn Host>,
    ) -> io::Result<Listener> {
        let socket = TcpListener::bind(address)?;
        let address = socket.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            store,
            host,
            stopping: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            connections: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            commits: Commits::default(),
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
        let acceptor = {
            let shared = shared.clone();
            let socket = socket.try_clone()?;
            std::thread::Builder::new()
                .name("dicom-accept".into())
                .spawn(move || accept_loop(&shared, &socket))?
        };
        Ok(Listener {
            shared,
            socket,
            address,
            acceptor: Some(acceptor),
            logger: Some(logger),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops accepting, ends the associations in progress (what they had acknowledged is
    /// durable; an instance not yet answered is dropped whole) and drains the commits.
    pub fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // SAFETY: shutting down a listening socket we own only wakes its blocked accept().
        unsafe {
            libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR);
        }
        if let Some(acceptor) = self.acceptor.take() {
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
        if self.acceptor.is_some() {
            self.stop();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(shared: &Arc<Shared>, socket: &TcpListener) {
    for incoming in socket.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = incoming else { continue };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(copy) = stream.try_clone() {
            lock(&shared.connections).insert(id, copy);
        }
        let worker = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("dicom-assoc-{id}"))
            .spawn(move || {
                worker.active.fetch_add(1, Ordering::SeqCst);
                connection(&worker, stream, peer);
                worker.active.fetch_sub(1, Ordering::SeqCst);
                lock(&worker.connections).remove(&id);
            });
        let mut threads = lock(&shared.threads);
        threads.retain(|t| !t.is_finished());
        if let Ok(handle) = spawned {
            threads.push(handle);
        }
    }
}

/// Reads the first PDU without consuming it: Some(bytes) for an A-ASSOCIATE-RQ.
fn peek_associate_rq(stream: &TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 6];
    peek_exact(stream, &mut header)?;
    if header[0] != pdu::A_ASSOCIATE_RQ {
        return Ok(None);
    }
    let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    if length > MAX_ASSOCIATE_RQ {
        return Ok(None);
    }
    let mut whole = vec![0u8; 6 + length];
    peek_exact(stream, &mut whole)?;
    Ok(Some(whole))
}

fn peek_exact(stream: &TcpStream, buf: &mut [u8]) -> io::Result<()> {
    loop {
        // SAFETY: recv writes at most buf.len() bytes into buf, which we own mutably.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_WAITALL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // With MSG_WAITALL a short count means the peer closed or went silent past the
        // read timeout: the request will not complete.
        if (n as usize) < buf.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        return Ok(());
    }
}

fn serves(config: &ListenerConfig, rq: &AssociateRq) -> bool {
    !rq.contexts
        .iter()
        .any(|c| config.handed_off_classes.contains(&c.abstract_syntax))
}

impl ListenerConfig {
    fn serves_class(&self, abstract_syntax: &str) -> bool {
        abstract_syntax == VERIFICATION
            || self.storage_classes.contains(abstract_syntax)
            || self.retrieve_classes.contains(abstract_syntax)
    }
}

fn connection(shared: &Shared, mut stream: TcpStream, peer: SocketAddr) {
    let config = &shared.config;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(config.timeout));
    let _ = stream.set_write_timeout(Some(config.timeout));
    let request = match peek_associate_rq(&stream) {
        Ok(Some(bytes)) => bytes,
        // Not an association request, cut short, or silent: nothing to talk about.
        Ok(None) | Err(_) => return,
    };
    let rq = match pdu::parse_associate_rq(&request[6..]) {
        Ok(rq) => rq,
        Err(e) => {
            let _ = stream.write_all(&pdu::encode_abort(6));
            shared.log(
                LogLevel::Warning,
                format!("association from {peer} aborted: {e}"),
            );
            return;
        }
    };
    if !serves(config, &rq) {
        shared.host.hand_off(stream, peer);
        return;
    }
    if stream.read_exact(&mut vec![0u8; request.len()]).is_err() {
        return;
    }
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

struct Association<'a> {
    shared: &'a Shared,
    stream: TcpStream,
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
    Get {
        command: Command,
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
    started: Instant,
}

enum Flow {
    Continue,
    Done(&'static str),
}

/// How a C-GET's C-STORE sub-operation went.
enum SubOperation {
    Answered(u16),
    /// Not sent: no way to give the peer this instance (logged).
    NotSent,
    /// The association ended (how).
    Ended(&'static str),
}

impl Association<'_> {
    fn who(&self) -> String {
        format!("{}@{}", self.rq.calling_ae, self.peer.ip())
    }

    fn log(&self, level: LogLevel, message: String) {
        self.shared.log(level, message);
    }

    fn run(mut self) {
        if !self.negotiate() {
            return;
        }
        let how = match self.serve() {
            Ok(how) => how,
            Err(e) => {
                let _ = self.stream.write_all(&pdu::encode_abort(0));
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut {
                    "aborted (peer silent)"
                } else {
                    "aborted"
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

    fn negotiate(&mut self) -> bool {
        let config = &self.shared.config;
        let reject = if self.shared.active.load(Ordering::SeqCst) > config.max_associations {
            Some((2, 3, 2, "local limit of associations exceeded"))
        } else if config.policy.check_called_aet && self.rq.called_ae != config.policy.ae_title {
            Some((1, 1, 7, "called AE title not recognised"))
        } else {
            None
        };
        if let Some((result, source, reason, why)) = reject {
            let _ = self
                .stream
                .write_all(&pdu::encode_associate_rj(result, source, reason));
            self.log(
                LogLevel::Warning,
                format!("association from {} rejected: {why}", self.who()),
            );
            return false;
        }
        let mut results = Vec::with_capacity(self.rq.contexts.len());
        let identifier_syntaxes = [EXPLICIT_VR_LE.to_string(), IMPLICIT_VR_LE.to_string()];
        for proposed in &self.rq.contexts {
            // Identifiers are read in the uncompressed little endian syntaxes only.
            let ours = if config.retrieve_classes.contains(&proposed.abstract_syntax) {
                &identifier_syntaxes[..]
            } else {
                &config.transfer_syntaxes[..]
            };
            let chosen = ours
                .iter()
                .find(|ts| proposed.transfer_syntaxes.contains(ts));
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
        // The requestor may act as SCP for storage SOP classes (C-GET sends them back); the
        // roles it proposes for anything else are declined.
        let roles: Vec<RoleSelection> = self
            .rq
            .roles
            .iter()
            .map(|r| RoleSelection {
                sop_class_uid: r.sop_class_uid.clone(),
                scu: r.scu,
                scp: r.scp && config.storage_classes.contains(&r.sop_class_uid),
            })
            .collect();
        self.sendable = roles
            .iter()
            .filter(|r| r.scp)
            .map(|r| r.sop_class_uid.clone())
            .collect();
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
            return false;
        }
        self.log(
            LogLevel::Info,
            format!("association from {} accepted", self.who()),
        );
        true
    }

    fn send(&mut self, context_id: u8, command: &[u8]) -> io::Result<()> {
        self.stream
            .write_all(&self.message(context_id, true, command))
    }

    /// A command or data set as the P-DATA-TF PDUs the peer's maximum length allows.
    fn message(&self, context_id: u8, command: bool, data: &[u8]) -> Vec<u8> {
        pdu::encode_message(context_id, command, data, self.rq.max_pdu)
    }

    /// Reads one PDU into `body`; its type, or None when it exceeds what we negotiated.
    fn read_pdu(&mut self, body: &mut Vec<u8>) -> io::Result<Option<u8>> {
        let limit = self.shared.config.max_pdu as usize + 6;
        let mut header = [0u8; 6];
        self.stream.read_exact(&mut header)?;
        let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        if length > limit {
            self.stream.write_all(&pdu::encode_abort(6))?;
            return Ok(None);
        }
        body.resize(length, 0);
        self.stream.read_exact(body)?;
        Ok(Some(header[0]))
    }

    fn serve(&mut self) -> io::Result<&'static str> {
        let mut body = Vec::new();
        let mut command = Vec::new();
        let mut incoming: Option<Incoming> = None;
        loop {
            let Some(kind) = self.read_pdu(&mut body)? else {
                return Ok("aborted (PDU larger than negotiated)");
            };
            match kind {
                pdu::P_DATA_TF => {
                    let Ok(pdvs) = pdu::parse_pdvs(&body) else {
                        self.stream.write_all(&pdu::encode_abort(6))?;
                        return Ok("aborted (malformed P-DATA-TF)");
                    };
                    for pdv in pdvs {
                        if !self.contexts.contains_key(&pdv.context_id) {
                            self.stream.write_all(&pdu::encode_abort(6))?;
                            return Ok("aborted (PDV on a context not accepted)");
                        }
                        let flow = if pdv.command {
                            if command.len() + pdv.data.len() > MAX_COMMAND {
                                self.stream.write_all(&pdu::encode_abort(6))?;
                                return Ok("aborted (oversized command)");
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
                            self.stream.write_all(&pdu::encode_abort(2))?;
                            return Ok(how);
                        }
                    }
                }
                pdu::A_RELEASE_RQ => {
                    self.stream.write_all(&pdu::encode_release_rp())?;
                    return Ok("released");
                }
                pdu::A_ABORT => return Ok("aborted by the peer"),
                _ => {
                    self.stream.write_all(&pdu::encode_abort(2))?;
                    return Ok("aborted (unexpected PDU)");
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
                let mut next = IncomingStore {
                    command,
                    context_id,
                    writer: None,
                    status: None,
                    started,
                };
                if allowed {
                    let mut writer = self.shared.store.writer(ScanOptions {
                        wanted: self.shared.store.config().wanted.clone(),
                        transfer_syntax: None,
                        allow_truncated: false,
                    });
                    let meta = dimse::file_meta(
                        &next.command.affected_sop_class_uid,
                        &next.command.affected_sop_instance_uid,
                        &self.contexts[&context_id].1,
                        &self.rq.calling_ae,
                        &self.shared.config.implementation,
                    );
                    match writer.write(&meta) {
                        Ok(()) => next.writer = Some(writer),
                        Err(e) => next.status = Some(self.failure(&next.command, &e)),
                    }
                } else {
                    self.log(
                        LogLevel::Warning,
                        format!("STORE from {} refused: not allowed for this AE", self.who()),
                    );
                    next.status = Some(NOT_AUTHORIZED);
                }
                *incoming = Some(Incoming::Store(Box::new(next)));
                Ok(Flow::Continue)
            }
            dimse::C_GET_RQ
                if command.has_data_set
                    && self
                        .shared
                        .config
                        .retrieve_classes
                        .contains(&self.contexts[&context_id].0) =>
            {
                *incoming = Some(Incoming::Get {
                    command,
                    context_id,
                    identifier: Vec::new(),
                    started,
                });
                Ok(Flow::Continue)
            }
            // A cancel arriving after its C-GET ended has nothing left to cancel.
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
            Some(Incoming::Get { identifier, .. }) => {
                if identifier.len() + bytes.len() > MAX_COMMAND {
                    return Ok(Flow::Done("aborted (oversized identifier)"));
                }
                identifier.extend_from_slice(bytes);
                if !last {
                    return Ok(Flow::Continue);
                }
                let Some(Incoming::Get {
                    command,
                    context_id,
                    identifier,
                    started,
                }) = incoming.take()
                else {
                    unreachable!("matched above")
                };
                self.retrieve(&command, context_id, identifier, started)
            }
        }
    }

    fn stored(&mut self, current: IncomingStore) -> io::Result<Flow> {
        let status = match (current.status, current.writer) {
            (Some(status), _) => status,
            (None, Some(writer)) => match writer.finish() {
                Ok(ingested) => self.commit(ingested),
                Err(e) => self.failure(&current.command, &e),
            },
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
        let transfer_syntax = self.contexts[&context_id].1.clone();
        let request = RetrieveRequest {
            calling_ae: self.rq.calling_ae.clone(),
            address: self.peer.ip().to_string(),
            sop_class_uid: command.affected_sop_class_uid.clone(),
            transfer_syntax: transfer_syntax.clone(),
            identifier,
        };
        let selected = match self.shared.host.select(request) {
            Ok(selected) => selected,
            Err(status) => {
                let rsp = dimse::get_response(command, status, SubOperations::default(), false);
                self.send(context_id, &rsp)?;
                self.log_request("C-GET", started, status, "0 instances");
                return Ok(Flow::Continue);
            }
        };
        self.cancelled = false;
        let mut counts = SubOperations {
            remaining: selected.len() as u32,
            ..SubOperations::default()
        };
        let mut failed = Vec::new();
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
            counts.remaining -= 1;
            match status {
                SUCCESS => counts.completed += 1,
                0xB000..=0xBFFF => counts.warning += 1,
                _ => {
                    counts.failed += 1;
                    failed.push(instance.sop_instance_uid.clone());
                }
            }
            let pending = dimse::get_response(command, dimse::PENDING, counts, false);
            unsent.extend(self.message(context_id, true, &pending));
        }
        let status = if self.cancelled {
            dimse::CANCEL
        } else if counts.failed == 0 && counts.warning == 0 {
            SUCCESS
        } else if counts.failed as usize == selected.len() {
            SUB_OPERATIONS_FAILED
        } else {
            SUB_OPERATIONS_WARNING
        };
        let with_list = !failed.is_empty() && status != SUCCESS;
        let last = dimse::get_response(command, status, counts, with_list);
        unsent.extend(self.message(context_id, true, &last));
        if with_list {
            let list =
                dimse::failed_instances_identifier(&failed, transfer_syntax == EXPLICIT_VR_LE);
            unsent.extend(self.message(context_id, false, &list));
        }
        self.stream.write_all(&unsent)?;
        self.log_request(
            "C-GET",
            started,
            status,
            &format!("{} instances", selected.len()),
        );
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
        // A read error surfaces when the instance is streamed instead.
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
        let (context_id, decoded) = match self
            .sending_context(&instance.sop_class_uid, &instance.transfer_syntax)
        {
            Some(id) => (id, None),
            None => {
                let accepted: Vec<String> = if self.sendable.contains(&instance.sop_class_uid) {
                    let mut syntaxes: Vec<String> = self
                        .contexts
                        .values()
                        .filter(|(abstract_syntax, _)| *abstract_syntax == instance.sop_class_uid)
                        .map(|(_, ts)| ts.clone())
                        .collect();
                    syntaxes.sort();
                    syntaxes.dedup();
                    syntaxes
                } else {
                    Vec::new()
                };
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
                            format!("C-GET from {}: sub-operation failed: {why}", self.who()),
                        );
                        return Ok((SubOperation::NotSent, None));
                    }
                }
            }
        };
        let request = dimse::store_request(&instance.sop_class_uid, uid, message_id);
        unsent.extend(self.message(context_id, true, &request));
        let mut writer = PdvWriter::new(context_id, false, self.rq.max_pdu);
        writer.after(unsent);
        unsent.clear();
        let stream = &mut self.stream;
        match decoded.or(stored) {
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

    fn commit(&self, ingested: Ingested) -> u16 {
        let received = Received {
            ingested,
            calling_ae: self.rq.calling_ae.clone(),
            address: self.peer.ip().to_string(),
        };
        self.shared.commits.commit(&*self.shared.host, received)
    }

    fn failure(&self, command: &Command, error: &FeedError) -> u16 {
        let (status, what) = match error {
            FeedError::Scan(_) => (CANNOT_UNDERSTAND, "cannot understand the data set"),
            FeedError::Io(_) => (OUT_OF_RESOURCES, "storage failed"),
        };
        self.log(
            LogLevel::Error,
            format!(
                "C-STORE from {} of {}: {what}: {error}",
                self.who(),
                command.affected_sop_instance_uid
            ),
        );
        status
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
