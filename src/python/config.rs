//! Threads and SIMD level.

use crate::kernels::simd::{self, Level};
use crate::parallel;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

#[pyfunction]
pub fn set_num_threads(n: usize) -> PyResult<()> {
    parallel::set_num_threads(n).map_err(PyValueError::new_err)
}

#[pyfunction]
pub fn get_num_threads() -> usize {
    parallel::num_threads()
}

/// The SIMD level kernels run at.
#[pyfunction]
pub fn simd_level() -> &'static str {
    simd::active().name()
}

#[pyfunction]
pub fn set_simd_level(name: &str) -> PyResult<()> {
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
pub fn supported_simd_levels() -> Vec<&'static str> {
    simd::supported_levels().iter().map(|l| l.name()).collect()
}
