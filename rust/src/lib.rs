//! dicomvault's native core: the DICOM data set scanner, the pack format and the
//! content-addressed store. The Python binding (`python` module, behind the `python` feature)
//! is a thin layer over these; the core has no Python dependency so that `cargo test` and the
//! fuzz targets run without an interpreter.

pub mod cas;
pub mod manifest;
pub mod pack;
pub mod scan;

#[cfg(feature = "python")]
mod python;
