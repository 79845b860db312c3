//! The SCU's Python binding: `ScuAssociation`, an association we requested and keep open for
//! C-FIND, C-GET and C-MOVE requests (over DICOM TLS with an `ScuTls`), and `Receiver`, where
//! a C-GET's sub-operations go (the listener's receive path, into the store the archive's
//! applier indexes). Every network wait releases the GIL.

use crate::dimse::Implementation;
use crate::pdu::ProposedContext;
use crate::python::Store;
use crate::receive;
use crate::scu::{self, Association, Key, Peer, Retrieved, ScuError};
use crate::tls;
use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rustls::ClientConfig;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

create_exception!(
    _native,
    AssociationError,
    PyOSError,
    "The peer could not be reached, refused or broke the association; the message says how."
);

fn association_error(e: ScuError) -> PyErr {
    AssociationError::new_err(e.to_string())
}

/// A timeout given in seconds, at least a millisecond: connecting refuses a zero one.
fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.001))
}

fn vr(text: &str) -> PyResult<[u8; 2]> {
    match text.as_bytes() {
        [a, b] => Ok([*a, *b]),
        _ => Err(PyValueError::new_err(format!("invalid VR {text:?}"))),
    }
}

/// Request keys as (tag, VR, value).
fn keys(keys: Vec<(u32, String, String)>) -> PyResult<Vec<Key>> {
    keys.into_iter()
        .map(|(tag, v, value)| {
            Ok(Key {
                tag,
                vr: vr(&v)?,
                value,
            })
        })
        .collect()
}

/// Where a C-GET's sub-operations are stored: the store's writer, the listener's checks, the
/// archive's one commit path.
#[pyclass(frozen, module = "dicomvault._native", name = "Receiver")]
struct PyReceiver {
    inner: Arc<receive::Receiver>,
}

#[pymethods]
impl PyReceiver {
    #[new]
    #[pyo3(signature = (store, *, implementation_class_uid, implementation_version_name, replace_duplicates = false))]
    fn new(
        store: PyRef<'_, Store>,
        implementation_class_uid: String,
        implementation_version_name: String,
        replace_duplicates: bool,
    ) -> Self {
        let implementation = Implementation {
            class_uid: implementation_class_uid,
            version_name: implementation_version_name,
        };
        PyReceiver {
            inner: Arc::new(receive::Receiver::new(
                store.journal.clone(),
                implementation,
                replace_duplicates,
            )),
        }
    }
}

/// DICOM TLS for the associations we request: the CAs (PEM) a peer's certificate must chain
/// to, and our certificate and private key for a peer that asks for one. Read once and shared
/// by every association made with it, which resume each other's TLS sessions.
#[pyclass(frozen, module = "dicomvault._native")]
struct ScuTls {
    config: Arc<ClientConfig>,
}

#[pymethods]
impl ScuTls {
    /// ValueError if a file cannot be read or holds nothing usable, or only one of
    /// `certificate` and `private_key` is given.
    #[new]
    #[pyo3(signature = (*, ca, certificate = None, private_key = None))]
    fn new(
        ca: PathBuf,
        certificate: Option<PathBuf>,
        private_key: Option<PathBuf>,
    ) -> PyResult<Self> {
        let identity = match (certificate, private_key) {
            (Some(certificate), Some(key)) => Some((certificate, key)),
            (None, None) => None,
            _ => {
                return Err(PyValueError::new_err(
                    "TLS: a certificate needs its private key, and a key its certificate",
                ))
            }
        };
        let config = tls::client_config(&tls::ClientFiles { ca, identity })
            .map_err(|e| PyValueError::new_err(format!("TLS: {e}")))?;
        Ok(ScuTls { config })
    }
}

/// An association we requested: `find`, `get` and `move` on it until `release`.
#[pyclass(module = "dicomvault._native")]
struct ScuAssociation {
    inner: Option<Association>,
}

impl ScuAssociation {
    fn open(&mut self) -> PyResult<&mut Association> {
        self.inner
            .as_mut()
            .filter(|a| a.is_open())
            .ok_or_else(|| PyRuntimeError::new_err("the association is closed"))
    }
}

/// What a C-GET or C-MOVE came to: its final status, the sub-operations' counts, the SOP
/// Instance UIDs of those that failed; for a C-GET, how many instances were stored and those
/// refused, as (SOP Instance UID, why), and those refused as sent on a context proposed with
/// several transfer syntaxes, as (SOP Instance UID, SOP Class UID).
#[pyclass(frozen, get_all, module = "dicomvault._native", name = "Retrieved")]
struct PyRetrieved {
    status: u16,
    remaining: u32,
    completed: u32,
    failed: u32,
    warning: u32,
    failed_uids: Vec<String>,
    stored: u32,
    refused: Vec<(String, String)>,
    unproposed: Vec<(String, String)>,
}

impl From<Retrieved> for PyRetrieved {
    fn from(r: Retrieved) -> PyRetrieved {
        PyRetrieved {
            status: r.status,
            remaining: r.counts.remaining,
            completed: r.counts.completed,
            failed: r.counts.failed,
            warning: r.counts.warning,
            failed_uids: r.failed_uids,
            stored: r.stored,
            refused: r.refused,
            unproposed: r.unproposed,
        }
    }
}

#[pymethods]
impl ScuAssociation {
    /// Connects to `called_ae` at `host:port` as `calling_ae` (over TLS with `tls`, the
    /// peer's certificate naming `host`), proposing `contexts` (abstract syntax, [transfer
    /// syntaxes]) and taking the SCP role for `scp_roles` (what a C-GET sends back), all
    /// within `acse_timeout_s`; the peer may then stay silent `timeout_s` at most.
    /// AssociationError if it cannot be made.
    #[new]
    #[pyo3(signature = (
        host, port, called_ae, calling_ae, contexts, scp_roles = Vec::new(), *, max_pdu,
        acse_timeout_s, timeout_s, implementation_class_uid, implementation_version_name,
        tls = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        host: String,
        port: u16,
        called_ae: String,
        calling_ae: String,
        contexts: Vec<(String, Vec<String>)>,
        scp_roles: Vec<String>,
        max_pdu: u32,
        acse_timeout_s: f64,
        timeout_s: f64,
        implementation_class_uid: String,
        implementation_version_name: String,
        tls: Option<PyRef<'_, ScuTls>>,
    ) -> PyResult<Self> {
        if contexts.len() > 128 {
            return Err(PyValueError::new_err(format!(
                "{} presentation contexts: at most 128 fit an association",
                contexts.len()
            )));
        }
        let peer = Peer {
            host,
            port,
            called_ae,
            calling_ae,
            acse_timeout: seconds(acse_timeout_s),
            timeout: seconds(timeout_s),
            max_pdu,
            implementation: Implementation {
                class_uid: implementation_class_uid,
                version_name: implementation_version_name,
            },
            tls: tls.map(|t| t.config.clone()),
        };
        let proposed: Vec<ProposedContext> = contexts
            .into_iter()
            .enumerate()
            .map(
                |(n, (abstract_syntax, transfer_syntaxes))| ProposedContext {
                    id: (2 * n + 1) as u8,
                    abstract_syntax,
                    transfer_syntaxes,
                },
            )
            .collect();
        let association = py
            .detach(|| Association::open(&peer, &proposed, &scp_roles))
            .map_err(association_error)?;
        Ok(ScuAssociation {
            inner: Some(association),
        })
    }

    /// Whether it can take another request (it is closed after a failure).
    #[getter]
    fn is_open(&self) -> bool {
        self.inner.as_ref().is_some_and(Association::is_open)
    }

    /// C-FIND in `model` at `level` with `keys` [(tag, VR, value)]: (final status, a dict per
    /// match of the `wanted` [(name, tag, VR)] values it holds); cancelled once `limit`
    /// matches arrived, when given.
    #[pyo3(signature = (model, level, keys, wanted, limit = None))]
    fn find<'py>(
        &mut self,
        py: Python<'py>,
        model: &str,
        level: &str,
        keys: Vec<(u32, String, String)>,
        wanted: Vec<(Bound<'py, pyo3::types::PyString>, u32, String)>,
        limit: Option<usize>,
    ) -> PyResult<(u16, Vec<Bound<'py, PyDict>>)> {
        let keys = self::keys(keys)?;
        let tags = wanted
            .iter()
            .map(|(_, tag, v)| Ok((*tag, vr(v)?)))
            .collect::<PyResult<Vec<_>>>()?;
        let association = self.open()?;
        let found = py
            .detach(|| scu::find(association, model, level, &keys, &tags, limit))
            .map_err(association_error)?;
        let matches = found
            .matches
            .iter()
            .map(|values| {
                let d = PyDict::new(py);
                for (tag, value) in values {
                    if let Some((name, _, _)) = wanted.iter().find(|(_, t, _)| t == tag) {
                        d.set_item(name, value)?;
                    }
                }
                Ok(d)
            })
            .collect::<PyResult<_>>()?;
        Ok((found.status, matches))
    }

    /// C-GET in `model` at `level` with `keys`, the instances stored through `receiver`
    /// (refused unless of one of `studies`, when given; with `as_held`, unless sent on a
    /// context proposed with one transfer syntax: see `scu::get`).
    #[pyo3(signature = (receiver, model, level, keys, studies = Vec::new(), as_held = false))]
    #[allow(clippy::too_many_arguments)]
    fn get(
        &mut self,
        py: Python<'_>,
        receiver: PyRef<'_, PyReceiver>,
        model: &str,
        level: &str,
        keys: Vec<(u32, String, String)>,
        studies: Vec<String>,
        as_held: bool,
    ) -> PyResult<PyRetrieved> {
        let keys = self::keys(keys)?;
        let receiver = receiver.inner.clone();
        let association = self.open()?;
        let result = py
            .detach(|| {
                scu::get(
                    association,
                    model,
                    level,
                    &keys,
                    &receiver,
                    &studies,
                    as_held,
                )
            })
            .map_err(association_error)?;
        Ok(result.into())
    }

    /// C-MOVE in `model` at `level` with `keys` to `destination`.
    fn r#move(
        &mut self,
        py: Python<'_>,
        model: &str,
        level: &str,
        keys: Vec<(u32, String, String)>,
        destination: &str,
    ) -> PyResult<PyRetrieved> {
        let keys = self::keys(keys)?;
        let association = self.open()?;
        let result = py
            .detach(|| scu::move_to(association, model, level, &keys, destination))
            .map_err(association_error)?;
        Ok(result.into())
    }

    /// Releases the association (a closed one is left as it is).
    fn release(&mut self, py: Python<'_>) -> PyResult<()> {
        if let Some(mut association) = self.inner.take() {
            py.detach(|| association.release())
                .map_err(association_error)?;
        }
        Ok(())
    }

    /// Aborts the association.
    fn abort(&mut self) {
        if let Some(mut association) = self.inner.take() {
            association.abort();
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ScuAssociation>()?;
    m.add_class::<ScuTls>()?;
    m.add_class::<PyReceiver>()?;
    m.add_class::<PyRetrieved>()?;
    m.add("AssociationError", m.py().get_type::<AssociationError>())?;
    Ok(())
}
