//! DICOM TLS (PS3.15 B.9): the rustls configurations of both sides read from PEM files — the
//! listener's, and the SCU's for the associations we request — with the BCP 195 suites and
//! TLS 1.2 and 1.3, and the handshakes that turn a `Socket` into a `TlsStream` (`transport`).

use crate::transport::{Socket, TlsStream};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, RootCertStore, ServerConfig,
    ServerConnection, SideData, StreamOwned,
};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why TLS could not be configured, or a handshake failed.
#[derive(Debug)]
pub enum TlsError {
    /// A PEM file that cannot be read or holds nothing usable.
    Pem {
        path: PathBuf,
        reason: String,
    },
    /// A client certificate is required but no CA is configured to verify it against.
    NoTrustedCa,
    /// A host name a peer's certificate cannot be checked against.
    ServerName(String),
    Config(rustls::Error),
    Verifier(String),
    Handshake(rustls::Error),
    Io(io::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Pem { path, reason } => write!(f, "{}: {reason}", path.display()),
            TlsError::NoTrustedCa => write!(
                f,
                "a client certificate is required (tls_require_client_certificate) \
                 but no tls_ca is set to verify it against"
            ),
            TlsError::ServerName(host) => {
                write!(f, "{host:?} is no host name a certificate can name")
            }
            TlsError::Config(e) => write!(f, "TLS configuration: {e}"),
            TlsError::Verifier(e) => write!(f, "client certificate verifier: {e}"),
            TlsError::Handshake(e) => write!(f, "{e}"),
            TlsError::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
                write!(f, "not done within the association timeout")
            }
            TlsError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TlsError {}

impl From<io::Error> for TlsError {
    fn from(e: io::Error) -> TlsError {
        TlsError::Io(e)
    }
}

/// The PEM files of a TLS listener (`server_config`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// CAs that client certificates must chain to.
    pub ca: Option<PathBuf>,
    pub require_client_certificate: bool,
}

/// TLS 1.3's suites, and TLS 1.2's forward-secret AEAD suites of BCP 195 (RFC 9325 4.2;
/// PS3.15 B.9): no CBC, no RSA key exchange (rustls has no DHE).
fn bcp195_provider() -> CryptoProvider {
    use ring::cipher_suite as suite;
    CryptoProvider {
        cipher_suites: vec![
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ],
        ..ring::default_provider()
    }
}

fn pem_error(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certificates.is_empty() {
        return Err(pem_error(path, "no certificate in it"));
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// The CAs in a PEM file. Those webpki cannot use are left out, as OpenSSL does with a
/// system bundle; a file with none it can use is an error.
fn trusted(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certificates(path)?);
    if added == 0 {
        return Err(pem_error(path, "no CA certificate usable in it"));
    }
    Ok(roots)
}

/// TLS 1.3, and 1.2 for the peers that have no 1.3 yet (BCP 195 allows both).
static VERSIONS: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

/// The listener's TLS configuration: TLS 1.2 and 1.3, its certificate and key, and client
/// certificates verified against the CAs (required, or optional, as configured).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(bcp195_provider());
    let chain = certificates(&files.certificate)?;
    let key = private_key(&files.private_key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&VERSIONS)
        .map_err(TlsError::Config)?;
    let builder = match &files.ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(trusted(ca)?), provider);
            let verifier = if files.require_client_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None if files.require_client_certificate => return Err(TlsError::NoTrustedCa),
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    Ok(Arc::new(config))
}

/// The PEM files of the SCU's TLS (`client_config`).
#[derive(Debug, Clone)]
pub struct ClientFiles {
    /// CAs that a peer's certificate must chain to.
    pub ca: PathBuf,
    /// Our certificate and its private key, for a peer that asks for one (mutual TLS).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The SCU's TLS configuration: TLS 1.2 and 1.3, the peer's certificate verified against the
/// CAs (and against the host name we connect to, in `connect`), ours presented when we have
/// one. Its session cache lets the associations to one peer resume a session.
pub fn client_config(files: &ClientFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(Arc::new(bcp195_provider()))
        .with_protocol_versions(&VERSIONS)
        .map_err(TlsError::Config)?
        .with_root_certificates(trusted(&files.ca)?);
    let config = match &files.identity {
        Some((certificate, key)) => builder
            .with_client_auth_cert(certificates(certificate)?, private_key(key)?)
            .map_err(TlsError::Config)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Reads and writes TLS records on `socket` until the handshake is done, within the
/// socket's deadline.
fn handshake<D: SideData>(
    conn: &mut ConnectionCommon<D>,
    socket: &mut Socket,
) -> Result<(), TlsError> {
    while conn.is_handshaking() {
        if conn.wants_write() {
            conn.write_tls(socket)?;
            continue;
        }
        if conn.read_tls(socket)? == 0 {
            return Err(TlsError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection during the TLS handshake",
            )));
        }
        if let Err(e) = conn.process_new_packets() {
            // The alert saying why (whole: a truncated record tells the peer nothing), if
            // the peer still listens.
            while conn.wants_write() && conn.write_tls(socket).is_ok_and(|n| n > 0) {}
            return Err(TlsError::Handshake(e));
        }
    }
    while conn.wants_write() {
        conn.write_tls(socket)?;
    }
    Ok(())
}

/// The server side of a TLS handshake on `socket`, whose deadline bounds it.
pub fn accept(
    config: Arc<ServerConfig>,
    mut socket: Socket,
) -> Result<TlsStream<ServerConnection>, TlsError> {
    let mut conn = ServerConnection::new(config).map_err(TlsError::Config)?;
    handshake(&mut conn, &mut socket)?;
    Ok(StreamOwned::new(conn, socket))
}

/// The client side of a TLS handshake on `socket` with `host`, whose certificate must name
/// it; the socket's deadline bounds it.
pub fn connect(
    config: Arc<ClientConfig>,
    host: &str,
    mut socket: Socket,
) -> Result<TlsStream<ClientConnection>, TlsError> {
    let name =
        ServerName::try_from(host.to_string()).map_err(|_| TlsError::ServerName(host.into()))?;
    let mut conn = ClientConnection::new(config, name).map_err(TlsError::Config)?;
    handshake(&mut conn, &mut socket)?;
    Ok(StreamOwned::new(conn, socket))
}
