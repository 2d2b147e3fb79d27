//! Pure-Rust kernels: no Python here. Slices in, slices out, errors as values.

// Lane loops index several fixed-size arrays by one counter on purpose: that is
// the shape LLVM turns into vector instructions.
#![allow(clippy::needless_range_loop)]

pub mod element;
pub mod f16c;
pub mod layer_norm;
pub mod layer_norm_backward;
pub mod simd;
pub mod stats;
pub mod stream;
pub mod triad;

use std::fmt;

/// Deterministic test rows (no test dependencies): uniform in
/// `offset ± 1.5`, from a 64-bit LCG seeded by `seed`.
#[cfg(test)]
pub(crate) fn test_data(len: usize, seed: u64, offset: f64) -> Vec<f64> {
    let step = |s: u64| {
        s.wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
    };
    let mut s = step(seed);
    (0..len)
        .map(|_| {
            s = step(s);
            offset + ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 3.0
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
pub enum KernelError {
    /// A buffer whose length does not fit the shape of the call.
    Length {
        name: &'static str,
        expected: usize,
        got: usize,
    },
    BadEps(f64),
    /// An input or output the other arguments call for is missing.
    Missing(&'static str),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Length {
                name,
                expected,
                got,
            } => {
                write!(f, "{name} must hold {expected} elements, got {got}")
            }
            KernelError::BadEps(eps) => write!(f, "eps must be a number >= 0, got {eps}"),
            KernelError::Missing(name) => write!(f, "{name} is missing"),
        }
    }
}

impl std::error::Error for KernelError {}
