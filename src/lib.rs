//! lnrs: layer normalisation kernels in `kernels` and `parallel`, and (with the
//! `python` feature, as maturin builds it) the thin `lnrs._lnrs` binding below:
//! borrow the arrays, release the GIL, call a kernel, turn errors into exceptions.
//! Arguments are checked and arrays shaped in the Python layer (`python/lnrs`).

pub mod kernels;
pub mod parallel;

#[cfg(feature = "python")]
mod bindings {
    use crate::kernels::element::Element;
    use crate::kernels::layer_norm::{layer_norm_forward as forward_kernel, Forward, Input};
    use crate::kernels::layer_norm_backward::{layer_norm_backward as backward_kernel, Backward};
    use crate::kernels::simd::{self, Level};
    use crate::kernels::triad::triad as triad_kernel;
    use crate::kernels::KernelError;
    use crate::parallel;
    use numpy::{
        PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray1, PyReadwriteArray2,
        PyUntypedArrayMethods,
    };
    use pyo3::exceptions::{PyTypeError, PyValueError};
    use pyo3::prelude::*;

    /// Below this many elements the GIL is kept: releasing and re-taking it costs
    /// about as much as normalising a few thousand floats.
    const DETACH_MIN_ELEMENTS: usize = 4096;

    fn value_error(e: KernelError) -> PyErr {
        PyValueError::new_err(e.to_string())
    }

    fn slice<'a, T: numpy::Element>(
        a: &'a PyReadonlyArray1<'_, T>,
        name: &str,
    ) -> PyResult<&'a [T]> {
        a.as_slice()
            .map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous")))
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_typed<'py, T>(
        py: Python<'py>,
        x: Option<&Bound<'py, PyAny>>,
        mut y: PyReadwriteArray2<'py, T>,
        weight: Option<&Bound<'py, PyAny>>,
        bias: Option<&Bound<'py, PyAny>>,
        eps: f64,
        mean: Option<&Bound<'py, PyAny>>,
        rstd: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<()>
    where
        T: Element + numpy::Element,
        T::Stat: numpy::Element,
    {
        let (rows, cols) = (y.shape()[0], y.shape()[1]);
        let x: Option<PyReadonlyArray2<'py, T>> = x.map(|x| x.extract()).transpose()?;
        let w: Option<PyReadonlyArray1<'py, T>> = weight.map(|w| w.extract()).transpose()?;
        let b: Option<PyReadonlyArray1<'py, T>> = bias.map(|b| b.extract()).transpose()?;
        let mut m: Option<PyReadwriteArray1<'py, T::Stat>> =
            mean.map(|a| a.extract()).transpose()?;
        let mut r: Option<PyReadwriteArray1<'py, T::Stat>> =
            rstd.map(|a| a.extract()).transpose()?;
        let contiguous = |name: &str| PyValueError::new_err(format!("{name} must be C-contiguous"));
        let input = match &x {
            Some(x) => Input::Separate(x.as_slice().map_err(|_| contiguous("x"))?),
            None => Input::InPlace,
        };
        let weight = w.as_ref().map(|w| slice(w, "weight")).transpose()?;
        let bias = b.as_ref().map(|b| slice(b, "bias")).transpose()?;
        let y = y.as_slice_mut().map_err(|_| contiguous("out"))?;
        let (mut m_scratch, mut r_scratch) = (Vec::new(), Vec::new());
        let mean = match m.as_mut() {
            Some(m) => m.as_slice_mut().map_err(|_| contiguous("mean"))?,
            None => {
                m_scratch.resize(rows, T::Stat::ZERO);
                &mut m_scratch[..]
            }
        };
        let rstd = match r.as_mut() {
            Some(r) => r.as_slice_mut().map_err(|_| contiguous("rstd"))?,
            None => {
                r_scratch.resize(rows, T::Stat::ZERO);
                &mut r_scratch[..]
            }
        };
        let args = Forward {
            x: input,
            cols,
            weight,
            bias,
            eps,
        };
        let level = simd::active();
        let mut run = move || forward_kernel(level, args, y, mean, rstd);
        let result = if rows * cols >= DETACH_MIN_ELEMENTS {
            py.detach(run)
        } else {
            run()
        };
        result.map_err(value_error)
    }

    /// Normalise `x` (2-D, C-contiguous) into `out`, or `out` in place when `x` is
    /// None; fill `mean`/`rstd` (1-D, one per row) when given.
    #[pyfunction]
    #[pyo3(signature = (x, out, weight, bias, eps, mean=None, rstd=None))]
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_forward<'py>(
        py: Python<'py>,
        x: Option<&Bound<'py, PyAny>>,
        out: &Bound<'py, PyAny>,
        weight: Option<&Bound<'py, PyAny>>,
        bias: Option<&Bound<'py, PyAny>>,
        eps: f64,
        mean: Option<&Bound<'py, PyAny>>,
        rstd: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        if let Ok(y) = out.extract::<PyReadwriteArray2<'py, f32>>() {
            forward_typed(py, x, y, weight, bias, eps, mean, rstd)
        } else if let Ok(y) = out.extract::<PyReadwriteArray2<'py, f64>>() {
            forward_typed(py, x, y, weight, bias, eps, mean, rstd)
        } else {
            Err(PyTypeError::new_err(
                "out must be a writeable 2-D float32 or float64 array",
            ))
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_typed<'py, T>(
        py: Python<'py>,
        dy: &Bound<'py, PyAny>,
        x: PyReadonlyArray2<'py, T>,
        mean: &Bound<'py, PyAny>,
        rstd: &Bound<'py, PyAny>,
        weight: Option<&Bound<'py, PyAny>>,
        dx: &Bound<'py, PyAny>,
        dweight: &Bound<'py, PyAny>,
        dbias: &Bound<'py, PyAny>,
    ) -> PyResult<()>
    where
        T: Element + numpy::Element,
        T::Stat: numpy::Element,
    {
        let contiguous = |name: &str| PyValueError::new_err(format!("{name} must be C-contiguous"));
        let cols = x.shape()[1];
        let dy: PyReadonlyArray2<'py, T> = dy.extract()?;
        let mean: PyReadonlyArray1<'py, T::Stat> = mean.extract()?;
        let rstd: PyReadonlyArray1<'py, T::Stat> = rstd.extract()?;
        let w: Option<PyReadonlyArray1<'py, T>> = weight.map(|w| w.extract()).transpose()?;
        let mut dx: PyReadwriteArray2<'py, T> = dx.extract()?;
        let mut dw: PyReadwriteArray1<'py, T> = dweight.extract()?;
        let mut db: PyReadwriteArray1<'py, T> = dbias.extract()?;
        let args = Backward {
            dy: dy.as_slice().map_err(|_| contiguous("dy"))?,
            x: x.as_slice().map_err(|_| contiguous("x"))?,
            mean: slice(&mean, "mean")?,
            rstd: slice(&rstd, "rstd")?,
            cols,
            weight: w.as_ref().map(|w| slice(w, "weight")).transpose()?,
        };
        let dx = dx.as_slice_mut().map_err(|_| contiguous("dx"))?;
        let dw = dw.as_slice_mut().map_err(|_| contiguous("dweight"))?;
        let db = db.as_slice_mut().map_err(|_| contiguous("dbias"))?;
        let level = simd::active();
        let elements = args.x.len();
        let mut run = move || backward_kernel(level, args, dx, dw, db);
        let result = if elements >= DETACH_MIN_ELEMENTS {
            py.detach(run)
        } else {
            run()
        };
        result.map_err(value_error)
    }

    /// Fill `dx` (2-D like `x`), `dweight` and `dbias` (1-D, one per column) from
    /// `dy`, `x` and the forward pass's `mean`/`rstd`.
    #[pyfunction]
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_backward<'py>(
        py: Python<'py>,
        dy: &Bound<'py, PyAny>,
        x: &Bound<'py, PyAny>,
        mean: &Bound<'py, PyAny>,
        rstd: &Bound<'py, PyAny>,
        weight: Option<&Bound<'py, PyAny>>,
        dx: &Bound<'py, PyAny>,
        dweight: &Bound<'py, PyAny>,
        dbias: &Bound<'py, PyAny>,
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
    fn triad<'py>(
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

    #[pyfunction]
    fn set_num_threads(n: usize) -> PyResult<()> {
        parallel::set_num_threads(n).map_err(PyValueError::new_err)
    }

    #[pyfunction]
    fn get_num_threads() -> usize {
        parallel::num_threads()
    }

    /// The SIMD level kernels run at.
    #[pyfunction]
    fn simd_level() -> &'static str {
        simd::active().name()
    }

    #[pyfunction]
    fn set_simd_level(name: &str) -> PyResult<()> {
        let level = Level::from_name(name).ok_or_else(|| {
            let names: Vec<_> = Level::ALL.iter().map(|l| l.name()).collect();
            PyValueError::new_err(format!(
                "unknown SIMD level {name:?}; expected one of {}",
                names.join(", ")
            ))
        })?;
        simd::set_active(level).map_err(PyValueError::new_err)
    }

    #[pyfunction]
    fn supported_simd_levels() -> Vec<&'static str> {
        simd::supported_levels().iter().map(|l| l.name()).collect()
    }

    #[pymodule]
    fn _lnrs(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_function(wrap_pyfunction!(layer_norm_forward, m)?)?;
        m.add_function(wrap_pyfunction!(layer_norm_backward, m)?)?;
        m.add_function(wrap_pyfunction!(triad, m)?)?;
        m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
        m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
        m.add_function(wrap_pyfunction!(simd_level, m)?)?;
        m.add_function(wrap_pyfunction!(set_simd_level, m)?)?;
        m.add_function(wrap_pyfunction!(supported_simd_levels, m)?)?;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }
}
