//! Storage types the kernels accept, and how each widens to the f64 the
//! statistics are accumulated in.

use super::stats::LANES;

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

    /// Whether `from_f64_chunk` is faster than `from_f64` element by element.
    const CHUNKED: bool = false;

    /// A chunk rounded as `from_f64` rounds each element; a type may do the
    /// common case faster (and say so by `CHUNKED`).
    #[inline(always)]
    fn from_f64_chunk(t: &[f64; LANES]) -> [Self; LANES] {
        let mut out = [Self::ZERO; LANES];
        for j in 0..LANES {
            out[j] = Self::from_f64(t[j]);
        }
        out
    }

    /// The slice itself when the storage type is f16 (for `f16c`).
    fn as_f16_slice(_: &[Self]) -> Option<&[half::f16]> {
        None
    }
    fn as_f16_slice_mut(_: &mut [Self]) -> Option<&mut [half::f16]> {
        None
    }
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

/// f16 bits to f32, exactly: the bits moved into f32's fields, then 2^112
/// moves f16's exponent bias (15) to f32's (127); f16 subnormals arrive as
/// f32 subnormals, which the multiply scales exactly.
#[inline(always)]
fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let magnitude = (h & 0x7fff) << 13;
    let scaled = f32::from_bits(magnitude) * f32::from_bits((127 + 112) << 23);
    let special = f32::from_bits(magnitude | 0x7f80_0000); // inf, NaN
    let v = if h & 0x7c00 == 0x7c00 {
        special
    } else {
        scaled
    };
    f32::from_bits(v.to_bits() | ((h & 0x8000) << 16))
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

/// `v` rounded to f32 by round-to-odd where f32 is normal: toward zero, with
/// the last kept bit set when anything was dropped. Rounding that once more,
/// to nearest, to a format with at least two fewer mantissa bits gives the
/// same as rounding `v` there directly (f16 keeps 11 of f32's 24 bits): a value
/// off that format's midpoints never lands on one, since those have an even
/// last f32 bit. Done on v's bits, which makes the cast exact: any of the 29
/// bits f32 drops set carries `low + LOW` into bit 29. Past f32's range the
/// cast overflows to infinity; below its normal range (|v| < 2^-126) it rounds
/// again, which is harmless for f16, where all of that rounds to zero.
#[inline(always)]
fn round_to_odd_f32(v: f64) -> f32 {
    const LOW: u64 = (1 << 29) - 1;
    let bits = v.to_bits();
    f64::from_bits((bits | ((bits & LOW) + LOW)) & !LOW) as f32
}

/// `f` rounded to nearest (ties to even) to f16, as bits. The float unit
/// rounds: `a + big` rounds `a = |f|` to a multiple of big's ulp, and
/// subtracting `big` again is exact; `big` is a's power of two times 2^13, so
/// its ulp is f16's spacing at `a`, and below f16's smallest normal (2^-14)
/// the spacing stays that of the subnormals. `a` is first clamped to 2^16
/// (infinity too), so whatever rounds past 65504 lands on 2^16. Times 2^-112,
/// the rounded value is f16's encoding laid in f32's fields: the exponent bias
/// moves from 127 to 15, f16 subnormals become f32 subnormals exactly (the
/// inverse of `f16_to_f32`), 2^16 becomes infinity. The clamps work on the
/// bits (integer min/max order non-negative floats as floats), which keeps
/// the dependency chain short; NaN is decided apart. The sign is f's, which
/// the cast from f64 kept: Rust leaves a cast NaN's sign open, but the
/// conversion instructions of every level (x86 cvtsd2ss/vcvtpd2ps, Arm fcvt)
/// keep it, and a constant folded at compile time never reaches a kernel.
/// Taking the sign from the f64 instead costs 6% of a float16 forward pass.
#[inline(always)]
fn f32_to_f16(f: f32) -> u16 {
    let bits = f.to_bits();
    let a = (bits & 0x7fff_ffff).min((127 + 16) << 23);
    let big = (a & 0x7f80_0000).max((127 - 14) << 23) + (13 << 23);
    let (a, big) = (f32::from_bits(a), f32::from_bits(big));
    let r = (a + big) - big;
    let magnitude = if f.is_nan() {
        0x7e00
    } else {
        (r * f32::from_bits((127 - 112) << 23)).to_bits() >> 13
    };
    (magnitude | ((bits >> 16) & 0x8000)) as u16
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
        half::f16::from_bits(f32_to_f16(round_to_odd_f32(v)))
    }
    fn as_f64_slice(_: &[Self]) -> Option<&[f64]> {
        None
    }
    fn as_f16_slice(s: &[Self]) -> Option<&[half::f16]> {
        Some(s)
    }
    fn as_f16_slice_mut(s: &mut [Self]) -> Option<&mut [half::f16]> {
        Some(s)
    }
}

/// An f32 rounded to odd from f64, on its way to f16: the f32 stage of
/// float16 rows run through F16C (`f16c.rs`), which rounds it once more, to
/// nearest, to the same bits as `f16::from_f64` (see `round_to_odd_f32`).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(transparent)]
pub struct F16Odd(pub f32);

impl Element for F16Odd {
    const WIDE: bool = true;
    const ZERO: Self = F16Odd(0.0);
    type Stat = f32;

    #[inline(always)]
    fn to_f64(self) -> f64 {
        self.0 as f64
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        F16Odd(round_to_odd_f32(v))
    }
    fn as_f64_slice(_: &[Self]) -> Option<&[f64]> {
        None
    }
}

impl Element for half::bf16 {
    const WIDE: bool = true;
    const CHUNKED: bool = true;
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
    /// When every element is zero or in [2^-126, 2^127) — f32's normal range,
    /// short of where bf16 overflows — through f32: round-to-odd there, then to
    /// nearest on the f32 bits (bf16 is f32's upper half), one correct rounding
    /// (`round_to_odd_f32`). Otherwise (subnormal, huge, infinite or NaN
    /// elements: rare) element by element.
    #[inline(always)]
    fn from_f64_chunk(t: &[f64; LANES]) -> [Self; LANES] {
        let mut common = true;
        for &v in t {
            let a = v.abs();
            common &= a == 0.0 || (a >= f64::from(f32::MIN_POSITIVE) && a < 2f64.powi(127));
        }
        let mut out = [half::bf16::ZERO; LANES];
        if !common {
            // Not `Self::from_f64`: that is the half crate's, which rounds twice.
            for j in 0..LANES {
                out[j] = <Self as Element>::from_f64(t[j]);
            }
            return out;
        }
        for j in 0..LANES {
            let f = round_to_odd_f32(t[j]).to_bits();
            out[j] = half::bf16::from_bits(((f + 0x7fff + ((f >> 16) & 1)) >> 16) as u16);
        }
        out
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
            // Round trips through f64.
            let (ra, rb) = (
                <f16 as Element>::from_f64(fa as f64),
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

    /// f16 rounds through f32 (round-to-odd, then to nearest); bf16 straight
    /// from f64. Every f32 value, through f64, must round as the `half`
    /// crate's (correct) f32 conversions do.
    #[test]
    fn every_f32_rounds_once() {
        use rayon::prelude::*;
        (0..=u16::MAX).into_par_iter().for_each(|hi| {
            for lo in 0..=u16::MAX {
                let v = f32::from_bits((hi as u32) << 16 | lo as u32);
                let (got16, got_b) = (
                    <f16 as Element>::from_f64(v as f64),
                    <bf16 as Element>::from_f64(v as f64),
                );
                let (want16, want_b) = (f16::from_f32(v), bf16::from_f32(v));
                if v.is_nan() {
                    assert!(got16.is_nan() && got_b.is_nan(), "{v:e}");
                    assert_eq!(got16.to_bits() & 0x8000, want16.to_bits() & 0x8000);
                } else {
                    assert_eq!(got16.to_bits(), want16.to_bits(), "{v:e}");
                    assert_eq!(got_b.to_bits(), want_b.to_bits(), "{v:e}");
                }
            }
        });
    }

    /// The f16 path through f32 against the direct rounding from f64 (which
    /// bf16 uses), on f64 values whose low bits f32 would drop: spread over
    /// f16's range and past it, and anywhere at all.
    #[test]
    fn f16_through_f32_matches_direct_rounding() {
        let direct = |v: f64| {
            let sign = ((v.to_bits() >> 48) & 0x8000) as u16;
            round_f64_to_narrow(v, 10, 15, 31) as u16 | sign
        };
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..20_000_000u64 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let bits = if i % 4 == 0 {
                s
            } else {
                // Exponents 2^-40 .. 2^20, random mantissa and sign.
                let exp = 1023 - 40 + (s >> 58) % 61;
                (s & 0x800f_ffff_ffff_ffff) | (exp << 52)
            };
            let v = f64::from_bits(bits);
            let got = <f16 as Element>::from_f64(v).to_bits();
            if v.is_nan() {
                assert_eq!(got, 0x7e00 | ((bits >> 48) as u16 & 0x8000), "{bits:#x}");
            } else {
                assert_eq!(got, direct(v), "{v:e}");
            }
        }
        // A hair off every f16 midpoint, either side, at f32 precision and
        // finer: the cases rounding twice to nearest would get wrong.
        for bits in 0..0x7c00u16 {
            let (lo, hi) = (
                f16::from_bits(bits).to_f64(),
                f16::from_bits(bits + 1).to_f64(),
            );
            let mid = (lo + hi) / 2.0;
            for hair in [2f64.powi(-30), 2f64.powi(-45)] {
                for v in [mid + (hi - lo) * hair, mid - (hi - lo) * hair] {
                    assert_eq!(<f16 as Element>::from_f64(v).to_bits(), direct(v), "{v:e}");
                    assert_eq!(
                        <f16 as Element>::from_f64(-v).to_bits(),
                        direct(-v),
                        "{v:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn half_edge_values() {
        // black_box: as in the kernels, no conversion is folded at compile time.
        let f = |v: f64| <f16 as Element>::from_f64(std::hint::black_box(v)).to_bits();
        let b = |v: f64| <bf16 as Element>::from_f64(std::hint::black_box(v)).to_bits();
        assert_eq!((f(0.0), f(-0.0), b(0.0), b(-0.0)), (0, 0x8000, 0, 0x8000));
        // Below half the smallest subnormal: zero, keeping the sign.
        assert_eq!((f(2f64.powi(-25)), f(-1e-300)), (0, 0x8000));
        assert_eq!(f(2f64.powi(-25) * (1.0 + 2f64.powi(-40))), 1);
        assert_eq!((b(-1e-300), b(f64::MIN_POSITIVE)), (0x8000, 0));
        // Largest finite, the overflow threshold, infinity.
        assert_eq!(f(65504.0), 0x7bff);
        assert_eq!(f(65519.999), 0x7bff);
        assert_eq!(
            (f(65520.0), f(-1e300), f(f64::INFINITY)),
            (0x7c00, 0xfc00, 0x7c00)
        );
        assert_eq!((b(f64::MAX), b(f64::NEG_INFINITY)), (0x7f80, 0xff80));
        assert_eq!((f(f64::NAN), f(-f64::NAN)), (0x7e00, 0xfe00));
        assert_eq!((b(f64::NAN), b(-f64::NAN)), (0x7fc0, 0xffc0));
    }

    /// `from_f64_chunk` (bf16's fast path for the common case included) gives
    /// `from_f64`'s bits for every element, on chunks that mix normal values
    /// near bf16 midpoints with zeros, subnormals, huge values, infinities and
    /// NaN, and on chunks of common values only.
    #[test]
    fn chunks_round_as_elements_do() {
        fn check<T: Element>(t: &[f64; LANES]) {
            let chunk = T::from_f64_chunk(t);
            for j in 0..LANES {
                let one = <T as Element>::from_f64(t[j]);
                assert!(
                    chunk[j] == one || (chunk[j] != chunk[j] && one != one),
                    "{:e}: {:?} vs {:?}",
                    t[j],
                    chunk[j],
                    one
                );
            }
        }
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let odd = [
            0.0,
            -0.0,
            3.9e-39,
            -1e-45,
            1e-300,
            3.4e38,
            1e300,
            f64::INFINITY,
            f64::NAN,
        ];
        for round in 0..20_000 {
            let mut t = [0.0; LANES];
            for v in t.iter_mut() {
                // Near a bf16 midpoint: 8 significant bits, then a half, then noise.
                let m = (next() % 256 + 256) as f64 + 0.5 + (next() % 3) as f64 * 1e-9 - 1e-9;
                let e = (next() % 240) as i32 - 140;
                *v = m * 2f64.powi(e) * if next() % 2 == 0 { 1.0 } else { -1.0 };
            }
            if round % 2 == 0 {
                t[(next() % LANES as u64) as usize] = odd[round / 2 % odd.len()];
                // Near a midpoint of bf16's subnormal grid (2^-133 apart).
                let k = (next() % 128) as f64 + 0.5 + (next() % 3) as f64 * 1e-9 - 1e-9;
                t[(next() % LANES as u64) as usize] = k * 2f64.powi(-133);
            }
            check::<half::bf16>(&t);
            check::<half::f16>(&t);
            check::<f32>(&t);
            check::<F16Odd>(&t);
        }
    }
}
