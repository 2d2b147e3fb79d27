//! LayerNorm forward: `y = (x − mean)·rstd·weight + bias` per row.

use super::element::Element;
use super::simd::{dispatch, Kernel, Level};
use super::stats::{row_stats, RowStats, LANES};
use super::KernelError;
use crate::parallel;

/// Where the input rows are: a separate array, or the output itself (in place).
#[derive(Clone, Copy)]
pub enum Input<'a, T> {
    Separate(&'a [T]),
    InPlace,
}

/// Everything one forward call needs besides the output buffers.
#[derive(Clone, Copy)]
pub struct Forward<'a, T: Element> {
    pub x: Input<'a, T>,
    pub cols: usize,
    pub weight: Option<&'a [T]>,
    pub bias: Option<&'a [T]>,
    pub eps: f64,
}

/// Normalise the rows of `x` (`rows × cols`, row-major) into `y`, and store each
/// row's mean and rstd. With `Input::InPlace`, `y` holds the input on entry.
pub fn layer_norm_forward<T: Element>(
    level: Level,
    args: Forward<'_, T>,
    y: &mut [T],
    mean: &mut [T::Stat],
    rstd: &mut [T::Stat],
) -> Result<(), KernelError> {
    let Forward { x, cols, weight, bias, eps } = args;
    let rows = mean.len();
    check_len("y", y.len(), rows * cols)?;
    check_len("rstd", rstd.len(), rows)?;
    if let Input::Separate(x) = x {
        check_len("x", x.len(), rows * cols)?;
    }
    for (name, p) in [("weight", weight), ("bias", bias)] {
        if let Some(p) = p {
            check_len(name, p.len(), cols)?;
        }
    }
    if eps.is_nan() || eps < 0.0 {
        return Err(KernelError::BadEps(eps));
    }
    if rows == 0 {
        return Ok(());
    }
    if cols == 0 {
        mean.fill(T::Stat::from_f64(f64::NAN));
        rstd.fill(T::Stat::from_f64(f64::NAN));
        return Ok(());
    }
    parallel::for_row_blocks(rows, cols, y, mean, rstd, |first, y, mean, rstd| {
        let x = match x {
            Input::Separate(x) => Input::Separate(&x[first * cols..(first + mean.len()) * cols]),
            Input::InPlace => Input::InPlace,
        };
        let args = Forward { x, cols, weight, bias, eps };
        dispatch(level, RowBlock { args, y, mean, rstd });
    });
    Ok(())
}

fn check_len(name: &'static str, got: usize, expected: usize) -> Result<(), KernelError> {
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::Length { name, expected, got })
    }
}

/// A contiguous block of rows, run on one thread at one SIMD level.
struct RowBlock<'a, T: Element> {
    args: Forward<'a, T>,
    y: &'a mut [T],
    mean: &'a mut [T::Stat],
    rstd: &'a mut [T::Stat],
}

impl<T: Element> Kernel for RowBlock<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Forward { x, cols, weight, bias, eps } = self.args;
        let w = weight.unwrap_or(&[]);
        let b = bias.unwrap_or(&[]);
        for (r, y) in self.y.chunks_exact_mut(cols).enumerate() {
            let stats = match x {
                Input::Separate(x) => {
                    let x = &x[r * cols..(r + 1) * cols];
                    let stats = row_stats(x, eps);
                    normalise_row(Some(x), y, &stats, w, b);
                    stats
                }
                Input::InPlace => {
                    let stats = row_stats(y, eps);
                    normalise_row(None, y, &stats, w, b);
                    stats
                }
            };
            self.mean[r] = T::Stat::from_f64(stats.mean);
            self.rstd[r] = T::Stat::from_f64(stats.rstd);
        }
    }
}

#[inline(always)]
fn normalise_row<T: Element>(x: Option<&[T]>, y: &mut [T], s: &RowStats, w: &[T], b: &[T]) {
    match (w.is_empty(), b.is_empty(), s.scale == 1.0) {
        (false, false, true) => normalise::<T, true, true, false>(x, y, s, w, b),
        (false, true, true) => normalise::<T, true, false, false>(x, y, s, w, b),
        (true, false, true) => normalise::<T, false, true, false>(x, y, s, w, b),
        (true, true, true) => normalise::<T, false, false, false>(x, y, s, w, b),
        _ => normalise_rescaled(x, y, s, w, b),
    }
}

#[cold]
#[inline(never)]
fn normalise_rescaled<T: Element>(x: Option<&[T]>, y: &mut [T], s: &RowStats, w: &[T], b: &[T]) {
    match (w.is_empty(), b.is_empty()) {
        (false, false) => normalise::<T, true, true, true>(x, y, s, w, b),
        (false, true) => normalise::<T, true, false, true>(x, y, s, w, b),
        (true, false) => normalise::<T, false, true, true>(x, y, s, w, b),
        (true, true) => normalise::<T, false, false, true>(x, y, s, w, b),
    }
}

/// One row, LANES elements at a time. Each chunk is read whole before it is
/// written, so `x = None` (read from `y`) is the same computation in place.
#[inline(always)]
fn normalise<T: Element, const W: bool, const B: bool, const SCALED: bool>(
    x: Option<&[T]>,
    y: &mut [T],
    s: &RowStats,
    w: &[T],
    b: &[T],
) {
    let n = y.len();
    let full = n - n % LANES;
    let mut i = 0;
    while i < full {
        let src = match x {
            Some(x) => &x[i..i + LANES],
            None => &y[i..i + LANES],
        };
        let out = chunk::<T, W, B, SCALED>(src, s, &w[if W { i..i + LANES } else { 0..0 }], &b[if B { i..i + LANES } else { 0..0 }]);
        y[i..i + LANES].copy_from_slice(&out);
        i += LANES;
    }
    if full < n {
        let r = n - full;
        let pad = |src: &[T]| {
            let mut a = [T::ZERO; LANES];
            a[..r].copy_from_slice(&src[full..]);
            a
        };
        let xs = pad(x.unwrap_or(y));
        let ws = if W { pad(w) } else { [T::ZERO; LANES] };
        let bs = if B { pad(b) } else { [T::ZERO; LANES] };
        let out = chunk::<T, W, B, SCALED>(&xs, s, &ws, &bs);
        y[full..].copy_from_slice(&out[..r]);
    }
}

#[inline(always)]
fn chunk<T: Element, const W: bool, const B: bool, const SCALED: bool>(
    x: &[T],
    s: &RowStats,
    w: &[T],
    b: &[T],
) -> [T; LANES] {
    let mut out = [T::ZERO; LANES];
    for j in 0..LANES {
        let v = if SCALED { x[j].to_f64() * s.scale } else { x[j].to_f64() };
        let mut t = ((v - s.shift) - s.corr) * s.rstd_scaled;
        if W {
            t *= w[j].to_f64();
        }
        if B {
            t += b[j].to_f64();
        }
        out[j] = T::from_f64(t);
    }
    out
}
