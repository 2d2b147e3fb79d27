//! Taking NumPy arrays without copies or borrow bookkeeping: the fast path
//! accepts an array only when it is already what a kernel reads (the exact
//! dtype in native byte order, C-contiguous, aligned) and checks overlaps
//! itself; anything else goes back to the Python layer to be converted or
//! reported.

use crate::kernels::element::{Element, Param};
use numpy::npyffi::NPY_ARRAY_WRITEABLE;
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt, PyList, PyTuple};

/// A kernel-ready array of `T`: its base address and element count.
pub struct Ready<'a, 'py, T: numpy::Element> {
    pub array: &'a Bound<'py, PyArrayDyn<T>>,
    pub len: usize,
}

impl<'a, 'py, T: numpy::Element> Ready<'a, 'py, T> {
    /// `obj` when it is a C-contiguous, aligned array of exactly `T`.
    pub fn take(obj: &'a Bound<'py, PyAny>) -> Option<Self> {
        let array = obj.cast::<PyArrayDyn<T>>().ok()?;
        if !(array.is_c_contiguous() && array.is_aligned()) {
            return None;
        }
        Some(Ready {
            array,
            len: array.len(),
        })
    }

    pub fn shape(&self) -> &[usize] {
        self.array.shape()
    }

    pub fn writeable(&self) -> bool {
        // SAFETY: reading the flags of a live array.
        unsafe { (*self.array.as_array_ptr()).fields.flags & NPY_ARRAY_WRITEABLE != 0 }
    }

    /// The byte range the elements occupy.
    pub fn bytes(&self) -> std::ops::Range<usize> {
        let start = self.array.data() as usize;
        start..start + self.len * std::mem::size_of::<T>()
    }

    /// The elements as a slice.
    ///
    /// # Safety
    /// No `&mut` to these elements may exist while the slice lives: callers
    /// check every output against every input with [`overlaps`].
    pub unsafe fn slice(&self) -> &'a [T] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: a C-contiguous aligned array of `len` elements of `T`.
        unsafe { std::slice::from_raw_parts(self.array.data(), self.len) }
    }

    /// The elements as a mutable slice.
    ///
    /// # Safety
    /// The array must be writeable and no other slice of it may be alive.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self) -> &'a mut [T] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: as `slice`, and exclusive by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.array.data(), self.len) }
    }
}

/// Whether two byte ranges share a byte.
pub fn overlaps(a: &std::ops::Range<usize>, b: &std::ops::Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// `normalized_shape` when it is an int or a tuple/list of ints; None otherwise.
pub fn dims(shape: &Bound<'_, PyAny>) -> Option<Vec<usize>> {
    if let Ok(n) = shape.cast_exact::<PyInt>() {
        return n.extract::<usize>().ok().map(|n| vec![n]);
    }
    let items: Vec<Bound<'_, PyAny>> = if let Ok(t) = shape.cast::<PyTuple>() {
        t.iter().collect()
    } else if let Ok(l) = shape.cast::<PyList>() {
        l.iter().collect()
    } else {
        return None;
    };
    items
        .iter()
        .map(|d| d.cast_exact::<PyInt>().ok()?.extract::<usize>().ok())
        .collect()
}

/// `normalized_shape` when it names the trailing dimensions of `shape` (at
/// least one); None otherwise.
pub fn trailing_dims(shape: &[usize], normalized_shape: &Bound<'_, PyAny>) -> Option<Vec<usize>> {
    let dims = dims(normalized_shape)?;
    let ok = !dims.is_empty()
        && dims.len() <= shape.len()
        && shape[shape.len() - dims.len()..] == dims[..];
    ok.then_some(dims)
}

/// `eps` when it is a finite float ≥ 0.
pub fn eps(eps: &Bound<'_, PyAny>) -> Option<f64> {
    let v = eps.cast_exact::<PyFloat>().ok()?.value();
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// A weight or bias the kernels can take as it is: in the storage type, or in f32.
pub enum ReadyParam<'a, 'py, T: numpy::Element> {
    Storage(Ready<'a, 'py, T>),
    F32(Ready<'a, 'py, f32>),
}

impl<'a, 'py, T: numpy::Element + Element> ReadyParam<'a, 'py, T> {
    /// None for `None`; `Err(())` when present but not ready or not of `dims`.
    #[allow(clippy::result_unit_err)]
    pub fn take(p: &'a Bound<'py, PyAny>, dims: &[usize]) -> Result<Option<Self>, ()> {
        if p.is_none() {
            return Ok(None);
        }
        if let Some(r) = Ready::<T>::take(p).filter(|r| r.shape() == dims) {
            return Ok(Some(ReadyParam::Storage(r)));
        }
        match Ready::<f32>::take(p).filter(|r| r.shape() == dims) {
            Some(r) => Ok(Some(ReadyParam::F32(r))),
            None => Err(()),
        }
    }

    pub fn bytes(&self) -> std::ops::Range<usize> {
        match self {
            ReadyParam::Storage(r) => r.bytes(),
            ReadyParam::F32(r) => r.bytes(),
        }
    }

    /// # Safety
    /// As [`Ready::slice`].
    pub unsafe fn param(&self) -> Param<'a, T> {
        // SAFETY: by the caller's promise.
        unsafe {
            match self {
                ReadyParam::Storage(r) => Param::Storage(r.slice()),
                ReadyParam::F32(r) => Param::F32(r.slice()),
            }
        }
    }
}

/// Whether `x` is a NumPy array of the `bfloat16` dtype (registered by
/// ml_dtypes). Asked before taking one as `half::bf16`, whose dtype lookup
/// would fail where no package provides it.
pub fn is_bfloat16(x: &Bound<'_, PyAny>) -> bool {
    x.getattr("dtype")
        .and_then(|d| d.getattr("name"))
        .and_then(|n| n.extract::<String>())
        .is_ok_and(|n| n == "bfloat16")
}

/// Call `$f(py, x, args)` with `x` taken as the float array type it is, or
/// evaluate to `Ok(None)` for anything else.
macro_rules! with_float_array {
    ($f:ident, $py:expr, $x:expr, $args:expr) => {
        if let Some(x) = $crate::python::arrays::Ready::<f32>::take($x) {
            $f($py, x, $args)
        } else if let Some(x) = $crate::python::arrays::Ready::<f64>::take($x) {
            $f($py, x, $args)
        } else if let Some(x) = $crate::python::arrays::Ready::<half::f16>::take($x) {
            $f($py, x, $args)
        } else if $crate::python::arrays::is_bfloat16($x) {
            match $crate::python::arrays::Ready::<half::bf16>::take($x) {
                Some(x) => $f($py, x, $args),
                None => Ok(None),
            }
        } else {
            Ok(None)
        }
    };
}
pub(crate) use with_float_array;
