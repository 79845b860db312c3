//! The listening ports: accept loops (backing off when out of descriptors), association
//! limits in all and per calling AE, the log lines handed to the host, start and stop.

use super::association::associate;
use super::*;
use crate::cas::Storage;
use crate::commit::Journal;
use crate::receive::Receiver;
use crate::tls;
use crate::transport::Socket;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Log lines wait here for the logging thread, so that a request does not take Python's lock
/// to log itself.
#[derive(Default)]
pub(super) struct Logs {
    pub(super) lines: Mutex<Vec<(LogLevel, String)>>,
}

pub(super) struct Shared {
    pub(super) config: ListenerConfig,
    pub(super) store: Storage,
    /// Where C-STOREs' data sets go (the receive path C-GET's sub-operations share).
    pub(super) receiver: Receiver,
    pub(super) host: Arc<dyn Host>,
    pub(super) stopping: AtomicBool,
    pub(super) next_id: AtomicU64,
    pub(super) connections: Mutex<HashMap<u64, TcpStream>>,
    pub(super) threads: Mutex<Vec<JoinHandle<()>>>,
    pub(super) associations: Mutex<Associations>,
    pub(super) logs: Logs,
}

/// The associations established now: in all, and by calling AE title.
#[derive(Default)]
pub(super) struct Associations {
    pub(super) total: usize,
    pub(super) by_ae: HashMap<String, usize>,
}

/// An association's place within the limits, given back when it ends.
pub(super) struct Slot<'a> {
    pub(super) shared: &'a Shared,
    pub(super) calling_ae: String,
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
    pub(super) fn log(&self, level: LogLevel, message: String) {
        lock(&self.logs.lines).push((level, message));
    }

    /// A slot for an association from `calling_ae`, or which limit it would exceed.
    pub(super) fn slot(&self, calling_ae: &str) -> Result<Slot<'_>, &'static str> {
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

    pub(super) fn flush_logs(&self) {
        let lines = std::mem::take(&mut *lock(&self.logs.lines));
        if !lines.is_empty() {
            self.host.log(lines);
        }
    }
}

/// A bound listening socket; TLS is spoken on it when it has a configuration.
pub(super) struct Port {
    pub(super) socket: TcpListener,
    pub(super) address: SocketAddr,
    pub(super) tls: Option<Arc<ServerConfig>>,
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
        journal: Arc<Journal>,
        host: Arc<dyn Host>,
    ) -> io::Result<Listener> {
        let store = journal.store().clone();
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
            journal,
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
                    // Parked, not asleep: `stop` unparks it rather than wait out the interval.
                    while !shared.stopping.load(Ordering::SeqCst) {
                        std::thread::park_timeout(LOG_INTERVAL);
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
            logger.thread().unpark();
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

/// Failures of accept() that free file descriptors or memory, not another try, will cure.
pub(super) fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

pub(super) fn accept_loop(
    shared: &Arc<Shared>,
    socket: &TcpListener,
    tls: Option<Arc<ServerConfig>>,
) {
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

pub(super) fn connection(
    shared: &Shared,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
) {
    let config = &shared.config;
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_write_timeout(Some(config.dimse_timeout));
    let mut socket = Socket::new(tcp);
    // ARTIM (PS3.8 9.1.5): the TLS handshake and the whole A-ASSOCIATE-RQ by this deadline.
    socket.set_deadline(Some(Instant::now() + config.association_timeout));
    match tls {
        None => associate(shared, socket, peer),
        Some(tls) => match tls::accept(tls, socket) {
            Ok(stream) => associate(shared, stream, peer),
            Err(e) => shared.log(
                LogLevel::Warning,
                format!("TLS handshake with {peer} failed: {e}"),
            ),
        },
    }
}
