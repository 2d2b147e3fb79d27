//! LayerNorm and RMSNorm forward: the whole call in Rust when the arguments are
//! already what the kernel reads, so that a 1×768 call costs about one NumPy
//! ufunc call.

use super::arrays::{
    eps as eps_value, overlaps, trailing_dims, with_float_array, Ready, ReadyParam,
};
use super::{maybe_detach, value_error};
use crate::kernels::element::Element;
use crate::kernels::layer_norm::{layer_norm_forward as forward_kernel, Forward, Input};
use crate::kernels::simd;
use crate::kernels::stats::Norm;
use numpy::{PyArrayDyn, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// `y`, or `(y, mean, rstd)` with `stats`, for kernel-ready arguments: `x`,
/// `weight`, `bias` and `out` C-contiguous aligned arrays of one float dtype,
/// `normalized_shape` an int or a tuple/list of ints naming the trailing
/// dimensions, `eps` a finite float ≥ 0, `out` writeable and either `x`
/// itself or disjoint from the inputs. For anything else it returns None and
/// `lnrs.layer_norm` converts or reports in Python.
#[pyfunction]
#[pyo3(signature = (x, normalized_shape, weight, bias, eps, out, stats))]
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    normalized_shape: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    bias: &Bound<'py, PyAny>,
    eps: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
    stats: bool,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let args = Args {
        norm: Norm::Layer,
        normalized_shape,
        weight,
        bias,
        eps,
        out,
        stats,
        residual: None,
    };
    forward_any(py, x, args)
}

/// RMSNorm's `layer_norm_forward`: `y`, or `(y, rstd)` with `stats`.
#[pyfunction]
#[pyo3(signature = (x, normalized_shape, weight, eps, out, stats))]
pub fn rms_norm_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    normalized_shape: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    eps: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
    stats: bool,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let none = py.None().into_bound(py);
    let args = Args {
        norm: Norm::Rms,
        normalized_shape,
        weight,
        bias: &none,
        eps,
        out,
        stats,
        residual: None,
    };
    forward_any(py, x, args)
}

fn forward_any<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    args: Args<'_, 'py>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    with_float_array!(forward_typed, py, x, args)
}

/// `add_layer_norm` / `add_rms_norm` for kernel-ready arguments: `(y, s)` with
/// `s = x + residual` written to `sum_out` (new when None; may be `residual`
/// itself) and `y` the norm of `s`. None for anything else.
#[pyfunction]
#[pyo3(signature = (rms, x, residual, normalized_shape, weight, bias, eps, out, sum_out))]
#[allow(clippy::too_many_arguments)]
pub fn add_norm_forward<'py>(
    py: Python<'py>,
    rms: bool,
    x: &Bound<'py, PyAny>,
    residual: &Bound<'py, PyAny>,
    normalized_shape: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    bias: &Bound<'py, PyAny>,
    eps: &Bound<'py, PyAny>,
    out: &Bound<'py, PyAny>,
    sum_out: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let none = py.None().into_bound(py);
    let args = Args {
        norm: if rms { Norm::Rms } else { Norm::Layer },
        normalized_shape,
        weight,
        bias: if rms { &none } else { bias },
        eps,
        out,
        stats: false,
        residual: Some((residual, sum_out)),
    };
    forward_any(py, x, args)
}

struct Args<'a, 'py> {
    norm: Norm,
    normalized_shape: &'a Bound<'py, PyAny>,
    weight: &'a Bound<'py, PyAny>,
    bias: &'a Bound<'py, PyAny>,
    eps: &'a Bound<'py, PyAny>,
    out: &'a Bound<'py, PyAny>,
    stats: bool,
    /// The residual and where `x + residual` goes (None: a new array).
    residual: Option<(&'a Bound<'py, PyAny>, &'a Bound<'py, PyAny>)>,
}

/// An output: `given` when it is a writeable ready array of `shape`, else None;
/// a new array (kept in `fresh`) when `given` is None.
fn output<'a, 'py, T: numpy::Element>(
    py: Python<'py>,
    given: &'a Bound<'py, PyAny>,
    shape: &[usize],
    fresh: &'a mut Option<Bound<'py, PyAny>>,
) -> Option<Ready<'a, 'py, T>> {
    if given.is_none() {
        // SAFETY: every element is written by the kernel before Python sees it.
        let new = unsafe { PyArrayDyn::<T>::new(py, shape, false) };
        return Ready::<T>::take(fresh.insert(new.into_any()));
    }
    Ready::<T>::take(given).filter(|y| y.shape() == shape && y.writeable())
}

fn forward_typed<'py, T>(
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
    let Some(eps) = eps_value(args.eps) else {
        return Ok(None);
    };
    let (Ok(weight), Ok(bias)) = (
        ReadyParam::<T>::take(args.weight, &dims),
        ReadyParam::<T>::take(args.bias, &dims),
    ) else {
        return Ok(None);
    };
    let lead = &shape[..shape.len() - dims.len()];
    let (rows, cols) = (
        lead.iter().product::<usize>(),
        dims.iter().product::<usize>(),
    );
    let (mut fresh_y, mut fresh_s) = (None, None);
    let Some(y) = output::<T>(py, args.out, shape, &mut fresh_y) else {
        return Ok(None);
    };
    let (residual, sum) = match args.residual {
        None => (None, None),
        Some((r, s)) => {
            let Some(r) = Ready::<T>::take(r).filter(|r| r.shape() == shape) else {
                return Ok(None);
            };
            let Some(s) = output::<T>(py, s, shape, &mut fresh_s) else {
                return Ok(None);
            };
            (Some(r), Some(s))
        }
    };
    // In place: `out` is `x`, or `sum_out` is `residual`, exactly. Any other
    // overlap of an output with an input (weights included), or of the two
    // outputs, goes back to Python, which copies.
    let x_in_y = y.bytes() == x.bytes();
    let r_in_s = matches!((&residual, &sum), (Some(r), Some(s)) if r.bytes() == s.bytes());
    let params = [
        weight.as_ref().map(|w| w.bytes()),
        bias.as_ref().map(|b| b.bytes()),
    ];
    let y_bytes = y.bytes();
    let hits = |out: &std::ops::Range<usize>, inputs: &[Option<std::ops::Range<usize>>]| {
        inputs.iter().flatten().any(|r| overlaps(r, out))
    };
    let residual_bytes = residual.as_ref().map(|r| r.bytes());
    if hits(&y_bytes, &params)
        || (!x_in_y && overlaps(&x.bytes(), &y_bytes))
        || hits(&y_bytes, std::slice::from_ref(&residual_bytes))
    {
        return Ok(None);
    }
    if let Some(s) = &sum {
        let s_bytes = s.bytes();
        if hits(&s_bytes, &params)
            || overlaps(&x.bytes(), &s_bytes)
            || overlaps(&s_bytes, &y_bytes)
            || (!r_in_s && hits(&s_bytes, std::slice::from_ref(&residual_bytes)))
        {
            return Ok(None);
        }
    }
    let (mean, rstd) = if args.stats && args.norm == Norm::Rms {
        // SAFETY: filled by the kernel.
        (
            None,
            Some(unsafe { PyArrayDyn::<T::Stat>::new(py, lead, false) }),
        )
    } else if args.stats {
        // SAFETY: filled by the kernel.
        unsafe {
            (
                Some(PyArrayDyn::<T::Stat>::new(py, lead, false)),
                Some(PyArrayDyn::<T::Stat>::new(py, lead, false)),
            )
        }
    } else {
        (None, None)
    };
    let (mut mean_scratch, mut rstd_scratch) = (Vec::new(), Vec::new());
    // SAFETY: the outputs are writeable and overlap no input and each other
    // (checked above; in place, the kernel reads the output itself); `mean` and
    // `rstd` are new arrays.
    let (call, y_slice, sum_slice, mean_slice, rstd_slice) = unsafe {
        let call = Forward {
            norm: args.norm,
            x: if x_in_y {
                Input::InPlace
            } else {
                Input::Separate(x.slice())
            },
            residual: residual.as_ref().map(|r| {
                if r_in_s {
                    Input::InPlace
                } else {
                    Input::Separate(r.slice())
                }
            }),
            cols,
            weight: weight.as_ref().map(|w| w.param()),
            bias: bias.as_ref().map(|b| b.param()),
            eps,
        };
        (
            call,
            y.slice_mut(),
            sum.as_ref().map(|s| s.slice_mut()),
            stat_slice(mean.as_ref(), rows, &mut mean_scratch),
            stat_slice(rstd.as_ref(), rows, &mut rstd_scratch),
        )
    };
    let level = simd::active();
    maybe_detach(py, rows * cols, move || {
        forward_kernel(level, call, y_slice, sum_slice, mean_slice, rstd_slice)
    })
    .map_err(value_error)?;
    let y = y.array.clone().into_any();
    Ok(Some(match (args.norm, mean, rstd, sum) {
        (_, _, _, Some(s)) => PyTuple::new(py, [y, s.array.clone().into_any()])?.into_any(),
        (Norm::Layer, Some(m), Some(r), None) => {
            PyTuple::new(py, [y, m.into_any(), r.into_any()])?.into_any()
        }
        (Norm::Rms, _, Some(r), None) => PyTuple::new(py, [y, r.into_any()])?.into_any(),
        _ => y,
    }))
}

/// The elements of a new stats array, or of `scratch` when the caller wants none.
///
/// # Safety
/// `a`, when given, is a new C-contiguous array of `rows` elements no one else holds.
unsafe fn stat_slice<'s, S: numpy::Element + Element>(
    a: Option<&'s Bound<'_, PyArrayDyn<S>>>,
    rows: usize,
    scratch: &'s mut Vec<S>,
) -> &'s mut [S] {
    match a {
        Some(_) if rows == 0 => &mut [],
        // SAFETY: by the caller's promise.
        Some(a) => unsafe { std::slice::from_raw_parts_mut(a.data(), rows) },
        None => {
            scratch.resize(rows, S::ZERO);
            &mut scratch[..]
        }
    }
}
