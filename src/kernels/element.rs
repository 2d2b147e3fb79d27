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

/// A weight or bias: in the storage type, or in f32 beside a narrower one
/// (half-precision activations with float32 parameters).
#[derive(Clone, Copy)]
pub enum Param<'a, T> {
    Storage(&'a [T]),
    F32(&'a [f32]),
}

impl<'a, T: Element> Param<'a, T> {
    pub fn len(&self) -> usize {
        match self {
            Param::Storage(p) => p.len(),
            Param::F32(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f64, converted once per call.
    pub fn widen(self) -> std::borrow::Cow<'a, [f64]> {
        match self {
            Param::Storage(p) => widen(p),
            Param::F32(p) => widen(p),
        }
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

// The half types convert by plain integer and float arithmetic with selects,
// which LLVM vectorises; the `half` crate's conversions test the CPU's features
// on every call (20x slower inside the kernels), and its f64 conversions round
// twice, through f32.

/// f16 bits to f64, exactly: the bits moved into f64's fields, then 2^1008
/// moves f16's exponent bias (15) to f64's (1023); f16 subnormals arrive as
/// f64 subnormals, which the multiply scales exactly.
#[inline(always)]
fn f16_to_f64(h: u16) -> f64 {
    let h = h as u64;
    let magnitude = (h & 0x7fff) << 42;
    let scaled = f64::from_bits(magnitude) * f64::from_bits((1023 + 1008) << 52);
    let special = f64::from_bits(magnitude | 0x7ff0_0000_0000_0000); // inf, NaN
    let v = if h & 0x7c00 == 0x7c00 {
        special
    } else {
        scaled
    };
    f64::from_bits(v.to_bits() | ((h & 0x8000) << 48))
}

/// bf16 bits to f32, exactly.
#[inline(always)]
fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `v` rounded once, to nearest with ties to even, to a binary format with
/// `mant` stored mantissa bits and exponent bias `bias` (f16: 10, 15; bf16: 7,
/// 127), as its bits without the sign. Normal results drop the low bits of v's
/// rebiased f64 encoding (a carry rounds up into the exponent, and past the
/// largest finite value into infinity); subnormal results are |v| in units of
/// the smallest subnormal, rounded to an integer; NaN stays NaN.
#[inline(always)]
fn round_f64_to_narrow(v: f64, mant: u32, bias: u64, max_exp: u64) -> u64 {
    let drop = 52 - mant;
    let mag = v.to_bits() & 0x7fff_ffff_ffff_ffff;
    let rebiased = mag.wrapping_sub((1023 - bias) << 52);
    let odd = (rebiased >> drop) & 1;
    let normal = rebiased.wrapping_add((1u64 << (drop - 1)) - 1 + odd) >> drop;
    // |v| in units of the smallest subnormal, 2^(1 - bias - mant): a multiply
    // by a power of two, exact.
    // Adding 2^52 rounds that to an integer (ties to even) and leaves it in the
    // low mantissa bits: no float-to-integer conversion, which does not vectorise.
    let per_unit = f64::from_bits((1023 + bias + mant as u64 - 1) << 52);
    let two52 = 4_503_599_627_370_496.0f64;
    let subnormal = (v.abs() * per_unit + two52).to_bits() - two52.to_bits();
    let infinity = max_exp << mant;
    let nan = infinity | (1 << (mant - 1));
    if v.is_nan() {
        nan
    } else if mag >= (1023 - bias + max_exp) << 52 {
        infinity
    } else if mag < (1023 + 1 - bias) << 52 {
        subnormal
    } else {
        normal
    }
}

impl Element for half::f16 {
    const WIDE: bool = true;
    const ZERO: Self = half::f16::ZERO;
    type Stat = f32;

    #[inline(always)]
    fn to_f64(self) -> f64 {
        f16_to_f64(self.to_bits())
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        let sign = ((v.to_bits() >> 48) & 0x8000) as u16;
        half::f16::from_bits(round_f64_to_narrow(v, 10, 15, 31) as u16 | sign)
    }
    fn as_f64_slice(_: &[Self]) -> Option<&[f64]> {
        None
    }
}

impl Element for half::bf16 {
    const WIDE: bool = true;
    const ZERO: Self = half::bf16::ZERO;
    type Stat = f32;

    #[inline(always)]
    fn to_f64(self) -> f64 {
        bf16_to_f32(self.to_bits()) as f64
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        let sign = ((v.to_bits() >> 48) & 0x8000) as u16;
        half::bf16::from_bits(round_f64_to_narrow(v, 7, 127, 255) as u16 | sign)
    }
    fn as_f64_slice(_: &[Self]) -> Option<&[f64]> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn half_types_round_once_from_f64() {
        // 1 + 2^-11 + 2^-40 is just above the f16 halfway point between 1 and
        // 1 + 2^-10: correct rounding goes up, rounding through f32 first
        // (which drops 2^-40) would tie to even and go down.
        let v = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
        assert_eq!(
            <f16 as Element>::from_f64(v),
            f16::from_f64(1.0 + 2f64.powi(-10))
        );
        let v = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
        assert_eq!(
            <bf16 as Element>::from_f64(v),
            bf16::from_f64(1.0 + 2f64.powi(-7))
        );
        assert_eq!(<f16 as Element>::to_f64(f16::from_f32(0.5)), 0.5);
    }

    #[test]
    fn half_bits_convert_exactly() {
        for bits in 0..=u16::MAX {
            let (a, b) = (f16::from_bits(bits), bf16::from_bits(bits));
            let (fa, fb) = (f16_to_f64(bits), bf16_to_f32(bits));
            assert!(
                fa.to_bits() == a.to_f64().to_bits() || (fa.is_nan() && a.is_nan()),
                "{bits:#x}"
            );
            assert!(
                fb.to_bits() == b.to_f32().to_bits() || (fb.is_nan() && b.is_nan()),
                "{bits:#x}"
            );
            // Round trips through f64.
            let (ra, rb) = (
                <f16 as Element>::from_f64(fa),
                <bf16 as Element>::from_f64(fb as f64),
            );
            assert!(
                ra.to_bits() == bits || (a.is_nan() && ra.is_nan()),
                "{bits:#x}"
            );
            assert!(
                rb.to_bits() == bits || (b.is_nan() && rb.is_nan()),
                "{bits:#x}"
            );
        }
        // f32 values go to f64 exactly, so rounding them once is what the
        // library's (correct) f32 conversions give.
        let mut s = 0x1234_5678u32;
        for _ in 0..2_000_000 {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let v = f32::from_bits(s);
            let (got16, got_b) = (
                <f16 as Element>::from_f64(v as f64),
                <bf16 as Element>::from_f64(v as f64),
            );
            let (want16, want_b) = (f16::from_f32(v), bf16::from_f32(v));
            assert!(got16 == want16 || (v.is_nan() && got16.is_nan()), "{v:e}");
            assert!(got_b == want_b || (v.is_nan() && got_b.is_nan()), "{v:e}");
        }
    }

    #[test]
    fn half_types_round_correctly_everywhere() {
        // Every f16 and every bf16 value, and the points between neighbours
        // (ties go to even), a hair either side of them, and beyond the range.
        for bits in 0..=u16::MAX {
            let a = f16::from_bits(bits);
            let b = f16::from_bits(bits.wrapping_add(1));
            if !(a.is_finite() && b.is_finite()) || a.to_f64() >= b.to_f64() {
                continue;
            }
            let (lo, hi) = (a.to_f64(), b.to_f64());
            let mid = (lo + hi) / 2.0;
            let even = if bits % 2 == 0 { a } else { b };
            assert_eq!(<f16 as Element>::from_f64(lo), a);
            assert_eq!(
                <f16 as Element>::from_f64(mid).to_bits(),
                even.to_bits(),
                "{mid}"
            );
            let up = mid + (hi - lo) * 1e-9;
            let down = mid - (hi - lo) * 1e-9;
            assert_eq!(
                <f16 as Element>::from_f64(up).to_bits(),
                b.to_bits(),
                "{up}"
            );
            assert_eq!(
                <f16 as Element>::from_f64(down).to_bits(),
                a.to_bits(),
                "{down}"
            );
        }
        for bits in 0..=u16::MAX {
            let a = bf16::from_bits(bits);
            let b = bf16::from_bits(bits.wrapping_add(1));
            if !(a.is_finite() && b.is_finite()) || a.to_f64() >= b.to_f64() {
                continue;
            }
            let (lo, hi) = (a.to_f64(), b.to_f64());
            let up = (lo + hi) / 2.0 + (hi - lo) * 1e-9;
            assert_eq!(
                <bf16 as Element>::from_f64(up).to_bits(),
                b.to_bits(),
                "{up}"
            );
        }
        assert!(<f16 as Element>::from_f64(1e6).is_infinite());
        assert_eq!(<f16 as Element>::from_f64(1e-10).to_bits(), 0);
        assert!(<f16 as Element>::from_f64(f64::NAN).is_nan());
    }
}
