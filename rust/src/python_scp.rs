//! The DICOM listener's Python binding: `ListenerConfig` (everything the listener is built
//! from, one typed object), `DicomListener` (the Rust listener serving associations) and the
//! host through which it calls back into Python for what the archive decides. Every wait on
//! the network releases the GIL.
// The constructors take every field of what they build (`new = "from_fields"`, the callbacks).
#![allow(clippy::too_many_arguments)]

use crate::python::{decode_manifest, Store};
use crate::{dimse, scp, status, tls};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use std::path::PathBuf;
use std::time::Duration;

/// An AE title of `[modalities]` as the listener checks it without calling back: the
/// addresses its host resolves to, and whether it may echo and store.
#[pyclass(frozen, get_all, new = "from_fields", module = "dicomvault._native")]
pub(crate) struct KnownAe {
    aet: String,
    addresses: Vec<String>,
    echo: bool,
    store: bool,
}

/// The DICOM TLS listener beside the plain one: its port, the PEM certificate and private
/// key, the CAs client certificates are verified against (None: none) and whether a client
/// must present one.
#[pyclass(frozen, get_all, new = "from_fields", module = "dicomvault._native")]
pub(crate) struct ListenerTls {
    port: u16,
    certificate: PathBuf,
    private_key: PathBuf,
    ca: Option<PathBuf>,
    require_client_certificate: bool,
}

/// Everything the DICOM listener is built from (`[dicom]`, the known AEs, what it serves).
#[pyclass(frozen, get_all, new = "from_fields", module = "dicomvault._native")]
pub(crate) struct ListenerConfig {
    host: String,
    port: u16,
    ae_title: String,
    check_called_aet: bool,
    always_allow_echo: bool,
    always_allow_store: bool,
    check_modality_host: bool,
    known: Vec<Py<KnownAe>>,
    /// The storage SOP classes, and the C-FIND, C-MOVE and C-GET information models served.
    storage_classes: Vec<String>,
    /// Private SOP classes stored too (`[dicom] accept_private_sop_classes`).
    private_classes: bool,
    find_classes: Vec<String>,
    move_classes: Vec<String>,
    retrieve_classes: Vec<String>,
    /// In order of preference when a context offers several.
    transfer_syntaxes: Vec<String>,
    max_pdu: u32,
    max_associations: usize,
    max_associations_per_ae: usize,
    association_timeout_s: f64,
    dimse_timeout_s: f64,
    /// In bytes.
    max_instance_size: u64,
    implementation_class_uid: String,
    implementation_version_name: String,
    replace_duplicates: bool,
    tls: Option<Py<ListenerTls>>,
}

impl ListenerConfig {
    /// The addresses to listen on (the TLS one with its rustls configuration) and the
    /// listener's own configuration.
    fn build(&self, py: Python<'_>) -> PyResult<(scp::Endpoints, scp::ListenerConfig)> {
        let resolve = |port: u16| -> PyResult<std::net::SocketAddr> {
            std::net::ToSocketAddrs::to_socket_addrs(&(self.host.as_str(), port))?
                .next()
                .ok_or_else(|| PyValueError::new_err(format!("cannot resolve {}", self.host)))
        };
        let tls = match &self.tls {
            None => None,
            Some(tls) => {
                let tls = tls.get();
                let files = tls::TlsFiles {
                    certificate: tls.certificate.clone(),
                    private_key: tls.private_key.clone(),
                    ca: tls.ca.clone(),
                    require_client_certificate: tls.require_client_certificate,
                };
                let config = tls::server_config(&files)
                    .map_err(|e| PyValueError::new_err(format!("TLS: {e}")))?;
                Some((resolve(tls.port)?, config))
            }
        };
        let endpoints = scp::Endpoints {
            plain: resolve(self.port)?,
            tls,
        };
        let known = self
            .known
            .iter()
            .map(|k| {
                let k = k.bind(py).get();
                scp::KnownAe {
                    aet: k.aet.clone(),
                    addresses: k.addresses.clone(),
                    echo: k.echo,
                    store: k.store,
                }
            })
            .collect();
        let config = scp::ListenerConfig {
            policy: scp::Policy {
                ae_title: self.ae_title.clone(),
                check_called_aet: self.check_called_aet,
                always_allow_echo: self.always_allow_echo,
                always_allow_store: self.always_allow_store,
                check_modality_host: self.check_modality_host,
                known,
            },
            storage_classes: self.storage_classes.iter().cloned().collect(),
            private_classes: self.private_classes,
            find_classes: self.find_classes.iter().cloned().collect(),
            move_classes: self.move_classes.iter().cloned().collect(),
            retrieve_classes: self.retrieve_classes.iter().cloned().collect(),
            transfer_syntaxes: self.transfer_syntaxes.clone(),
            max_pdu: self.max_pdu,
            max_associations: self.max_associations,
            max_associations_per_ae: self.max_associations_per_ae,
            association_timeout: Duration::from_secs_f64(self.association_timeout_s),
            dimse_timeout: Duration::from_secs_f64(self.dimse_timeout_s),
            max_instance_size: self.max_instance_size,
            implementation: dimse::Implementation {
                class_uid: self.implementation_class_uid.clone(),
                version_name: self.implementation_version_name.clone(),
            },
            replace_duplicates: self.replace_duplicates,
        };
        Ok((endpoints, config))
    }
}

/// The Python side of the DICOM listener: the server selects, matches, decodes and moves for
/// queries, Python's logging records what it did. (What it received goes through the
/// store's journal, whose backlog the archive's applier indexes.)
struct PyHost {
    log: Py<PyAny>,
    select: Py<PyAny>,
    transcode: Py<PyAny>,
    find: Py<PyAny>,
    move_to: Py<PyAny>,
    commit: Py<PyAny>,
}

/// Items pulled from a Python iterator as the listener sends them, a few at a time (taking
/// Python's lock once per batch, not once per item); closed when dropped, so that a generator
/// cut short (a C-CANCEL) runs its cleanup at once.
struct PyItems<T> {
    iterator: Py<PyAny>,
    ready: std::collections::VecDeque<Result<T, String>>,
    exhausted: bool,
    convert: fn(&Bound<'_, PyAny>) -> PyResult<T>,
}

const ITEM_BATCH: usize = 16;

impl<T> PyItems<T> {
    fn new(
        iterable: &Bound<'_, PyAny>,
        convert: fn(&Bound<'_, PyAny>) -> PyResult<T>,
    ) -> PyResult<Self> {
        Ok(PyItems {
            iterator: iterable.try_iter()?.into_any().unbind(),
            ready: Default::default(),
            exhausted: false,
            convert,
        })
    }
}

impl<T> Iterator for PyItems<T> {
    type Item = Result<T, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ready.is_empty() && !self.exhausted {
            Python::attach(|py| {
                let iterator = self.iterator.bind(py);
                while self.ready.len() < ITEM_BATCH {
                    match iterator.call_method0("__next__") {
                        Ok(item) => self
                            .ready
                            .push_back((self.convert)(&item).map_err(|e| e.to_string())),
                        Err(e) => {
                            if !e.is_instance_of::<pyo3::exceptions::PyStopIteration>(py) {
                                self.ready.push_back(Err(e.value(py).to_string()));
                            }
                            self.exhausted = true;
                            break;
                        }
                    }
                }
            });
        }
        self.ready.pop_front()
    }
}

impl<T> Drop for PyItems<T> {
    fn drop(&mut self) {
        Python::attach(|py| {
            let iterator = self.iterator.bind(py);
            if iterator.hasattr("close").unwrap_or(false) {
                if let Err(e) = iterator.call_method0("close") {
                    e.print(py);
                }
            }
        });
    }
}

impl PyHost {
    /// `callable(calling_ae, address, model, transfer_syntax, identifier[, destination,
    /// requestor_fd])`.
    fn query<'py>(
        &self,
        py: Python<'py>,
        callable: &Py<PyAny>,
        request: &scp::QueryRequest,
        destination: Option<(&str, std::os::fd::RawFd)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut args = vec![
            PyString::new(py, &request.calling_ae).into_any(),
            PyString::new(py, &request.address).into_any(),
            PyString::new(py, &request.sop_class_uid).into_any(),
            PyString::new(py, &request.transfer_syntax).into_any(),
            PyBytes::new(py, &request.identifier).into_any(),
        ];
        if let Some((destination, requestor)) = destination {
            args.push(PyString::new(py, destination).into_any());
            args.push(requestor.into_pyobject(py)?.into_any());
        }
        callable
            .bind(py)
            .call1(pyo3::types::PyTuple::new(py, args)?)
    }
}

/// (SOP Class UID, SOP Instance UID, transfer syntax, data set offset, manifest)
type PySelected = (String, String, String, u64, Vec<u8>);

impl scp::Host for PyHost {
    fn log(&self, lines: Vec<(scp::LogLevel, String)>) {
        Python::attach(|py| {
            for (level, message) in lines {
                let level = match level {
                    scp::LogLevel::Info => 20,
                    scp::LogLevel::Warning => 30,
                    scp::LogLevel::Error => 40,
                };
                if let Err(e) = self.log.call1(py, (level, message)) {
                    e.print(py);
                }
            }
        });
    }

    fn select(&self, request: scp::QueryRequest) -> Result<Vec<scp::Selected>, u16> {
        Python::attach(|py| {
            let run = || -> PyResult<Result<Vec<scp::Selected>, u16>> {
                let (status, found): (u16, Vec<PySelected>) =
                    self.query(py, &self.select, &request, None)?.extract()?;
                if status != status::SUCCESS {
                    return Ok(Err(status));
                }
                let selected = found
                    .into_iter()
                    .map(
                        |(sop_class_uid, sop_instance_uid, transfer_syntax, offset, manifest)| {
                            Ok(scp::Selected {
                                sop_class_uid,
                                sop_instance_uid,
                                transfer_syntax,
                                dataset_offset: offset,
                                manifest: decode_manifest(&manifest)?,
                            })
                        },
                    )
                    .collect::<PyResult<Vec<_>>>()?;
                Ok(Ok(selected))
            };
            run().unwrap_or_else(|e| {
                e.print(py);
                Err(status::CANNOT_UNDERSTAND)
            })
        })
    }

    fn find(&self, request: scp::QueryRequest) -> Result<scp::Matches, u16> {
        Python::attach(|py| {
            let run = || -> PyResult<Result<scp::Matches, u16>> {
                let (status, matches): (u16, Bound<'_, PyAny>) =
                    self.query(py, &self.find, &request, None)?.extract()?;
                if status != status::SUCCESS {
                    return Ok(Err(status));
                }
                let items = PyItems::new(&matches, |item: &Bound<'_, PyAny>| {
                    item.extract::<Vec<u8>>()
                })?;
                Ok(Ok(Box::new(items)))
            };
            run().unwrap_or_else(|e| {
                e.print(py);
                Err(status::CANNOT_UNDERSTAND)
            })
        })
    }

    fn move_to(
        &self,
        request: scp::QueryRequest,
        destination: &str,
        requestor: std::os::fd::RawFd,
    ) -> Result<(Vec<String>, scp::SubOperationStatuses), u16> {
        Python::attach(|py| {
            let run = || -> PyResult<Result<(Vec<String>, scp::SubOperationStatuses), u16>> {
                let (status, uids, statuses): (u16, Vec<String>, Bound<'_, PyAny>) = self
                    .query(py, &self.move_to, &request, Some((destination, requestor)))?
                    .extract()?;
                if status != status::SUCCESS {
                    return Ok(Err(status));
                }
                let items =
                    PyItems::new(&statuses, |item: &Bound<'_, PyAny>| item.extract::<u16>())?;
                Ok(Ok((uids, Box::new(items))))
            };
            run().unwrap_or_else(|e| {
                e.print(py);
                Err(status::CANNOT_UNDERSTAND)
            })
        })
    }

    fn commit(&self, request: scp::QueryRequest, report: Option<u16>) -> u16 {
        Python::attach(|py| {
            let args = (
                &request.calling_ae,
                &request.address,
                &request.sop_class_uid,
                &request.transfer_syntax,
                PyBytes::new(py, &request.identifier),
                report,
            );
            self.commit
                .call1(py, args)
                .and_then(|status| status.extract::<u16>(py))
                .unwrap_or_else(|e| {
                    e.print(py);
                    status::PROCESSING_FAILURE
                })
        })
    }

    fn transcode(
        &self,
        instance: &scp::Selected,
        accepted: &[String],
    ) -> Result<(String, Vec<u8>), String> {
        Python::attach(|py| {
            let manifest = PyBytes::new(py, &instance.manifest.encode());
            self.transcode
                .call1(
                    py,
                    (
                        &instance.sop_class_uid,
                        &instance.sop_instance_uid,
                        &instance.transfer_syntax,
                        instance.dataset_offset,
                        manifest,
                        accepted.to_vec(),
                    ),
                )
                .and_then(|r| r.extract::<(String, Vec<u8>)>(py))
                .map_err(|e| e.value(py).to_string())
        })
    }
}

/// The DICOM listener (see `rust/src/scp/`), built from a `ListenerConfig`: serves every
/// association with `store`, appends what it receives to the pack log through the store's
/// journal, which leaves it for the index (`Store.take_logged`), logs through `log(level,
/// message)`, selects what a C-GET retrieves through `select(calling_ae, address, model,
/// transfer_syntax, identifier) -> (status, [(sop_class, sop_instance, transfer_syntax,
/// dataset_offset, manifest)])` and decodes an instance the peer cannot take as stored
/// through `transcode(sop_class, sop_instance, transfer_syntax, dataset_offset, manifest,
/// accepted) -> (syntax, data set)`, answers C-FIND through `find(calling_ae, address, model,
/// transfer_syntax, identifier) -> (status, iterator of encoded response identifiers)` and
/// carries out C-MOVE through `move_to(calling_ae, address, model, transfer_syntax,
/// identifier, destination, requestor_fd) -> (status, [SOP Instance UID], iterator of
/// sub-operation statuses)`; takes Storage Commitment requests and reports through
/// `commit(calling_ae, address, sop_class, transfer_syntax, information, event_type or None)
/// -> N-ACTION or N-EVENT-REPORT status`.
#[pyclass(module = "dicomvault._native")]
struct DicomListener {
    listener: Option<scp::Listener>,
}

#[pymethods]
impl DicomListener {
    #[new]
    #[pyo3(signature = (store, config, *, log, select, transcode, find, move_to, commit))]
    fn new(
        py: Python<'_>,
        store: PyRef<'_, Store>,
        config: PyRef<'_, ListenerConfig>,
        log: Py<PyAny>,
        select: Py<PyAny>,
        transcode: Py<PyAny>,
        find: Py<PyAny>,
        move_to: Py<PyAny>,
        commit: Py<PyAny>,
    ) -> PyResult<Self> {
        let (endpoints, config) = config.build(py)?;
        let host = std::sync::Arc::new(PyHost {
            log,
            select,
            transcode,
            find,
            move_to,
            commit,
        });
        let journal = store.journal.clone();
        let listener = py.detach(|| scp::Listener::start(endpoints, config, journal, host))?;
        Ok(DicomListener {
            listener: Some(listener),
        })
    }

    /// The (host, port) it listens on.
    #[getter]
    fn address(&self) -> PyResult<(String, u16)> {
        let listener = self
            .listener
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("stopped"))?;
        let a = listener.address();
        Ok((a.ip().to_string(), a.port()))
    }

    /// The (host, port) of the TLS listener, or None.
    #[getter]
    fn tls_address(&self) -> PyResult<Option<(String, u16)>> {
        let listener = self
            .listener
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("stopped"))?;
        Ok(listener
            .tls_address()
            .map(|a| (a.ip().to_string(), a.port())))
    }

    /// Stops accepting, ends the associations in progress and drains the commits.
    fn stop(&mut self, py: Python<'_>) {
        if let Some(mut listener) = self.listener.take() {
            py.detach(move || listener.stop());
        }
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<KnownAe>()?;
    m.add_class::<ListenerTls>()?;
    m.add_class::<ListenerConfig>()?;
    m.add_class::<DicomListener>()?;
    Ok(())
}
