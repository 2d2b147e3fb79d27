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

/// `v` rounded to f32 by round-to-odd: truncated, with the last bit set when
/// anything was cut off. Rounding that again to a type at least two bits
/// narrower (f16, bf16) to nearest gives the correctly rounded result, which
/// rounding through f32 to nearest would not (it can round twice the same way).
#[inline(always)]
fn f32_round_to_odd(v: f64) -> f32 {
    let r = v as f32;
    let back = r as f64;
    let inexact = back != v && v.is_finite();
    let toward_zero = (inexact && back.abs() > v.abs()) as u32;
    f32::from_bits((r.to_bits() - toward_zero) | inexact as u32)
}

// The half types convert by plain bit arithmetic with selects, which LLVM
// vectorises; the `half` crate's conversions test the CPU's features on every
// call and were 20x slower inside the kernels.

/// f16 bits to f32, exactly (subnormals by a power-of-two multiply).
#[inline(always)]
fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let magnitude = (h & 0x7fff) << 13;
    // 2^112 moves f16's exponent bias (15) to f32's (127).
    let scaled = f32::from_bits(magnitude) * f32::from_bits(0x7780_0000);
    let special = f32::from_bits(magnitude | 0x7f80_0000); // inf, NaN
    let v = if h & 0x7c00 == 0x7c00 {
        special
    } else {
        scaled
    };
    f32::from_bits(v.to_bits() | ((h & 0x8000) << 16))
}

/// f32 to f16 bits, rounded to nearest, ties to even.
#[inline(always)]
fn f32_to_f16(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = (bits >> 16) & 0x8000;
    let x = bits & 0x7fff_ffff;
    // Normal results: rebias, round to nearest even on the 13 dropped bits.
    let odd = (x >> 13) & 1;
    let normal = (x.wrapping_add(0xc800_0fff).wrapping_add(odd)) >> 13;
    // Subnormal results: let an f32 addition do the rounding (f16's smallest
    // subnormal is 2^-24, so adding 0.5 aligns the bits to keep).
    let sub = (f32::from_bits(x) + 0.5)
        .to_bits()
        .wrapping_sub(0x3f00_0000);
    let out = if x >= 0x4780_0000 {
        // |v| ≥ 65536 (rounds to inf past 65520, done below) or inf/NaN.
        if x > 0x7f80_0000 {
            0x7e00
        } else {
            0x7c00
        }
    } else if x < 0x3880_0000 {
        sub
    } else {
        normal
    };
    (out | sign) as u16
}

/// bf16 bits to f32, exactly.
#[inline(always)]
fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 to bf16 bits, rounded to nearest, ties to even; NaN stays NaN.
#[inline(always)]
fn f32_to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    if v.is_nan() {
        ((bits >> 16) | 0x40) as u16
    } else {
        rounded as u16
    }
}

impl Element for half::f16 {
    const WIDE: bool = true;
    const ZERO: Self = half::f16::ZERO;
    type Stat = f32;

    #[inline(always)]
    fn to_f64(self) -> f64 {
        f16_to_f32(self.to_bits()) as f64
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        half::f16::from_bits(f32_to_f16(f32_round_to_odd(v)))
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
        half::bf16::from_bits(f32_to_bf16(f32_round_to_odd(v)))
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
            let (fa, fb) = (f16_to_f32(bits), bf16_to_f32(bits));
            assert!(
                fa.to_bits() == a.to_f32().to_bits() || (fa.is_nan() && a.is_nan()),
                "{bits:#x}"
            );
            assert!(
                fb.to_bits() == b.to_f32().to_bits() || (fb.is_nan() && b.is_nan()),
                "{bits:#x}"
            );
            // Round trips, and every f32 the library rounds agrees with ours.
            if !a.is_nan() {
                assert_eq!(f32_to_f16(fa), bits, "{bits:#x}");
            }
            if !b.is_nan() {
                assert_eq!(f32_to_bf16(fb), bits, "{bits:#x}");
            }
        }
        let mut s = 0x1234_5678u32;
        for _ in 0..2_000_000 {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let v = f32::from_bits(s);
            let (want16, want_b) = (f16::from_f32(v), bf16::from_f32(v));
            let (got16, got_b) = (f32_to_f16(v), f32_to_bf16(v));
            assert!(
                got16 == want16.to_bits() || (v.is_nan() && f16::from_bits(got16).is_nan()),
                "{v:e}"
            );
            assert!(
                got_b == want_b.to_bits() || (v.is_nan() && bf16::from_bits(got_b).is_nan()),
                "{v:e}"
            );
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
