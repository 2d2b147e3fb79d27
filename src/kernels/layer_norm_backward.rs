//! LayerNorm backward: dx, dweight and dbias in one pass per row.
//!
//! Per row, with `u = x − mean`, `g = dy·weight`: the sums Σu, Σg and Σg·u give
//! the correction `c = Σu/n` (which recovers the digits lost when `mean` was
//! rounded to its storage type), `a = mean(g)` and `b = mean(g·xhat)`; then
//! `xhat = (u − c)·rstd` and `dx = rstd·((g − a) − xhat·b)`. The row is still in
//! cache for the second loop, which also adds `dy·xhat` and `dy` into the
//! column sums of its block of rows. Blocks are fixed by the shape
//! (`parallel::fixed_block_rows`) and merged in order, so dweight and dbias do
//! not depend on the thread count.

use super::element::{widen, Element};
use super::simd::{dispatch, Kernel, Level};
use super::stats::{reduce, two_sum, Compensated, Lanes, BLOCK_STEPS, LANES};
use super::KernelError;
use crate::parallel;

/// The inputs of one backward call; `mean`/`rstd` as the forward pass returned them.
#[derive(Clone, Copy)]
pub struct Backward<'a, T: Element> {
    pub dy: &'a [T],
    pub x: &'a [T],
    pub mean: &'a [T::Stat],
    pub rstd: &'a [T::Stat],
    pub cols: usize,
    pub weight: Option<&'a [T]>,
}

/// Fill `dx` (`rows × cols`), `dweight` and `dbias` (`cols` each).
pub fn layer_norm_backward<T: Element>(
    level: Level,
    args: Backward<'_, T>,
    dx: &mut [T],
    dweight: &mut [T],
    dbias: &mut [T],
) -> Result<(), KernelError> {
    let Backward {
        dy,
        x,
        mean,
        rstd,
        cols,
        weight,
    } = args;
    let rows = mean.len();
    let check = |name: &'static str, got: usize, expected: usize| {
        if got == expected {
            Ok(())
        } else {
            Err(KernelError::Length {
                name,
                expected,
                got,
            })
        }
    };
    check("x", x.len(), rows * cols)?;
    check("dy", dy.len(), rows * cols)?;
    check("dx", dx.len(), rows * cols)?;
    check("rstd", rstd.len(), rows)?;
    check("dweight", dweight.len(), cols)?;
    check("dbias", dbias.len(), cols)?;
    if let Some(w) = weight {
        check("weight", w.len(), cols)?;
    }
    if rows == 0 || cols == 0 {
        dweight.fill(T::ZERO);
        dbias.fill(T::ZERO);
        return Ok(());
    }
    let weight = weight.map(widen);
    let w = weight.as_deref().unwrap_or(&[]);
    let block_rows = parallel::fixed_block_rows(rows, cols);
    let blocks = rows.div_ceil(block_rows);
    // Per block: Σ dy·xhat and Σ dy for every column.
    let mut partials = vec![0.0f64; blocks * 2 * cols];
    parallel::for_fixed_blocks(
        rows,
        cols,
        block_rows,
        dx,
        &mut partials,
        2 * cols,
        |first, dx, partial| {
            let n = dx.len() / cols;
            let rows = first..first + n;
            let block = RowBlock {
                dy: &dy[rows.start * cols..rows.end * cols],
                x: &x[rows.start * cols..rows.end * cols],
                mean: &mean[rows.clone()],
                rstd: &rstd[rows],
                cols,
                w,
                dx,
                partial,
            };
            dispatch(level, block);
        },
    );
    merge_columns(&partials, cols, dweight, dbias);
    Ok(())
}

/// Add the blocks' column sums in block order, compensated.
fn merge_columns<T: Element>(partials: &[f64], cols: usize, dweight: &mut [T], dbias: &mut [T]) {
    for (j, (dw, db)) in dweight.iter_mut().zip(dbias.iter_mut()).enumerate() {
        let (mut w_hi, mut w_lo, mut b_hi, mut b_lo) = (0.0, 0.0, 0.0, 0.0);
        for p in partials.chunks_exact(2 * cols) {
            let (s, e) = two_sum(w_hi, p[j]);
            (w_hi, w_lo) = (s, w_lo + e);
            let (s, e) = two_sum(b_hi, p[cols + j]);
            (b_hi, b_lo) = (s, b_lo + e);
        }
        *dw = T::from_f64(w_hi + w_lo);
        *db = T::from_f64(b_hi + b_lo);
    }
}

/// A block of rows on one thread; `w` is empty without a weight.
struct RowBlock<'a, T: Element> {
    dy: &'a [T],
    x: &'a [T],
    mean: &'a [T::Stat],
    rstd: &'a [T::Stat],
    cols: usize,
    w: &'a [f64],
    dx: &'a mut [T],
    partial: &'a mut [f64],
}

impl<T: Element> Kernel for RowBlock<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let cols = self.cols;
        let (dw, db) = self.partial.split_at_mut(cols);
        let rows = self
            .dx
            .chunks_exact_mut(cols)
            .zip(self.x.chunks_exact(cols))
            .zip(self.dy.chunks_exact(cols));
        for (r, ((dx, x), dy)) in rows.enumerate() {
            let mean = self.mean[r].to_f64();
            let rstd = self.rstd[r].to_f64();
            if self.w.is_empty() {
                backward_row::<T, false>(x, dy, self.w, mean, rstd, dx, dw, db);
            } else {
                backward_row::<T, true>(x, dy, self.w, mean, rstd, dx, dw, db);
            }
        }
    }
}

/// Call `f(offset, len)` over a row of `n` in chunks of LANES, then the tail;
/// full chunks have a length known at compile time, which is what vectorises.
#[inline(always)]
fn chunks(n: usize, mut f: impl FnMut(usize, usize)) {
    let full = n - n % LANES;
    let mut o = 0;
    while o < full {
        f(o, LANES);
        o += LANES;
    }
    if full < n {
        f(full, n - full);
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_row<T: Element, const W: bool>(
    x: &[T],
    dy: &[T],
    w: &[f64],
    mean: f64,
    rstd: f64,
    dx: &mut [T],
    dw: &mut [f64],
    db: &mut [f64],
) {
    let n = x.len();
    let [su, sg, sgu] = row_sums::<T, W>(x, dy, w, mean);
    let c = su / n as f64;
    let a = sg / n as f64;
    let b = rstd * (sgu - c * sg) / n as f64;
    chunks(n, |o, m| {
        let (x, dy) = (&x[o..o + m], &dy[o..o + m]);
        let w = if W { &w[o..o + m] } else { &[][..] };
        let (dx, dw, db) = (&mut dx[o..o + m], &mut dw[o..o + m], &mut db[o..o + m]);
        for j in 0..m {
            let d = dy[j].to_f64();
            let g = if W { d * w[j] } else { d };
            let xhat = ((x[j].to_f64() - mean) - c) * rstd;
            dx[j] = T::from_f64(rstd * ((g - a) - xhat * b));
            dw[j] += d * xhat;
            db[j] += d;
        }
    });
}

/// [Σu, Σg, Σg·u] for one row; compensated in blocks for f64 storage.
#[inline(always)]
fn row_sums<T: Element, const W: bool>(x: &[T], dy: &[T], w: &[f64], mean: f64) -> [f64; 3] {
    let step = |acc: &mut [Lanes; 3], o: usize, m: usize| {
        let (x, dy) = (&x[o..o + m], &dy[o..o + m]);
        let w = if W { &w[o..o + m] } else { &[][..] };
        for j in 0..m {
            let u = x[j].to_f64() - mean;
            let d = dy[j].to_f64();
            let g = if W { d * w[j] } else { d };
            acc[0][j] += u;
            acc[1][j] += g;
            acc[2][j] += g * u;
        }
    };
    let mut acc = [[0.0; LANES]; 3];
    if T::WIDE {
        chunks(x.len(), |o, m| step(&mut acc, o, m));
        return acc.map(reduce);
    }
    let mut totals = [Compensated::default(); 3];
    let mut steps = 0;
    chunks(x.len(), |o, m| {
        step(&mut acc, o, m);
        steps += 1;
        if steps == BLOCK_STEPS || o + m == x.len() {
            for (t, a) in totals.iter_mut().zip(&mut acc) {
                t.add(a);
                *a = [0.0; LANES];
            }
            steps = 0;
        }
    });
    totals.map(|t| t.total())
}
