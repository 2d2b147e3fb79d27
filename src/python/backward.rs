//! LayerNorm and RMSNorm backward, and the triad the benchmarks measure against.

use super::{maybe_detach, value_error};
use crate::kernels::element::Element;
use crate::kernels::layer_norm_backward::{layer_norm_backward as backward_kernel, Backward};
use crate::kernels::simd;
use crate::kernels::triad::triad as triad_kernel;
use numpy::{
    PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray1, PyReadwriteArray2, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

fn slice<'a, T: numpy::Element>(a: &'a PyReadonlyArray1<'_, T>, name: &str) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous")))
}

#[allow(clippy::too_many_arguments)]
fn backward_typed<'py, T>(
    py: Python<'py>,
    dy: &Bound<'py, PyAny>,
    x: PyReadonlyArray2<'py, T>,
    mean: Option<&Bound<'py, PyAny>>,
    rstd: &Bound<'py, PyAny>,
    weight: Option<&Bound<'py, PyAny>>,
    dx: &Bound<'py, PyAny>,
    dweight: &Bound<'py, PyAny>,
    dbias: Option<&Bound<'py, PyAny>>,
) -> PyResult<()>
where
    T: Element + numpy::Element,
    T::Stat: numpy::Element,
{
    let contiguous = |name: &str| PyValueError::new_err(format!("{name} must be C-contiguous"));
    let cols = x.shape()[1];
    let dy: PyReadonlyArray2<'py, T> = dy.extract()?;
    let mean: Option<PyReadonlyArray1<'py, T::Stat>> = mean.map(|m| m.extract()).transpose()?;
    let rstd: PyReadonlyArray1<'py, T::Stat> = rstd.extract()?;
    let w: Option<PyReadonlyArray1<'py, T>> = weight.map(|w| w.extract()).transpose()?;
    let mut dx: PyReadwriteArray2<'py, T> = dx.extract()?;
    let mut dw: PyReadwriteArray1<'py, T> = dweight.extract()?;
    let mut db: Option<PyReadwriteArray1<'py, T>> = dbias.map(|d| d.extract()).transpose()?;
    let args = Backward {
        dy: dy.as_slice().map_err(|_| contiguous("dy"))?,
        x: x.as_slice().map_err(|_| contiguous("x"))?,
        mean: mean.as_ref().map(|m| slice(m, "mean")).transpose()?,
        rstd: slice(&rstd, "rstd")?,
        cols,
        weight: w.as_ref().map(|w| slice(w, "weight")).transpose()?,
    };
    let dx = dx.as_slice_mut().map_err(|_| contiguous("dx"))?;
    let dw = dw.as_slice_mut().map_err(|_| contiguous("dweight"))?;
    let mut db_scratch = Vec::new();
    let db = match db.as_mut() {
        Some(db) => db.as_slice_mut().map_err(|_| contiguous("dbias"))?,
        None => {
            db_scratch.resize(cols, T::ZERO);
            &mut db_scratch[..]
        }
    };
    let level = simd::active();
    let elements = args.x.len();
    maybe_detach(py, elements, move || {
        backward_kernel(level, args, dx, dw, db)
    })
    .map_err(value_error)
}

/// Fill `dx` (2-D like `x`), `dweight` and `dbias` (1-D, one per column) from
/// `dy`, `x` and the forward pass's `mean`/`rstd`. Without `mean` (and
/// `dbias`), RMSNorm's backward.
#[pyfunction]
#[pyo3(signature = (dy, x, mean, rstd, weight, dx, dweight, dbias))]
#[allow(clippy::too_many_arguments)]
pub fn norm_backward<'py>(
    py: Python<'py>,
    dy: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    mean: Option<&Bound<'py, PyAny>>,
    rstd: &Bound<'py, PyAny>,
    weight: Option<&Bound<'py, PyAny>>,
    dx: &Bound<'py, PyAny>,
    dweight: &Bound<'py, PyAny>,
    dbias: Option<&Bound<'py, PyAny>>,
) -> PyResult<()> {
    if let Ok(x) = x.extract::<PyReadonlyArray2<'py, f32>>() {
        backward_typed(py, dy, x, mean, rstd, weight, dx, dweight, dbias)
    } else if let Ok(x) = x.extract::<PyReadonlyArray2<'py, f64>>() {
        backward_typed(py, dy, x, mean, rstd, weight, dx, dweight, dbias)
    } else {
        Err(PyTypeError::new_err(
            "x must be a 2-D float32 or float64 array",
        ))
    }
}

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
