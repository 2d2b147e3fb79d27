//! LayerNorm and RMSNorm backward: dx, dweight and dbias in one pass per row.
//!
//! Per row, with `u = x − mean`, `g = dy·weight`: the sums Σu, Σg and Σg·u give
//! the correction `c = Σu/n` (which recovers the digits lost when `mean` was
//! rounded to its storage type), `a = mean(g)` and `b = mean(g·xhat)`; then
//! `xhat = (u − c)·rstd` and `dx = rstd·((g − a) − xhat·b)`. The row is still in
//! cache for the second loop, which also adds `dy·xhat` and `dy` into the
//! column sums of its block of rows. For f64 storage every step is carried in
//! double-double (error-free sums, products split by FMA) and rounded once:
//! `(g − a) − xhat·b` cancels, and what f64 would drop becomes dx's leading digits. Blocks are fixed by the shape
//! (`parallel::fixed_block_rows`) and merged in order, so dweight and dbias do
//! not depend on the thread count.

use super::element::{Element, F16Odd, Param};
use super::f16c;
use super::simd::{dispatch, Kernel, Level};
use super::stats::{
    add_block_pairs, div_pair, reduce, rstd_from, two_prod, two_sum, Centred, Exact, Lanes, LANES,
    LONG_ROW, SPLIT_BLOCK,
};
use super::stream::{fence, store_chunk, unaligned_head, worth_streaming};
use super::KernelError;
use crate::parallel;

/// The inputs of one backward call; `mean`/`rstd` as the forward pass returned
/// them. Without `mean` it is RMSNorm's backward: no centring (`mean = 0`,
/// `c = 0`, `a = 0`), and `dbias` is filled but means nothing.
#[derive(Clone, Copy)]
pub struct Backward<'a, T: Element> {
    pub dy: &'a [T],
    pub x: &'a [T],
    pub mean: Option<&'a [T::Stat]>,
    pub rstd: &'a [T::Stat],
    pub cols: usize,
    pub weight: Option<Param<'a, T>>,
    /// The forward pass's eps. Given, each row's rstd is recomputed from `x` in
    /// the wide type instead of taken as `rstd` holds it, rounded to the
    /// statistics type; that rounding is otherwise amplified in dx and dweight.
    pub eps: Option<f64>,
}

/// Fill `dx` (`rows × cols`), `dweight` and `dbias` (`cols` each, in the
/// statistics type: f32 for half-precision storage).
pub fn layer_norm_backward<T: Element>(
    level: Level,
    args: Backward<'_, T>,
    dx: &mut [T],
    dweight: &mut [T::Stat],
    dbias: &mut [T::Stat],
) -> Result<(), KernelError> {
    let Backward {
        dy,
        x,
        mean,
        rstd,
        cols,
        weight,
        eps,
    } = args;
    let rows = x.len().checked_div(cols).unwrap_or(rstd.len());
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
    if let Some(mean) = mean {
        check("mean", mean.len(), rows)?;
    }
    check("dy", dy.len(), rows * cols)?;
    check("dx", dx.len(), rows * cols)?;
    check("rstd", rstd.len(), rows)?;
    check("dweight", dweight.len(), cols)?;
    check("dbias", dbias.len(), cols)?;
    if let Some(w) = weight {
        check("weight", w.len(), cols)?;
    }
    if rows == 0 || cols == 0 {
        dweight.fill(T::Stat::ZERO);
        dbias.fill(T::Stat::ZERO);
        return Ok(());
    }
    let weight = weight.map(Param::widen);
    let w = weight.as_deref().unwrap_or(&[]);
    let stream = worth_streaming(std::mem::size_of_val(dx));
    let block_rows = parallel::fixed_block_rows(rows, cols);
    let blocks = rows.div_ceil(block_rows);
    // Per block: Σ dy·xhat and Σ dy for every column (each a TwoSum pair for
    // f64 storage, see `per`).
    let mut partials = vec![0.0f64; blocks * 2 * per::<T>() * cols];
    if let Some(workers) = parallel::workers_for_long_rows(rows, cols, LONG_ROW) {
        let long = LongRows {
            workers: &workers,
            level,
            dy,
            x,
            mean,
            rstd,
            cols,
            w,
            eps,
            stream,
        };
        long.run(block_rows, dx, &mut partials);
        merge_columns::<T>(&partials, cols, dweight, dbias);
        return Ok(());
    }
    let f16c = f16c::available(level);
    parallel::for_fixed_blocks(
        rows,
        cols,
        block_rows,
        dx,
        &mut partials,
        2 * per::<T>() * cols,
        |first, dx, partial| {
            let n = dx.len() / cols;
            let rows = first..first + n;
            let block = RowBlock {
                dy: &dy[rows.start * cols..rows.end * cols],
                x: &x[rows.start * cols..rows.end * cols],
                mean: mean.map(|m| &m[rows.clone()]),
                rstd: &rstd[rows],
                cols,
                w,
                eps,
                dx,
                partial,
                stream,
                f16c,
            };
            dispatch(level, block);
        },
    );
    merge_columns::<T>(&partials, cols, dweight, dbias);
    Ok(())
}

/// A block of float16 rows for [`f16_rows`].
struct F16Rows<'a, S> {
    x: &'a [half::f16],
    dy: &'a [half::f16],
    mean: Option<&'a [S]>,
    rstd: &'a [S],
    cols: usize,
    w: &'a [f64],
    eps: Option<f64>,
    stream: bool,
}

/// float16 rows through F16C (`f16c`): x and dy widened to f32, dx computed by
/// the f32 kernels rounded to odd, then narrowed. The same f64 arithmetic on
/// the same values as the generic path, so the same bits, in dx and in the
/// column sums added to `partial`.
#[inline(always)]
fn f16_rows<S: Element>(rows: F16Rows<'_, S>, dx: &mut [half::f16], partial: &mut [f64]) {
    let F16Rows {
        x,
        dy,
        mean,
        rstd,
        cols,
        w,
        eps,
        stream,
    } = rows;
    let (dw, db) = partial.split_at_mut(per::<F16Odd>() * cols);
    let mut xs = vec![F16Odd::ZERO; cols];
    let mut dys = vec![F16Odd::ZERO; cols];
    let mut dxs = vec![F16Odd::ZERO; cols];
    for (r, dx) in dx.chunks_exact_mut(cols).enumerate() {
        let row = r * cols..(r + 1) * cols;
        f16c::widen(&x[row.clone()], &mut xs);
        f16c::widen(&dy[row], &mut dys);
        let mean = mean.map(|m| m[r].to_f64());
        let rstd = rstd[r].to_f64();
        backward_row_for(&xs, &dys, w, mean, rstd, eps, &mut dxs, dw, db, false);
        f16c::narrow(&dxs, dx, stream);
    }
}

/// Rows longer than `LONG_ROW` and fewer than the threads: the threads share
/// each row, in the blocks `backward_row` sums a long row in, so the bits are
/// those of one thread.
struct LongRows<'a, T: Element> {
    workers: &'a parallel::Workers,
    level: Level,
    dy: &'a [T],
    x: &'a [T],
    mean: Option<&'a [T::Stat]>,
    rstd: &'a [T::Stat],
    cols: usize,
    w: &'a [f64],
    eps: Option<f64>,
    stream: bool,
}

impl<T: Element> LongRows<'_, T> {
    fn run(&self, block_rows: usize, dx: &mut [T], partials: &mut [f64]) {
        let (cols, level, w) = (self.cols, self.level, self.w);
        let per = per::<T>();
        let blocks = dx
            .chunks_mut(block_rows * cols)
            .zip(partials.chunks_mut(2 * per * cols));
        for (i, (dx, partial)) in blocks.enumerate() {
            let (dw, db) = partial.split_at_mut(per * cols);
            for (j, dx) in dx.chunks_exact_mut(cols).enumerate() {
                let r = i * block_rows + j;
                let (x, dy) = (
                    &self.x[r * cols..(r + 1) * cols],
                    &self.dy[r * cols..(r + 1) * cols],
                );
                let mean = self.mean.map(|m| m[r].to_f64());
                let parts = parallel::map_blocks(self.workers, x, SPLIT_BLOCK, |o, xb| {
                    let r = o..o + xb.len();
                    let w = if w.is_empty() { w } else { &w[r.clone()] };
                    dispatch(
                        level,
                        BlockSums {
                            x: xb,
                            dy: &dy[r],
                            w,
                            mean: mean.unwrap_or(0.0),
                            with_squares: self.eps.is_some(),
                        },
                    )
                });
                let k = RowConsts::new(
                    add_sums::<T>(&parts),
                    cols,
                    mean,
                    self.rstd[r].to_f64(),
                    self.eps,
                );
                parallel::for_blocks_mut3(
                    self.workers,
                    (dx, SPLIT_BLOCK),
                    (dw, per * SPLIT_BLOCK),
                    (db, per * SPLIT_BLOCK),
                    |o, dx, dw, db| {
                        let r = o..o + dx.len();
                        let w = if w.is_empty() { w } else { &w[r.clone()] };
                        let (x, dy) = (&x[r.clone()], &dy[r]);
                        dispatch(
                            level,
                            ApplyBlock {
                                x,
                                dy,
                                w,
                                k: &k,
                                dx,
                                dw,
                                db,
                                stream: self.stream,
                            },
                        );
                    },
                );
            }
        }
    }
}

/// The row sums of one block of a long row.
struct BlockSums<'a, T> {
    x: &'a [T],
    dy: &'a [T],
    w: &'a [f64],
    mean: f64,
    with_squares: bool,
}

impl<T: Element> Kernel for BlockSums<'_, T> {
    type Output = Sums;
    #[inline(always)]
    fn run(self) -> Sums {
        let BlockSums {
            x,
            dy,
            w,
            mean,
            with_squares,
        } = self;
        if w.is_empty() {
            row_sums_for::<T, false>(x, dy, w, mean, with_squares)
        } else {
            row_sums_for::<T, true>(x, dy, w, mean, with_squares)
        }
    }
}

/// dx and the column-sum terms of one block of a long row.
struct ApplyBlock<'a, T> {
    x: &'a [T],
    dy: &'a [T],
    w: &'a [f64],
    k: &'a RowConsts,
    dx: &'a mut [T],
    dw: &'a mut [f64],
    db: &'a mut [f64],
    stream: bool,
}

impl<T: Element> Kernel for ApplyBlock<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let ApplyBlock {
            x,
            dy,
            w,
            k,
            dx,
            dw,
            db,
            stream,
        } = self;
        if w.is_empty() {
            apply_row::<T, false>(x, dy, w, k, dx, dw, db, stream);
        } else {
            apply_row::<T, true>(x, dy, w, k, dx, dw, db, stream);
        }
        fence(stream);
    }
}

/// Add the blocks' column sums in block order (compensated for f64 storage):
/// block after block into running totals, contiguous, so the loop vectorises.
fn merge_columns<T: Element>(
    partials: &[f64],
    cols: usize,
    dweight: &mut [T::Stat],
    dbias: &mut [T::Stat],
) {
    let len = 2 * per::<T>() * cols;
    let mut total = vec![0.0f64; len];
    for p in partials.chunks_exact(len) {
        if T::WIDE {
            for (t, v) in total.iter_mut().zip(p) {
                *t += v;
            }
        } else {
            // (sum, error) pairs, as `grad` leaves them.
            for (t, v) in total.chunks_exact_mut(2).zip(p.chunks_exact(2)) {
                let (s, e) = two_sum(t[0], v[0]);
                t[0] = s;
                t[1] += e + v[1];
            }
        }
    }
    let value = |i: usize| {
        if T::WIDE {
            total[i]
        } else {
            let (hi, lo) = (total[2 * i], total[2 * i + 1]);
            if hi.is_finite() {
                hi + lo
            } else {
                hi
            }
        }
    };
    for j in 0..cols {
        dweight[j] = T::Stat::from_f64(value(j));
        dbias[j] = T::Stat::from_f64(value(cols + j));
    }
}

/// A block of rows on one thread; `w` is empty without a weight.
struct RowBlock<'a, T: Element> {
    dy: &'a [T],
    x: &'a [T],
    mean: Option<&'a [T::Stat]>,
    rstd: &'a [T::Stat],
    cols: usize,
    w: &'a [f64],
    eps: Option<f64>,
    dx: &'a mut [T],
    partial: &'a mut [f64],
    stream: bool,
    /// float16 rows may go through F16C (`f16c`): the CPU has it.
    f16c: bool,
}

impl<T: Element> Kernel for RowBlock<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        if self.f16c {
            if let (Some(x), Some(dy), Some(dx)) = (
                T::as_f16_slice(self.x),
                T::as_f16_slice(self.dy),
                T::as_f16_slice_mut(&mut *self.dx),
            ) {
                f16_rows(
                    F16Rows {
                        x,
                        dy,
                        mean: self.mean,
                        rstd: self.rstd,
                        cols: self.cols,
                        w: self.w,
                        eps: self.eps,
                        stream: self.stream,
                    },
                    dx,
                    self.partial,
                );
                fence(self.stream);
                return;
            }
        }
        let cols = self.cols;
        let (dw, db) = self.partial.split_at_mut(per::<T>() * cols);
        let rows = self
            .dx
            .chunks_exact_mut(cols)
            .zip(self.x.chunks_exact(cols))
            .zip(self.dy.chunks_exact(cols));
        for (r, ((dx, x), dy)) in rows.enumerate() {
            let mean = self.mean.map(|m| m[r].to_f64());
            let rstd = self.rstd[r].to_f64();
            backward_row_for(x, dy, self.w, mean, rstd, self.eps, dx, dw, db, self.stream);
        }
        fence(self.stream);
    }
}

/// [`backward_row`] with the weight's presence (`W`) read from `w` at run time.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_row_for<T: Element>(
    x: &[T],
    dy: &[T],
    w: &[f64],
    mean: Option<f64>,
    rstd: f64,
    eps: Option<f64>,
    dx: &mut [T],
    dw: &mut [f64],
    db: &mut [f64],
    stream: bool,
) {
    if w.is_empty() {
        backward_row::<T, false>(x, dy, w, mean, rstd, eps, dx, dw, db, stream);
    } else {
        backward_row::<T, true>(x, dy, w, mean, rstd, eps, dx, dw, db, stream);
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_row<T: Element, const W: bool>(
    x: &[T],
    dy: &[T],
    w: &[f64],
    mean: Option<f64>,
    rstd: f64,
    eps: Option<f64>,
    dx: &mut [T],
    dw: &mut [f64],
    db: &mut [f64],
    stream: bool,
) {
    let m = mean.unwrap_or(0.0);
    let sums = if x.len() >= LONG_ROW {
        // A plain loop: see `stats::Blocks` on closures and target features.
        let n = x.len();
        let mut parts = Vec::with_capacity(n.div_ceil(SPLIT_BLOCK));
        let mut o = 0;
        while o < n {
            let r = o..(o + SPLIT_BLOCK).min(n);
            let wb = if W { &w[r.clone()] } else { w };
            parts.push(row_sums_for::<T, W>(
                &x[r.clone()],
                &dy[r],
                wb,
                m,
                eps.is_some(),
            ));
            o += SPLIT_BLOCK;
        }
        add_sums::<T>(&parts)
    } else {
        row_sums_for::<T, W>(x, dy, w, m, eps.is_some())
    };
    let k = RowConsts::new(sums, x.len(), mean, rstd, eps);
    apply_row::<T, W>(x, dy, w, &k, dx, dw, db, stream);
}

/// Per-block row sums added in block order.
fn add_sums<T: Element>(parts: &[Sums]) -> Sums {
    std::array::from_fn(|i| add_block_pairs::<T>(parts.iter().map(|p| p[i])))
}

impl RowConsts {
    /// From a row's sums. `mean` None: RMSNorm, nothing centred. With `eps`,
    /// rstd comes from the row's own Σu² rather than the `rstd` given.
    /// Inlined, so that its FMAs are compiled with the caller's target features.
    #[inline(always)]
    fn new(
        [su, sg, sgu, suu]: Sums,
        n: usize,
        mean: Option<f64>,
        rstd: f64,
        eps: Option<f64>,
    ) -> Self {
        let n = n as f64;
        // Σu, which corrects the mean; RMSNorm centres nothing.
        let centre = if mean.is_some() { su.0 } else { 0.0 };
        let c = centre / n;
        // No closures here: one may be compiled out of line, without the
        // caller's target features (and its FMAs in software).
        let mut rstd = (rstd, 0.0);
        if let Some(eps) = eps {
            let s = Centred {
                sum: centre,
                squares: suu.0,
                squares_lo: suu.1,
            };
            let exact = rstd_from(s, n, eps);
            if exact.0.is_finite() {
                rstd = exact;
            }
        }
        let (rstd, rstd_lo) = rstd;
        let (a, a_lo) = if mean.is_some() {
            div_pair(sg, n)
        } else {
            (0.0, 0.0)
        };
        // b = mean(g·xhat) = rstd·(Σg·u − c·Σg)/n.
        let (cg, cg_lo) = two_prod(c, sg.0);
        let (t, t_lo) = two_sum(sgu.0, -cg);
        let t_lo = t_lo + sgu.1 - c.mul_add(sg.1, cg_lo);
        let (t, t_lo) = div_pair((t, t_lo), n);
        let (b, b_lo) = two_prod(rstd, t);
        RowConsts {
            mean: mean.unwrap_or(0.0),
            c,
            rstd,
            rstd_lo,
            a,
            a_lo,
            b,
            b_lo: rstd.mul_add(t_lo, rstd_lo.mul_add(t, b_lo)),
        }
    }
}

/// dx of one row (or one block of a long row) and its terms of the column sums.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn apply_row<T: Element, const W: bool>(
    x: &[T],
    dy: &[T],
    w: &[f64],
    k: &RowConsts,
    dx: &mut [T],
    dw: &mut [f64],
    db: &mut [f64],
    stream: bool,
) {
    let n = x.len();
    let per = per::<T>();
    // Elementwise from here on, so the chunks may follow dx's alignment.
    let head = if stream { unaligned_head(dx).min(n) } else { 0 };
    let full = head + (n - head) / LANES * LANES;
    let wr = |r: std::ops::Range<usize>| if W { &w[r] } else { &[][..] };
    let pr = |r: &std::ops::Range<usize>| per * r.start..per * r.end;
    grad::<T, W>(
        &x[..head],
        &dy[..head],
        wr(0..head),
        k,
        &mut dx[..head],
        &mut dw[pr(&(0..head))],
        &mut db[pr(&(0..head))],
    );
    let mut o = head;
    while o < full {
        let r = o..o + LANES;
        let mut out = [T::ZERO; LANES];
        grad::<T, W>(
            &x[r.clone()],
            &dy[r.clone()],
            wr(r.clone()),
            k,
            &mut out,
            &mut dw[pr(&r)],
            &mut db[pr(&r)],
        );
        store_chunk(&mut dx[r], &out, stream);
        o += LANES;
    }
    grad::<T, W>(
        &x[full..],
        &dy[full..],
        wr(full..n),
        k,
        &mut dx[full..],
        &mut dw[pr(&(full..n))],
        &mut db[pr(&(full..n))],
    );
}

/// Column-sum entries per column: one f64 for narrow storage, a (sum, error)
/// pair for f64 storage, whose dweight/dbias would otherwise lose digits to
/// cancellation across rows.
const fn per<T: Element>() -> usize {
    if T::WIDE {
        1
    } else {
        2
    }
}

/// Per-row constants of the gradient, each with its low part (used for f64
/// storage only): `x − mean − c` is the centred value, `a = mean(g)`,
/// `b = mean(g·xhat)`.
struct RowConsts {
    mean: f64,
    c: f64,
    rstd: f64,
    rstd_lo: f64,
    a: f64,
    a_lo: f64,
    b: f64,
    b_lo: f64,
}

/// dx, and the column sums' terms, for elements of equal-length slices of at
/// most LANES; for a storage type with a faster whole-chunk rounding
/// (`Element::CHUNKED`), a whole chunk of dx is rounded by `from_f64_chunk`.
#[inline(always)]
fn grad<T: Element, const W: bool>(
    x: &[T],
    dy: &[T],
    w: &[f64],
    k: &RowConsts,
    dx: &mut [T],
    dw: &mut [f64],
    db: &mut [f64],
) {
    let mut out = [0.0; LANES];
    let n = x.len().min(LANES);
    for j in 0..n {
        let d = dy[j].to_f64();
        if T::WIDE {
            let g = if W { d * w[j] } else { d };
            let xhat = ((x[j].to_f64() - k.mean) - k.c) * k.rstd;
            set(&mut out, dx, j, k.rstd * (-xhat).mul_add(k.b, g - k.a));
            dw[j] = d.mul_add(xhat, dw[j]);
            db[j] += d;
            continue;
        }
        // xhat = p + pl, from the centred pair u + ul and the rstd pair.
        let (u0, e0) = two_sum(x[j].to_f64(), -k.mean);
        let (u, e1) = two_sum(u0, -k.c);
        let ul = e0 + e1;
        let (p, pe) = two_prod(u, k.rstd);
        let pl = u.mul_add(k.rstd_lo, ul.mul_add(k.rstd, pe));
        // (g − a) − xhat·b as h + hl, then times rstd, rounded once.
        let (g, gl) = if W { two_prod(d, w[j]) } else { (d, 0.0) };
        let (xb, xbe) = two_prod(p, k.b);
        let xbl = p.mul_add(k.b_lo, pl.mul_add(k.b, xbe));
        let (h0, h0e) = two_sum(g, -k.a);
        let (h, he) = two_sum(h0, -xb);
        let hl = ((h0e + he) + (gl - k.a_lo)) - xbl;
        let (o, oe) = two_prod(k.rstd, h);
        set(
            &mut out,
            dx,
            j,
            o + k.rstd.mul_add(hl, k.rstd_lo.mul_add(h, oe)),
        );
        // Column sums as (sum, error) pairs: dy·xhat split exactly, each
        // addition's rounding error kept (TwoSum).
        let (t, te) = two_prod(d, p);
        let (s, e) = two_sum(dw[2 * j], t);
        dw[2 * j] = s;
        dw[2 * j + 1] += e + d.mul_add(pl, te);
        let (s, e) = two_sum(db[2 * j], d);
        db[2 * j] = s;
        db[2 * j + 1] += e;
    }
    if T::CHUNKED {
        if n == LANES {
            dx.copy_from_slice(&T::from_f64_chunk(&out));
        } else {
            for j in 0..n {
                dx[j] = T::from_f64(out[j]);
            }
        }
    }
}

/// dx[j] = v: rounded now, or kept in `out` for [`grad`]'s whole-chunk rounding.
#[inline(always)]
fn set<T: Element>(out: &mut [f64; LANES], dx: &mut [T], j: usize, v: f64) {
    if T::CHUNKED {
        out[j] = v;
    } else {
        dx[j] = T::from_f64(v);
    }
}

/// A row's sums [Σu, Σg, Σg·u, Σu²] (u = x − mean, g = dy·weight), each a pair
/// `(sum, rest)`; Σu² only with `E` (else 0).
type Sums = [(f64, f64); 4];

/// [`Sums`] of one row. Narrow storage: plain f64 lanes, rests 0. f64 storage:
/// every difference, product and square split exactly (TwoSum, FMA) and every
/// sum error-free, since Σu corrects the mean and the others cancel in dx.
/// Plain loops over LANES-long chunks (a length known at compile time, which is
/// what vectorises) calling inlined functions: a closure may be compiled out of
/// line, and then without the caller's SIMD target features.
#[inline(always)]
fn row_sums<T: Element, const W: bool, const E: bool>(
    x: &[T],
    dy: &[T],
    w: &[f64],
    mean: f64,
) -> Sums {
    let n = x.len();
    let full = n / LANES * LANES;
    let wr = |r: std::ops::Range<usize>| if W { &w[r] } else { &[][..] };
    if T::WIDE {
        let mut acc = [[0.0; LANES]; 4];
        let mut o = 0;
        while o < full {
            let r = o..o + LANES;
            wide_sums::<T, W, E>(&mut acc, &x[r.clone()], &dy[r.clone()], wr(r), mean);
            o += LANES;
        }
        wide_sums::<T, W, E>(&mut acc, &x[full..], &dy[full..], wr(full..n), mean);
        return acc.map(|a| (reduce(a), 0.0));
    }
    let mut acc = [Exact::default(); 4];
    let mut o = 0;
    while o < full {
        let r = o..o + LANES;
        exact_sums::<T, W, E>(&mut acc, &x[r.clone()], &dy[r.clone()], wr(r), mean);
        o += LANES;
    }
    exact_sums::<T, W, E>(&mut acc, &x[full..], &dy[full..], wr(full..n), mean);
    acc.map(|a| a.total())
}

/// Add up to LANES elements into the plain lanes of [`row_sums`].
#[inline(always)]
fn wide_sums<T: Element, const W: bool, const E: bool>(
    acc: &mut [Lanes; 4],
    x: &[T],
    dy: &[T],
    w: &[f64],
    mean: f64,
) {
    for j in 0..x.len().min(LANES) {
        let d = dy[j].to_f64();
        let g = if W { d * w[j] } else { d };
        let u = x[j].to_f64() - mean;
        acc[0][j] += u;
        acc[1][j] += g;
        acc[2][j] = g.mul_add(u, acc[2][j]);
        if E {
            acc[3][j] = u.mul_add(u, acc[3][j]);
        }
    }
}

/// Add up to LANES elements into the error-free lanes of [`row_sums`].
#[inline(always)]
fn exact_sums<T: Element, const W: bool, const E: bool>(
    acc: &mut [Exact; 4],
    x: &[T],
    dy: &[T],
    w: &[f64],
    mean: f64,
) {
    for j in 0..x.len().min(LANES) {
        let d = dy[j].to_f64();
        let (g, gl) = if W { two_prod(d, w[j]) } else { (d, 0.0) };
        let (u, ul) = two_sum(x[j].to_f64(), -mean);
        acc[0].add(j, u);
        acc[0].lo[j] += ul;
        acc[1].add(j, g);
        acc[1].lo[j] += gl;
        let (p, pe) = two_prod(g, u);
        acc[2].add(j, p);
        acc[2].lo[j] += g.mul_add(ul, gl.mul_add(u, pe));
        if E {
            let (q, qe) = two_prod(u, u);
            acc[3].add(j, q);
            acc[3].lo[j] += (2.0 * u).mul_add(ul, qe);
        }
    }
}

/// [`row_sums`] with `E` chosen at run time.
#[inline(always)]
fn row_sums_for<T: Element, const W: bool>(
    x: &[T],
    dy: &[T],
    w: &[f64],
    mean: f64,
    with_squares: bool,
) -> Sums {
    if with_squares {
        row_sums::<T, W, true>(x, dy, w, mean)
    } else {
        row_sums::<T, W, false>(x, dy, w, mean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::layer_norm::{layer_norm_forward, Forward, Input};
    use crate::kernels::simd::supported_levels;
    use crate::kernels::stats::Norm;
    use crate::kernels::test_data as data;

    type Grads<T> = (Vec<T>, Vec<<T as Element>::Stat>, Vec<<T as Element>::Stat>);

    fn grads<T: Element>(
        level: Level,
        rows: usize,
        cols: usize,
        offset: f64,
        weighted: bool,
    ) -> Grads<T> {
        grads_of::<T>(Norm::Layer, level, rows, cols, offset, weighted)
    }

    fn grads_of<T: Element>(
        norm: Norm,
        level: Level,
        rows: usize,
        cols: usize,
        offset: f64,
        weighted: bool,
    ) -> Grads<T> {
        grads_with::<T>(norm, level, rows, cols, offset, weighted, None)
    }

    fn grads_with<T: Element>(
        norm: Norm,
        level: Level,
        rows: usize,
        cols: usize,
        offset: f64,
        weighted: bool,
        eps: Option<f64>,
    ) -> Grads<T> {
        let x: Vec<T> = data(rows * cols, 1, offset)
            .into_iter()
            .map(T::from_f64)
            .collect();
        let dy: Vec<T> = data(rows * cols, 2, 0.0)
            .into_iter()
            .map(T::from_f64)
            .collect();
        let w: Vec<T> = data(cols, 3, 1.0).into_iter().map(T::from_f64).collect();
        let w = weighted.then_some(&w[..]);
        let (mut y, mut mean, mut rstd) = (
            vec![T::ZERO; rows * cols],
            vec![T::Stat::ZERO; rows],
            vec![T::Stat::ZERO; rows],
        );
        let fwd = Forward {
            norm,
            x: Input::Separate(&x),
            residual: None,
            cols,
            weight: w.map(Param::Storage),
            bias: None,
            eps: 1e-5,
        };
        layer_norm_forward(level, fwd, &mut y, None, &mut mean, &mut rstd).unwrap();
        let (mut dx, mut dw, mut db) = (
            vec![T::ZERO; rows * cols],
            vec![T::Stat::ZERO; cols],
            vec![T::Stat::ZERO; cols],
        );
        let args = Backward {
            dy: &dy,
            x: &x,
            mean: (norm == Norm::Layer).then_some(&mean[..]),
            rstd: &rstd,
            cols,
            weight: w.map(Param::Storage),
            eps,
        };
        layer_norm_backward(level, args, &mut dx, &mut dw, &mut db).unwrap();
        (dx, dw, db)
    }

    #[test]
    fn every_level_matches_scalar() {
        for cols in [1, 5, 32, 33, 300] {
            for weighted in [false, true] {
                let scalar32 = grads::<f32>(Level::Scalar, 9, cols, 3.0, weighted);
                let scalar64 = grads::<f64>(Level::Scalar, 9, cols, 3.0, weighted);
                // float16 takes the F16C path from AVX2 on (`f16_rows`); bfloat16
                // rounds whole chunks (`from_f64_chunk`).
                let scalar16 = grads::<half::f16>(Level::Scalar, 9, cols, 3.0, weighted);
                let scalar_b16 = grads::<half::bf16>(Level::Scalar, 9, cols, 3.0, weighted);
                for level in supported_levels() {
                    assert_eq!(
                        grads::<half::f16>(level, 9, cols, 3.0, weighted),
                        scalar16,
                        "{level} f16 cols {cols}"
                    );
                    assert_eq!(
                        grads::<half::bf16>(level, 9, cols, 3.0, weighted),
                        scalar_b16,
                        "{level} bf16 cols {cols}"
                    );
                    assert_eq!(
                        grads::<f32>(level, 9, cols, 3.0, weighted),
                        scalar32,
                        "{level} f32 cols {cols}"
                    );
                    assert_eq!(
                        grads::<f64>(level, 9, cols, 3.0, weighted),
                        scalar64,
                        "{level} f64 cols {cols}"
                    );
                }
            }
        }
    }

    #[test]
    fn column_sums_do_not_depend_on_the_thread_count() {
        let _threads = crate::parallel::thread_count_lock();
        crate::parallel::set_num_threads(1).unwrap();
        let one = grads::<f32>(Level::Scalar, 700, 129, 0.0, true);
        crate::parallel::set_num_threads(3).unwrap();
        let three = grads::<f32>(Level::Scalar, 700, 129, 0.0, true);
        assert_eq!(one, three);
    }

    #[test]
    fn long_rows_are_split_without_changing_bits() {
        let _threads = crate::parallel::thread_count_lock();
        let cols = LONG_ROW + SPLIT_BLOCK / 2 + 3;
        crate::parallel::set_num_threads(1).unwrap();
        let one32 = grads::<f32>(Level::Scalar, 2, cols, 7.0, true);
        let one64 = grads::<f64>(Level::Scalar, 2, cols, 7.0, false);
        crate::parallel::set_num_threads(3).unwrap();
        assert_eq!(grads::<f32>(Level::Scalar, 2, cols, 7.0, true), one32);
        assert_eq!(grads::<f64>(Level::Scalar, 2, cols, 7.0, false), one64);
    }

    #[test]
    fn gradient_of_offset_rows_matches_the_float64_formula() {
        // f32 rows offset by 1e4: the f32-rounded mean is corrected in the kernel.
        let (rows, cols) = (3, 200);
        let (dx, dw, db) = grads::<f32>(Level::Scalar, rows, cols, 1.0e4, false);
        let x: Vec<f64> = data(rows * cols, 1, 1.0e4)
            .into_iter()
            .map(|v| v as f32 as f64)
            .collect();
        let dy: Vec<f64> = data(rows * cols, 2, 0.0)
            .into_iter()
            .map(|v| v as f32 as f64)
            .collect();
        let (mut want_dw, mut want_db) = (vec![0.0; cols], vec![0.0; cols]);
        for r in 0..rows {
            let (x, dy) = (&x[r * cols..(r + 1) * cols], &dy[r * cols..(r + 1) * cols]);
            let n = cols as f64;
            let mean = x.iter().sum::<f64>() / n;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            // The rstd the kernel is given: rounded to f32 by the forward pass.
            let rstd = (1.0 / (var + 1e-5).sqrt()) as f32 as f64;
            let xhat: Vec<f64> = x.iter().map(|v| (v - mean) * rstd).collect();
            let a = dy.iter().sum::<f64>() / n;
            let b = dy.iter().zip(&xhat).map(|(g, h)| g * h).sum::<f64>() / n;
            for j in 0..cols {
                let want = rstd * (dy[j] - a - xhat[j] * b);
                let got = dx[r * cols + j] as f64;
                assert!(
                    (got - want).abs()
                        <= 2.0 * f32::EPSILON as f64 * want.abs().max(2f64.powi(-10)),
                    "{got} vs {want}"
                );
                want_dw[j] += dy[j] * xhat[j];
                want_db[j] += dy[j];
            }
        }
        for j in 0..cols {
            assert!((dw[j] as f64 - want_dw[j]).abs() <= 1e-6 * want_dw[j].abs().max(1.0));
            assert_eq!(db[j], want_db[j] as f32);
        }
    }

    #[test]
    fn rms_gradient_matches_the_float64_formula() {
        let (rows, cols) = (3, 77);
        let (dx, dw, _) = grads_of::<f64>(Norm::Rms, Level::Scalar, rows, cols, 0.5, true);
        let x = data(rows * cols, 1, 0.5);
        let dy = data(rows * cols, 2, 0.0);
        let w = data(cols, 3, 1.0);
        let mut want_dw = vec![0.0; cols];
        for r in 0..rows {
            let (x, dy) = (&x[r * cols..(r + 1) * cols], &dy[r * cols..(r + 1) * cols]);
            let ms = x.iter().map(|v| v * v).sum::<f64>() / cols as f64;
            let rstd = 1.0 / (ms + 1e-5).sqrt();
            let gx = (0..cols).map(|j| dy[j] * w[j] * x[j]).sum::<f64>() / cols as f64;
            for j in 0..cols {
                let want = rstd * (dy[j] * w[j] - x[j] * rstd * rstd * gx);
                let got = dx[r * cols + j];
                assert!(
                    (got - want).abs() <= 1e-14 * want.abs().max(1.0),
                    "{got} vs {want}"
                );
                want_dw[j] += dy[j] * x[j] * rstd;
            }
        }
        for j in 0..cols {
            assert!((dw[j] - want_dw[j]).abs() <= 1e-14 * want_dw[j].abs().max(1.0));
        }
    }

    #[test]
    fn with_eps_the_gradient_is_that_of_the_exact_rstd() {
        // f32 rows: the rstd handed over is rounded to f32; given eps, the
        // kernel recomputes it and dx is correctly rounded from the exact formula.
        let (rows, cols) = (4, 300);
        let (dx, _, _) = grads_with::<f32>(
            Norm::Layer,
            Level::Scalar,
            rows,
            cols,
            1.0e3,
            false,
            Some(1e-5),
        );
        let x: Vec<f64> = data(rows * cols, 1, 1.0e3)
            .into_iter()
            .map(|v| v as f32 as f64)
            .collect();
        let dy: Vec<f64> = data(rows * cols, 2, 0.0)
            .into_iter()
            .map(|v| v as f32 as f64)
            .collect();
        for r in 0..rows {
            let (x, dy) = (&x[r * cols..(r + 1) * cols], &dy[r * cols..(r + 1) * cols]);
            let n = cols as f64;
            let mean = x.iter().sum::<f64>() / n;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            let rstd = 1.0 / (var + 1e-5).sqrt();
            let xhat: Vec<f64> = x.iter().map(|v| (v - mean) * rstd).collect();
            let a = dy.iter().sum::<f64>() / n;
            let b = dy.iter().zip(&xhat).map(|(g, h)| g * h).sum::<f64>() / n;
            for j in 0..cols {
                let want = rstd * (dy[j] - a - xhat[j] * b);
                let got = dx[r * cols + j] as f64;
                let ulp = f32::EPSILON as f64 * want.abs().max(2f64.powi(-10));
                assert!((got - want).abs() <= 0.6 * ulp, "{got} vs {want}");
            }
        }
    }

    #[test]
    fn one_element_rows_have_zero_dx() {
        let (dx, _, db) = grads::<f64>(Level::Scalar, 4, 1, 5.0, true);
        assert!(dx.iter().all(|&v| v == 0.0));
        assert_eq!(db.len(), 1);
    }
}
