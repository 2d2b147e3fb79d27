//! `lnrs._lnrs`, the native module.

mod arrays;
mod backward;
mod config;
mod forward;
mod triad;

use crate::kernels::KernelError;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Below this many elements the GIL is kept: releasing and re-taking it costs
/// about as much as normalising a few thousand floats.
const DETACH_MIN_ELEMENTS: usize = 4096;

fn value_error(e: KernelError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Run `f` without the GIL when the work is worth the hand-off.
fn maybe_detach<R: Send>(py: Python<'_>, elements: usize, f: impl FnOnce() -> R + Send) -> R {
    if elements >= DETACH_MIN_ELEMENTS {
        py.detach(f)
    } else {
        f()
    }
}

#[pymodule]
fn _lnrs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(forward::layer_norm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(forward::rms_norm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(forward::add_norm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(backward::norm_backward, m)?)?;
    m.add_function(wrap_pyfunction!(triad::triad, m)?)?;
    m.add_function(wrap_pyfunction!(config::set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(config::get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(config::simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(config::set_simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(config::supported_simd_levels, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
