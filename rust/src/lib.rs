//! dicomvault's native core: the DICOM data set scanner, the pack format, the
//! content-addressed store, the storage SCP that streams C-STORE data sets into it, and the
//! JPEG Lossless encoder the transcoder uses. The Python binding (`python` module, behind the
//! `python` feature) is a thin layer over these; the core has no Python dependency so that
//! `cargo test` and the fuzz targets run without an interpreter.

pub mod backlog;
pub mod cas;
pub mod commit;
pub mod dimse;
pub mod fuzzing;
pub mod identity;
pub mod jpeg_lossless;
pub mod manifest;
pub mod pack;
pub mod pdu;
pub mod receive;
pub mod scan;
pub mod scp;
pub mod scu;
pub mod status;
pub mod tls;
pub mod transport;

#[cfg(feature = "python")]
mod python;
#[cfg(feature = "python")]
mod python_codec;
#[cfg(feature = "python")]
mod python_results;
#[cfg(feature = "python")]
mod python_scp;
#[cfg(feature = "python")]
mod python_scu;
