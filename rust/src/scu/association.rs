//! An association we request: connect (over DICOM TLS when the peer wants it), propose
//! contexts (and the SCP role for what a C-GET sends back), then exchange DIMSE messages, PDV
//! by PDV, until we release or abort it.

use super::ScuError;
use crate::dimse::{self, Command, Implementation};
use crate::pdu::{self, ProposedContext, RoleSelection};
use crate::tls;
use crate::transport::{Channel, Socket};
use rustls::ClientConfig;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A command set larger than this is not a command set.
const MAX_COMMAND: usize = 64 << 10;

/// The remote AE and how we talk to it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub host: String,
    pub port: u16,
    pub called_ae: String,
    pub calling_ae: String,
    /// How long connecting, the TLS handshake and the peer's answer to our A-ASSOCIATE-RQ may
    /// take together (the ACSE timeout).
    pub acse_timeout: Duration,
    /// How long the peer may stay silent once associated (waiting for each PDU).
    pub timeout: Duration,
    /// The largest P-DATA-TF we accept.
    pub max_pdu: u32,
    pub implementation: Implementation,
    /// DICOM TLS (PS3.15 B.9) with this configuration (`tls::client_config`); None: plain TCP.
    pub tls: Option<Arc<ClientConfig>>,
}

/// One PDV as the association reads it: a command once it is whole (with its presentation
/// context), or a piece of a data set.
pub enum Pdv<'a> {
    Command(u8, Command),
    Data {
        context_id: u8,
        data: &'a [u8],
        last: bool,
    },
}

/// The connection, plain or TLS: PDUs read into a reused buffer (command fragments joined),
/// messages written.
struct Connection {
    stream: Box<dyn Channel + Sync>,
    /// How long each PDU may take to arrive.
    timeout: Duration,
    max_pdu: u32,
    body: Vec<u8>,
    command: Vec<u8>,
}

impl Connection {
    /// Reads one PDU into `body`, within the timeout; its type.
    fn read_pdu(&mut self) -> Result<u8, ScuError> {
        self.read_pdu_by(Instant::now() + self.timeout)
    }

    /// Reads one PDU into `body`, whole by `deadline`; its type.
    fn read_pdu_by(&mut self, deadline: Instant) -> Result<u8, ScuError> {
        self.stream.socket().set_deadline(Some(deadline));
        let mut header = [0u8; 6];
        self.stream.read_exact(&mut header)?;
        let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
        // Our limit bounds P-DATA-TF; association PDUs are small whatever it is.
        if length > self.max_pdu.max(64 << 10) {
            return Err(ScuError::Protocol(format!(
                "a PDU of {length} bytes (we accept {})",
                self.max_pdu
            )));
        }
        self.body.resize(length as usize, 0);
        self.stream.read_exact(&mut self.body)?;
        Ok(header[0])
    }

    /// Reads the next P-DATA-TF and hands each of its PDVs to `each`.
    fn next(
        &mut self,
        mut each: impl FnMut(Pdv<'_>) -> Result<(), ScuError>,
    ) -> Result<(), ScuError> {
        match self.read_pdu()? {
            pdu::P_DATA_TF => {}
            pdu::A_ABORT => return Err(ScuError::Aborted),
            pdu::A_RELEASE_RQ => {
                return Err(ScuError::Protocol(
                    "an A-RELEASE-RQ while a request was answered".into(),
                ))
            }
            kind => {
                return Err(ScuError::Protocol(format!(
                    "a PDU of type 0x{kind:02X} during a request"
                )))
            }
        }
        let Connection { body, command, .. } = self;
        for pdv in pdu::parse_pdvs(body)? {
            if !pdv.command {
                each(Pdv::Data {
                    context_id: pdv.context_id,
                    data: pdv.data,
                    last: pdv.last,
                })?;
                continue;
            }
            if command.len() + pdv.data.len() > MAX_COMMAND {
                return Err(ScuError::Protocol("an oversized command set".into()));
            }
            command.extend_from_slice(pdv.data);
            if pdv.last {
                let parsed = dimse::parse_peer_command(command).map_err(ScuError::Protocol)?;
                command.clear();
                each(Pdv::Command(pdv.context_id, parsed))?;
            }
        }
        Ok(())
    }
}

/// An established association.
pub struct Association {
    connection: Connection,
    /// Accepted contexts: id -> (abstract syntax, transfer syntax).
    accepted: HashMap<u8, (String, String)>,
    /// The contexts proposed with one transfer syntax: what the peer sends on one of them is
    /// in the syntax it chose the context for, not one it chose among several.
    alone: HashSet<u8>,
    /// The SOP classes the peer agreed we take the SCP role for.
    scp_roles: Vec<String>,
    peer_max_pdu: u32,
    next_message_id: u16,
    called_ae: String,
    address: SocketAddr,
    open: bool,
}

impl Association {
    /// Connects to `peer` and proposes `contexts`, taking the SCP role for `scp_roles` (the
    /// storage SOP classes a C-GET sends back).
    pub fn open(
        peer: &Peer,
        contexts: &[ProposedContext],
        scp_roles: &[String],
    ) -> Result<Association, ScuError> {
        let address = (peer.host.as_str(), peer.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| {
                ScuError::Io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} resolves to no address", peer.host),
                ))
            })?;
        // The ACSE timeout bounds everything up to the A-ASSOCIATE-AC: a peer that does not
        // speak TLS, or stays silent, fails the association instead of holding it.
        let deadline = Instant::now() + peer.acse_timeout;
        let tcp = TcpStream::connect_timeout(&address, peer.acse_timeout)?;
        tcp.set_nodelay(true)?;
        tcp.set_write_timeout(Some(peer.timeout))?;
        let mut socket = Socket::new(tcp);
        socket.set_deadline(Some(deadline));
        let stream: Box<dyn Channel + Sync> = match &peer.tls {
            None => Box::new(socket),
            Some(config) => Box::new(
                tls::connect(config.clone(), &peer.host, socket).map_err(ScuError::TlsHandshake)?,
            ),
        };
        let roles: Vec<RoleSelection> = scp_roles
            .iter()
            .map(|uid| RoleSelection {
                sop_class_uid: uid.clone(),
                scu: false,
                scp: true,
            })
            .collect();
        let mut connection = Connection {
            stream,
            timeout: peer.timeout,
            max_pdu: peer.max_pdu,
            body: Vec::new(),
            command: Vec::new(),
        };
        connection.stream.write_all(&pdu::encode_associate_rq(
            &peer.called_ae,
            &peer.calling_ae,
            contexts,
            &roles,
            peer.max_pdu,
            &peer.implementation.class_uid,
            &peer.implementation.version_name,
        ))?;
        let ac = match connection.read_pdu_by(deadline)? {
            pdu::A_ASSOCIATE_AC => pdu::parse_associate_ac(&connection.body)?,
            pdu::A_ASSOCIATE_RJ => {
                let (result, source, reason) = pdu::parse_associate_rj(&connection.body)?;
                return Err(ScuError::Rejected(result, source, reason));
            }
            pdu::A_ABORT => return Err(ScuError::Aborted),
            kind => {
                return Err(ScuError::Protocol(format!(
                    "a PDU of type 0x{kind:02X} in answer to A-ASSOCIATE-RQ"
                )))
            }
        };
        let proposed: HashMap<u8, &str> = contexts
            .iter()
            .map(|c| (c.id, c.abstract_syntax.as_str()))
            .collect();
        let accepted = ac
            .contexts
            .iter()
            .filter(|c| c.result == pdu::ACCEPTANCE)
            .filter_map(|c| {
                let abstract_syntax = proposed.get(&c.id)?;
                Some((
                    c.id,
                    (abstract_syntax.to_string(), c.transfer_syntax.clone()),
                ))
            })
            .collect();
        let alone = contexts
            .iter()
            .filter(|c| c.transfer_syntaxes.len() == 1)
            .map(|c| c.id)
            .collect();
        Ok(Association {
            connection,
            accepted,
            alone,
            scp_roles: ac
                .roles
                .into_iter()
                .filter(|r| r.scp)
                .map(|r| r.sop_class_uid)
                .collect(),
            peer_max_pdu: ac.max_pdu,
            next_message_id: 1,
            called_ae: peer.called_ae.clone(),
            address,
            open: true,
        })
    }

    /// The AE title we called and its address: who sends what a C-GET retrieves.
    pub fn called_ae(&self) -> &str {
        &self.called_ae
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Whether the association can take another request.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The first accepted context for `abstract_syntax`: (id, transfer syntax).
    pub fn context(&self, abstract_syntax: &str) -> Option<(u8, &str)> {
        self.accepted
            .iter()
            .filter(|(_, (a, _))| a == abstract_syntax)
            .min_by_key(|(id, _)| **id)
            .map(|(id, (_, ts))| (*id, ts.as_str()))
    }

    /// Whether context `context_id` was proposed with one transfer syntax.
    pub fn proposed_alone(&self, context_id: u8) -> bool {
        self.alone.contains(&context_id)
    }

    /// The (abstract syntax, transfer syntax) of an accepted context.
    pub fn accepted(&self, context_id: u8) -> Option<(&str, &str)> {
        self.accepted
            .get(&context_id)
            .map(|(a, t)| (a.as_str(), t.as_str()))
    }

    /// Whether the peer agreed that we store instances of `sop_class` it sends (SCP role).
    pub fn takes_scp_role(&self, sop_class: &str) -> bool {
        self.scp_roles.iter().any(|c| c == sop_class)
    }

    pub fn message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1).max(1);
        id
    }

    /// Sends a command, and its data set if it has one, in one write.
    pub fn send(
        &mut self,
        context_id: u8,
        command: &[u8],
        data: Option<&[u8]>,
    ) -> Result<(), ScuError> {
        let mut wire = pdu::encode_message(context_id, true, command, self.peer_max_pdu);
        if let Some(data) = data {
            wire.extend(pdu::encode_message(
                context_id,
                false,
                data,
                self.peer_max_pdu,
            ));
        }
        self.write(&wire)
    }

    fn write(&mut self, wire: &[u8]) -> Result<(), ScuError> {
        let written = self.connection.stream.write_all(wire);
        if written.is_err() {
            self.open = false;
        }
        Ok(written?)
    }

    /// Reads the next P-DATA-TF, handing `each` its PDVs; the association is closed when this
    /// fails.
    pub fn next(
        &mut self,
        each: impl FnMut(Pdv<'_>) -> Result<(), ScuError>,
    ) -> Result<(), ScuError> {
        let read = self.connection.next(each);
        if read.is_err() {
            self.open = false;
        }
        read
    }

    /// Sends a C-STORE-RSP (or any command without a data set) on `context_id`.
    pub fn respond(&mut self, context_id: u8, command: &[u8]) -> Result<(), ScuError> {
        self.send(context_id, command, None)
    }

    /// Releases the association (A-RELEASE-RQ, then the peer's A-RELEASE-RP).
    pub fn release(&mut self) -> Result<(), ScuError> {
        if !self.open {
            return Ok(());
        }
        self.open = false;
        self.connection
            .stream
            .write_all(&pdu::encode_release_rq())?;
        loop {
            match self.connection.read_pdu()? {
                pdu::A_RELEASE_RP | pdu::A_ABORT => break,
                // Late data of a request we stopped reading (a cancelled one): skipped.
                pdu::P_DATA_TF => continue,
                kind => {
                    return Err(ScuError::Protocol(format!(
                        "a PDU of type 0x{kind:02X} in answer to A-RELEASE-RQ"
                    )))
                }
            }
        }
        self.connection.stream.close();
        Ok(())
    }

    /// Aborts the association (A-ABORT from the service user).
    pub fn abort(&mut self) {
        if self.open {
            self.open = false;
            let _ = self.connection.stream.write_all(&pdu::encode_user_abort());
        }
        self.connection.stream.close();
    }
}

impl Drop for Association {
    fn drop(&mut self) {
        self.abort();
    }
}
