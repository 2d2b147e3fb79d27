//! Storage types the kernels accept, and how each widens to the f64 the
//! statistics are accumulated in.

/// A floating-point storage type for activations, gradients and affine parameters.
pub trait Element: Copy + Send + Sync + PartialEq + std::fmt::Debug + 'static {
    /// True when f64 is wider than the storage type. Then a difference of two
    /// stored values is exact in f64 and a square cannot overflow or underflow,
    /// so plain f64 lane sums are exact enough. False for f64 itself, which
    /// needs compensated sums and range scaling.
    const WIDE: bool;
    const ZERO: Self;
    /// The type `mean` and `rstd` are returned in: f32 for f32 and narrower, f64 for f64.
    type Stat: Element;

    fn to_f64(self) -> f64;
    /// Round to nearest, ties to even.
    fn from_f64(v: f64) -> Self;

    /// The slice itself when the storage type is f64.
    fn as_f64_slice(s: &[Self]) -> Option<&[f64]>;
}

/// `s` as f64: borrowed when it already is, else converted once.
pub fn widen<T: Element>(s: &[T]) -> std::borrow::Cow<'_, [f64]> {
    match T::as_f64_slice(s) {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(s.iter().map(|v| v.to_f64()).collect()),
    }
}

impl Element for f32 {
    const WIDE: bool = true;
    const ZERO: Self = 0.0;
    type Stat = f32;

    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn as_f64_slice(_: &[Self]) -> Option<&[f64]> {
        None
    }
}

impl Element for f64 {
    const WIDE: bool = false;
    const ZERO: Self = 0.0;
    type Stat = f64;

    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    fn as_f64_slice(s: &[Self]) -> Option<&[f64]> {
        Some(s)
    }
}
