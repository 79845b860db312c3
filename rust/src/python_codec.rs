//! The pixel codecs' Python binding: `encode_jpeg_lossless`, one frame to a JPEG Lossless code
//! stream (`jpeg_lossless.rs`), for the transcoder. Encoding releases the GIL.

use crate::jpeg_lossless::{self, Frame};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;

/// One frame's native samples (little endian, color-by-pixel) as a JPEG Lossless code stream,
/// selection value 1; ValueError saying why a frame cannot be encoded.
#[allow(clippy::too_many_arguments)]
#[pyfunction]
fn encode_jpeg_lossless<'py>(
    py: Python<'py>,
    samples: PyBackedBytes,
    rows: u16,
    columns: u16,
    samples_per_pixel: u8,
    bits_allocated: u8,
    bits_stored: u8,
    pixel_representation: u8,
) -> PyResult<Bound<'py, PyBytes>> {
    let frame = Frame {
        samples: &samples,
        rows,
        columns,
        samples_per_pixel,
        bits_allocated,
        bits_stored,
        signed: pixel_representation == 1,
    };
    let stream = py
        .detach(|| jpeg_lossless::encode(&frame))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(PyBytes::new(py, &stream))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_jpeg_lossless, m)?)
}
