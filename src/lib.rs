//! lnrs: layer normalisation kernels (`kernels`, `parallel`: pure Rust, no
//! Python) and, with the `python` feature that maturin turns on, the binding
//! `lnrs._lnrs` in `python`: take the arrays, release the GIL, call a kernel,
//! turn errors into exceptions. Argument conversion and error messages live in
//! the Python layer (`python/lnrs`).

pub mod kernels;
pub mod parallel;

#[cfg(feature = "python")]
mod python;
