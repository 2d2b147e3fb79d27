//! The streaming triad `y = a·x + b`: the memory-bandwidth limit a forward pass
//! is measured against. It moves the same bytes as LayerNorm's forward (read x,
//! write y) over the same rows, threads and store policy, with no arithmetic
//! to speak of, so no normalisation kernel can beat it.

use super::element::Element;
use super::simd::{dispatch, Kernel, Level};
use super::stats::LANES;
use super::stream::{fence, store_chunk, worth_streaming};
use super::KernelError;
use crate::parallel;

/// `y = a·x + b` elementwise over `rows × cols`, split over threads as the
/// forward pass splits its rows.
pub fn triad<T: Element>(
    level: Level,
    x: &[T],
    y: &mut [T],
    cols: usize,
    a: f64,
    b: f64,
) -> Result<(), KernelError> {
    if x.len() != y.len() {
        return Err(KernelError::Length {
            name: "y",
            expected: x.len(),
            got: y.len(),
        });
    }
    if cols == 0 || x.is_empty() {
        return Ok(());
    }
    if !x.len().is_multiple_of(cols) {
        return Err(KernelError::Length {
            name: "x",
            expected: x.len() / cols * cols,
            got: x.len(),
        });
    }
    let rows = x.len() / cols;
    let stream = worth_streaming(std::mem::size_of_val(y));
    parallel::for_row_blocks(
        rows,
        cols,
        parallel::PerRow(y, cols),
        |first, parallel::PerRow(y, _)| {
            let x = &x[first * cols..first * cols + y.len()];
            dispatch(level, Triad { x, y, a, b, stream });
        },
    );
    Ok(())
}

struct Triad<'a, T> {
    x: &'a [T],
    y: &'a mut [T],
    a: f64,
    b: f64,
    stream: bool,
}

impl<T: Element> Kernel for Triad<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Triad { x, y, a, b, stream } = self;
        let (a, b) = (T::from_f64(a).to_f64(), T::from_f64(b).to_f64());
        let f = |v: T| T::from_f64(v.to_f64().mul_add(a, b));
        let head = if stream {
            super::stream::unaligned_head(y)
        } else {
            0
        };
        let (yh, yt) = y.split_at_mut(head);
        let (xh, xt) = x.split_at(head);
        yh.iter_mut().zip(xh).for_each(|(y, &x)| *y = f(x));
        let mut ys = yt.chunks_exact_mut(LANES);
        let mut xs = xt.chunks_exact(LANES);
        for (y, x) in (&mut ys).zip(&mut xs) {
            let out: [T; LANES] = std::array::from_fn(|j| f(x[j]));
            store_chunk(y, &out, stream);
        }
        ys.into_remainder()
            .iter_mut()
            .zip(xs.remainder())
            .for_each(|(y, &x)| *y = f(x));
        fence(stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triad_computes_a_x_plus_b() {
        let x: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let mut y = vec![0.0f32; 1000];
        triad(Level::Scalar, &x, &mut y, 100, 2.0, 1.0).unwrap();
        assert!(y.iter().zip(&x).all(|(y, x)| *y == 2.0 * x + 1.0));
        assert!(triad(Level::Scalar, &x, &mut y[..10], 100, 2.0, 1.0).is_err());
    }
}
