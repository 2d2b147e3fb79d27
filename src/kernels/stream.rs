//! Streaming (non-temporal) stores for outputs far larger than the caches.
//!
//! A normal store first reads the destination line into the cache (read for
//! ownership), so writing an output that will not be reused moves its bytes
//! over the memory bus twice. A streaming store writes whole lines through
//! write-combining buffers instead. Small outputs stay in the cache, where the
//! next layer wants them, and are stored normally.

use super::stats::LANES;

/// Outputs from this size on are streamed. Past half of a typical L3 the line
/// is evicted before anyone reads it again.
pub const STREAM_MIN_BYTES: usize = 16 << 20;

/// Whether an output of `bytes` should be streamed on this target.
pub fn worth_streaming(bytes: usize) -> bool {
    cfg!(target_arch = "x86_64") && bytes >= STREAM_MIN_BYTES
}

/// How many leading elements of `dst` to store normally so that the rest starts
/// 16-byte aligned, as streaming stores require.
#[inline(always)]
pub fn unaligned_head<T>(dst: &[T]) -> usize {
    let size = std::mem::size_of::<T>();
    let misalign = dst.as_ptr() as usize % 16;
    if misalign == 0 || !misalign.is_multiple_of(size) {
        return 0;
    }
    ((16 - misalign) / size).min(dst.len())
}

/// Store one chunk of `LANES` elements, streamed when `stream` and `dst` is
/// 16-byte aligned, else normally.
#[inline(always)]
pub fn store_chunk<T: Copy>(dst: &mut [T], src: &[T; LANES], stream: bool) {
    #[cfg(target_arch = "x86_64")]
    if stream && (dst.as_ptr() as usize).is_multiple_of(16) {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let bytes = std::mem::size_of_val(src);
        assert!(dst.len() == LANES && bytes.is_multiple_of(16));
        let (s, d) = (
            src.as_ptr() as *const __m128i,
            dst.as_mut_ptr() as *mut __m128i,
        );
        for k in 0..bytes / 16 {
            // SAFETY: `dst` holds LANES elements (asserted), 16-byte aligned
            // (checked), so each of the bytes/16 pieces is in bounds and aligned;
            // `src` is read unaligned. SSE2 is part of the x86-64 baseline.
            unsafe { _mm_stream_si128(d.add(k), _mm_loadu_si128(s.add(k))) };
        }
        return;
    }
    let _ = stream;
    dst.copy_from_slice(src);
}

/// Order this thread's streaming stores before anything it does next; call
/// once after a run of `store_chunk`s.
#[inline(always)]
pub fn fence(stream: bool) {
    #[cfg(target_arch = "x86_64")]
    if stream {
        // SAFETY: SSE is part of the x86-64 baseline.
        unsafe { std::arch::x86_64::_mm_sfence() };
    }
    let _ = stream;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_and_plain_stores_write_the_same() {
        let src: [f32; LANES] = std::array::from_fn(|i| i as f32 * 0.5);
        let mut buf = [0.0f32; LANES + 8];
        let start = unaligned_head(&buf[..]);
        store_chunk(&mut buf[start..start + LANES], &src, true);
        fence(true);
        assert_eq!(buf[start..start + LANES], src);
        let mut plain = [0.0f32; LANES];
        store_chunk(&mut plain, &src, false);
        assert_eq!(plain[..], src);
    }

    #[test]
    fn unaligned_head_reaches_alignment() {
        let buf = [0.0f64; 16];
        for off in 0..4 {
            let s = &buf[off..];
            let h = unaligned_head(s);
            assert_eq!(s[h..].as_ptr() as usize % 16, 0);
        }
    }
}
