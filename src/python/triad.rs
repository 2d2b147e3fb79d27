//! The triad the benchmarks measure against.

use super::value_error;
use crate::kernels::element::Element;
use crate::kernels::simd;
use crate::kernels::triad::triad as triad_kernel;
use numpy::{PyReadonlyArray2, PyReadwriteArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

fn triad_typed<'py, T: Element + numpy::Element>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, T>,
    y: &Bound<'py, PyAny>,
    a: f64,
    b: f64,
) -> PyResult<()> {
    let cols = x.shape()[1];
    let mut y: PyReadwriteArray2<'py, T> = y.extract()?;
    let x = x
        .as_slice()
        .map_err(|_| PyValueError::new_err("x must be C-contiguous"))?;
    let y = y
        .as_slice_mut()
        .map_err(|_| PyValueError::new_err("y must be C-contiguous"))?;
    let level = simd::active();
    py.detach(move || triad_kernel(level, x, y, cols, a, b))
        .map_err(value_error)
}

/// `y = a·x + b` over 2-D C-contiguous arrays of one dtype, with the threads,
/// row split and store policy of the forward pass: the bandwidth limit.
#[pyfunction]
pub fn triad<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    a: f64,
    b: f64,
) -> PyResult<()> {
    if let Ok(x) = x.extract::<PyReadonlyArray2<'py, f32>>() {
        triad_typed(py, x, y, a, b)
    } else if let Ok(x) = x.extract::<PyReadonlyArray2<'py, f64>>() {
        triad_typed(py, x, y, a, b)
    } else {
        Err(PyTypeError::new_err(
            "x must be a 2-D float32 or float64 array",
        ))
    }
}
