//! float16 rows through the F16C conversion instructions.
//!
//! The generic kernels convert one element at a time in plain integer and
//! float arithmetic (see `element.rs`), which costs a float16 forward pass more
//! than its statistics and normalisation together. Where the CPU has F16C, a
//! float16 row is instead widened to f32 by `vcvtph2ps` (exact), run through
//! the f32 kernels with the output rounded to odd at f32 precision ([`F16Odd`]),
//! and narrowed by `vcvtps2ph` (to nearest, ties to even): round-to-odd then to
//! nearest is one correct rounding, so the bits are those of the generic path.
//! Only NaN payloads could differ; NaNs are written as the generic path writes
//! them (sign kept, quiet, no payload).

use super::element::{Element, F16Odd};
use super::simd::Level;
use half::f16;

/// Whether float16 rows should take this path at `level`: from AVX2 on, where
/// the CPU has F16C (every AVX2 CPU so far has). Lower levels keep the generic
/// path, so that forcing a level still tests it.
pub fn available(level: Level) -> bool {
    level >= Level::Avx2 && level.is_supported() && has_f16c()
}

fn has_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `src` widened into `dst` (equal lengths): by F16C where the CPU has it,
/// else element by element, with the same values either way.
pub fn widen(src: &[f16], dst: &mut [F16Odd]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the CPU has AVX2 and F16C (checked); the lengths are equal.
        unsafe { x86::widen(src, dst) };
        return;
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = F16Odd::from_f64(s.to_f64());
    }
}

/// `src` (rounded to odd) narrowed into `dst` to nearest, ties to even
/// (equal lengths), by F16C where the CPU has it, else element by element,
/// with the same bits either way; with `stream`, the 16-byte-aligned part by
/// streaming stores (the caller fences).
pub fn narrow(src: &[F16Odd], dst: &mut [f16], stream: bool) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: as in `widen`.
        unsafe { x86::narrow(src, dst, stream) };
        return;
    }
    let _ = stream;
    for (d, s) in dst.iter_mut().zip(src) {
        *d = <f16 as Element>::from_f64(s.to_f64());
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{f16, Element, F16Odd};
    use crate::kernels::stream::unaligned_head;
    use std::arch::x86_64::*;

    /// Eight at a time, then the tail through the generic conversion.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn widen(src: &[f16], dst: &mut [F16Odd]) {
        let n = src.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            // SAFETY: i + 8 <= n <= both lengths; unaligned loads and stores.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
                _mm256_storeu_ps(dst.as_mut_ptr().add(i) as *mut f32, _mm256_cvtph_ps(h));
            }
        }
        for i in n..src.len() {
            dst[i] = F16Odd::from_f64(src[i].to_f64());
        }
    }

    /// Eight at a time after a head that aligns `dst` to 16 bytes when
    /// streaming, then the tail through the generic conversion.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn narrow(src: &[F16Odd], dst: &mut [f16], stream: bool) {
        let head = if stream { unaligned_head(dst) } else { 0 };
        for i in 0..head {
            dst[i] = <f16 as Element>::from_f64(src[i].to_f64());
        }
        let n = head + (src.len() - head) / 8 * 8;
        let magnitude = _mm_set1_epi16(0x7fff);
        let infinity = _mm_set1_epi16(0x7c00);
        let quiet = _mm_set1_epi16(0x7e00);
        for i in (head..n).step_by(8) {
            // SAFETY: i + 8 <= n <= both lengths; unaligned loads and stores.
            let f = unsafe { _mm256_loadu_ps(src.as_ptr().add(i) as *const f32) };
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(f);
            // NaN (magnitude above infinity's): the sign, and the quiet NaN.
            let nan = _mm_cmpgt_epi16(_mm_and_si128(h, magnitude), infinity);
            let canonical = _mm_or_si128(_mm_andnot_si128(magnitude, h), quiet);
            let h = _mm_blendv_epi8(h, canonical, nan);
            // SAFETY: as above; streamed only past the head, which aligned `at`.
            unsafe {
                let at = dst.as_mut_ptr().add(i) as *mut __m128i;
                if stream {
                    _mm_stream_si128(at, h)
                } else {
                    _mm_storeu_si128(at, h)
                }
            };
        }
        for i in n..src.len() {
            dst[i] = <f16 as Element>::from_f64(src[i].to_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::supported_levels;

    #[test]
    fn conversions_match_the_generic_path_bit_for_bit() {
        let Some(&level) = supported_levels().iter().find(|&&l| available(l)) else {
            return; // no F16C here: nothing to compare
        };
        assert!(available(level));
        // Every f16 bit pattern widens as the generic conversion does (NaNs as NaNs).
        let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let mut wide = vec![F16Odd::ZERO; all.len()];
        widen(&all, &mut wide);
        for (h, w) in all.iter().zip(&wide) {
            let g = Element::to_f64(*h);
            assert!(
                w.to_f64() == g || (g.is_nan() && w.to_f64().is_nan()),
                "{:#06x}",
                h.to_bits()
            );
        }
        // f64 values near every f16 midpoint, ties, subnormals, overflow, NaN
        // and zeros narrow as the generic path rounds them, lengths not a
        // multiple of 8 included.
        let mut values = vec![
            0.0,
            -0.0,
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            -65520.0,
            65519.99,
        ];
        for bits in (0..0x7c00u16).step_by(7) {
            let a = f16::from_bits(bits).to_f64();
            let b = f16::from_bits(bits + 1).to_f64();
            let mid = 0.5 * (a + b);
            for v in [mid, mid * (1.0 + 1e-12), mid * (1.0 - 1e-12), a, 1e-30 * a] {
                values.extend([v, -v]);
            }
        }
        values.push(1.0);
        let odd: Vec<F16Odd> = values.iter().map(|&v| F16Odd::from_f64(v)).collect();
        for (stream, skip) in [(false, 0), (true, 0), (true, 1), (true, 3)] {
            let mut out = vec![f16::ZERO; odd.len()];
            narrow(&odd[skip..], &mut out[skip..], stream);
            crate::kernels::stream::fence(stream);
            for (v, o) in values.iter().zip(&out).skip(skip) {
                assert_eq!(
                    o.to_bits(),
                    <f16 as Element>::from_f64(*v).to_bits(),
                    "{v:e}"
                );
            }
        }
    }
}
