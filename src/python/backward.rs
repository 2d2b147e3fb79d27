//! LayerNorm and RMSNorm backward.

use super::arrays::{eps as eps_value, trailing_dims, with_float_array, Ready, ReadyParam};
use super::{maybe_detach, value_error};
use crate::kernels::element::Element;
use crate::kernels::layer_norm_backward::{layer_norm_backward as backward_kernel, Backward};
use crate::kernels::simd;
use numpy::{PyArrayDyn, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// The whole backward call for kernel-ready arguments (see the forward fast
/// path): `(dx, dweight, dbias)` for LayerNorm, `(dx, dweight)` for RMSNorm
/// (`mean` None). `dy`, `x` C-contiguous aligned arrays of one float dtype and
/// shape; `mean`/`rstd` of the leading shape in the statistics dtype;
/// `weight` None or of `normalized_shape`. None for anything else: the Python
/// layer then converts or reports.
#[pyfunction]
#[pyo3(signature = (dy, x, mean, rstd, normalized_shape, weight, eps=None))]
#[allow(clippy::too_many_arguments)]
pub fn norm_backward<'py>(
    py: Python<'py>,
    dy: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    mean: &Bound<'py, PyAny>,
    rstd: &Bound<'py, PyAny>,
    normalized_shape: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    eps: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let args = Args {
        dy,
        mean,
        rstd,
        normalized_shape,
        weight,
        eps,
    };
    with_float_array!(backward_typed, py, x, args)
}

struct Args<'a, 'py> {
    dy: &'a Bound<'py, PyAny>,
    mean: &'a Bound<'py, PyAny>,
    rstd: &'a Bound<'py, PyAny>,
    normalized_shape: &'a Bound<'py, PyAny>,
    weight: &'a Bound<'py, PyAny>,
    eps: Option<&'a Bound<'py, PyAny>>,
}

fn backward_typed<'py, T>(
    py: Python<'py>,
    x: Ready<'_, 'py, T>,
    args: Args<'_, 'py>,
) -> PyResult<Option<Bound<'py, PyAny>>>
where
    T: Element + numpy::Element,
    T::Stat: numpy::Element,
{
    let shape = x.shape();
    let Some(dims) = trailing_dims(shape, args.normalized_shape) else {
        return Ok(None);
    };
    let lead = &shape[..shape.len() - dims.len()];
    let (rows, cols) = (
        lead.iter().product::<usize>(),
        dims.iter().product::<usize>(),
    );
    let Some(dy) = Ready::<T>::take(args.dy).filter(|d| d.shape() == shape) else {
        return Ok(None);
    };
    let Some(rstd) = Ready::<T::Stat>::take(args.rstd).filter(|s| s.shape() == lead) else {
        return Ok(None);
    };
    let mean = match args.mean.is_none() {
        true => None,
        false => match Ready::<T::Stat>::take(args.mean).filter(|s| s.shape() == lead) {
            Some(m) => Some(m),
            None => return Ok(None),
        },
    };
    let Ok(weight) = ReadyParam::<T>::take(args.weight, &dims) else {
        return Ok(None);
    };
    let eps = match args.eps.filter(|e| !e.is_none()) {
        None => None,
        Some(e) => match eps_value(e) {
            Some(e) => Some(e),
            None => return Ok(None),
        },
    };
    // SAFETY: the outputs are new arrays, so nothing else refers to them; every
    // element is written by the kernel before Python sees it.
    let (dx, dweight, dbias) = unsafe {
        (
            PyArrayDyn::<T>::new(py, shape, false),
            PyArrayDyn::<T::Stat>::new(py, dims.as_slice(), false),
            mean.is_some()
                .then(|| PyArrayDyn::<T::Stat>::new(py, dims.as_slice(), false)),
        )
    };
    let mut db_scratch = Vec::new();
    // SAFETY: inputs are only read; outputs are new and distinct (see above).
    let (call, dx_s, dw_s, db_s) = unsafe {
        let call = Backward {
            dy: dy.slice(),
            x: x.slice(),
            mean: mean.as_ref().map(|m| m.slice()),
            rstd: rstd.slice(),
            cols,
            weight: weight.as_ref().map(|w| w.param()),
            eps,
        };
        let db_s = match &dbias {
            Some(d) => new_slice(d, cols),
            None => {
                db_scratch.resize(cols, T::Stat::ZERO);
                &mut db_scratch[..]
            }
        };
        (
            call,
            new_slice(&dx, rows * cols),
            new_slice(&dweight, cols),
            db_s,
        )
    };
    let level = simd::active();
    maybe_detach(py, rows * cols, move || {
        backward_kernel(level, call, dx_s, dw_s, db_s)
    })
    .map_err(value_error)?;
    let mut out = vec![dx.into_any(), dweight.into_any()];
    out.extend(dbias.map(|d| d.into_any()));
    Ok(Some(PyTuple::new(py, out)?.into_any()))
}

/// The elements of a new array of `len` elements.
///
/// # Safety
/// `a` is a new C-contiguous array that no one else holds.
#[allow(clippy::mut_from_ref)]
unsafe fn new_slice<'a, T: numpy::Element>(
    a: &'a Bound<'_, PyArrayDyn<T>>,
    len: usize,
) -> &'a mut [T] {
    if len == 0 {
        return &mut [];
    }
    // SAFETY: by the caller's promise.
    unsafe { std::slice::from_raw_parts_mut(a.data(), len) }
}
