//! LayerNorm and RMSNorm forward: `y = (x − mean)·rstd·weight + bias` per row,
//! with `mean = 0` and no bias for RMSNorm; optionally of the residual stream
//! `s = x + residual` (in the storage type), written out in the same pass.

use super::element::{Element, F16Odd, Param};
use super::f16c;
use super::simd::{dispatch, Kernel, Level};
use super::stats::{
    add_blocks, add_centred, block_centred_sums, block_shifted_sum, norm_stats, rms_stats_with,
    row_stats_with, two_prod, two_sum, Centred, Norm, RowStats, RowSums, LANES, LONG_ROW,
    SPLIT_BLOCK,
};
use super::stream::{fence, store_chunk, unaligned_head, worth_streaming};
use super::KernelError;
use crate::parallel::{self, PerRow};

/// Where the input rows are: a separate array, or the output itself (in place).
#[derive(Clone, Copy)]
pub enum Input<'a, T> {
    Separate(&'a [T]),
    InPlace,
}

impl<'a, T> Input<'a, T> {
    /// Rows `first..first + n` (of `cols` elements).
    fn rows(self, cols: usize, first: usize, n: usize) -> Self {
        match self {
            Input::Separate(x) => Input::Separate(&x[first * cols..(first + n) * cols]),
            Input::InPlace => Input::InPlace,
        }
    }

    /// The same input as float16, for the F16C path (taken only when `T` is float16).
    fn to_f16(self) -> Input<'a, half::f16>
    where
        T: Element,
    {
        match self {
            Input::Separate(x) => {
                Input::Separate(T::as_f16_slice(x).expect("the F16C path runs on float16"))
            }
            Input::InPlace => Input::InPlace,
        }
    }

    /// Row `r` of a separate input; None in place.
    fn row(self, cols: usize, r: usize) -> Option<&'a [T]> {
        match self {
            Input::Separate(x) => Some(&x[r * cols..(r + 1) * cols]),
            Input::InPlace => None,
        }
    }
}

/// Everything one forward call needs besides the output buffers. With a
/// `residual`, the rows normalised are `s = x + residual`, which go to the
/// `sum` output; `Input::InPlace` there means `sum` holds the residual on entry.
#[derive(Clone, Copy)]
pub struct Forward<'a, T: Element> {
    pub norm: Norm,
    pub x: Input<'a, T>,
    pub residual: Option<Input<'a, T>>,
    pub cols: usize,
    pub weight: Option<Param<'a, T>>,
    pub bias: Option<Param<'a, T>>,
    pub eps: f64,
}

/// Normalise the rows of `x` (`rows × cols`, row-major) into `y`, and store each
/// row's mean and rstd. With `Input::InPlace`, `y` holds the input on entry.
/// `sum` is where `x + residual` goes, and must be given with a residual only.
pub fn layer_norm_forward<T: Element>(
    level: Level,
    args: Forward<'_, T>,
    y: &mut [T],
    sum: Option<&mut [T]>,
    mean: &mut [T::Stat],
    rstd: &mut [T::Stat],
) -> Result<(), KernelError> {
    let Forward {
        norm,
        x,
        residual,
        cols,
        weight,
        bias,
        eps,
    } = args;
    let rows = mean.len();
    check_len("y", y.len(), rows * cols)?;
    check_len("rstd", rstd.len(), rows)?;
    if let Input::Separate(x) = x {
        check_len("x", x.len(), rows * cols)?;
    }
    match (residual, &sum) {
        (Some(_), None) => return Err(KernelError::Missing("sum")),
        (None, Some(_)) => return Err(KernelError::Missing("residual")),
        (Some(r), Some(s)) => {
            check_len("sum", s.len(), rows * cols)?;
            if let Input::Separate(r) = r {
                check_len("residual", r.len(), rows * cols)?;
            }
        }
        (None, None) => {}
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
    let stream = worth_streaming(std::mem::size_of_val(y));
    // Converted once per call, not once per row.
    let weight = weight.map(Param::widen);
    let bias = bias.map(Param::widen);
    let w = weight.as_deref().unwrap_or(&[]);
    let b = bias.as_deref().unwrap_or(&[]);
    if let Some(workers) = parallel::workers_for_long_rows(rows, cols, LONG_ROW) {
        let long = LongRows {
            workers: &workers,
            level,
            norm,
            x,
            residual,
            cols,
            w,
            b,
            eps,
            stream,
        };
        long.run(y, sum, mean, rstd);
        return Ok(());
    }
    let f16c = f16c::available(level);
    let parts = (
        (PerRow(y, cols), sum.map(|s| PerRow(s, cols))),
        PerRow(mean, 1),
        PerRow(rstd, 1),
    );
    parallel::for_row_blocks(rows, cols, parts, |first, parts| {
        let ((PerRow(y, _), sum), PerRow(mean, _), PerRow(rstd, _)) = parts;
        let n = mean.len();
        let block = RowBlock {
            norm,
            x: x.rows(cols, first, n),
            residual: residual.map(|r| r.rows(cols, first, n)),
            cols,
            w,
            b,
            eps,
            stream,
            f16c,
            y,
            sum: sum.map(|PerRow(s, _)| s),
            mean,
            rstd,
        };
        dispatch(level, block);
    });
    Ok(())
}

/// Rows longer than `LONG_ROW` and fewer than the threads: each row's blocks
/// are shared out, for the statistics and again for the normalisation. The
/// blocks and the order their sums are added in are those of `stats::Blocks`,
/// so the bits are those of a single thread.
struct LongRows<'a, T: Element> {
    workers: &'a parallel::Workers,
    level: Level,
    norm: Norm,
    x: Input<'a, T>,
    residual: Option<Input<'a, T>>,
    cols: usize,
    w: &'a [f64],
    b: &'a [f64],
    eps: f64,
    stream: bool,
}

impl<T: Element> LongRows<'_, T> {
    fn run(&self, y: &mut [T], sum: Option<&mut [T]>, mean: &mut [T::Stat], rstd: &mut [T::Stat]) {
        let cols = self.cols;
        let mut sums = sum.map(|s| s.chunks_exact_mut(cols));
        for (r, y) in y.chunks_exact_mut(cols).enumerate() {
            let mut x = self.x.row(cols, r);
            if let (Some(s), Some(residual)) = (sums.as_mut().and_then(|s| s.next()), self.residual)
            {
                let residual = residual.row(cols, r);
                let xr = x.unwrap_or(y);
                parallel::for_blocks_mut(self.workers, s, SPLIT_BLOCK, |o, s| {
                    let range = o..o + s.len();
                    dispatch(
                        self.level,
                        AddBlock {
                            x: &xr[range.clone()],
                            residual: residual.map(|r| &r[range]),
                            s,
                        },
                    );
                });
                x = Some(s);
            }
            let stats = match self.norm {
                Norm::Layer => row_stats_with(x.unwrap_or(y), self.eps, self),
                Norm::Rms => rms_stats_with(x.unwrap_or(y), self.eps, self),
            };
            parallel::for_blocks_mut(self.workers, y, SPLIT_BLOCK, |o, y| {
                let range = o..o + y.len();
                let x = x.map(|x| &x[range.clone()]);
                let w = if self.w.is_empty() {
                    self.w
                } else {
                    &self.w[range.clone()]
                };
                let b = if self.b.is_empty() {
                    self.b
                } else {
                    &self.b[range.clone()]
                };
                dispatch(
                    self.level,
                    NormaliseBlock {
                        x,
                        y,
                        stats: &stats,
                        w,
                        b,
                        stream: self.stream,
                    },
                );
            });
            mean[r] = T::Stat::from_f64(stats.mean);
            rstd[r] = T::Stat::from_f64(stats.rstd);
        }
    }
}

impl<T: Element> RowSums<T> for LongRows<'_, T> {
    fn shifted_sum(&self, x: &[T], k: f64) -> f64 {
        let level = self.level;
        let parts = parallel::map_blocks(self.workers, x, SPLIT_BLOCK, |_, b| {
            dispatch(level, BlockSum { x: b, m: k })
        });
        add_blocks::<T>(parts)
    }

    fn centred_sums(&self, x: &[T], m: f64) -> Centred {
        let level = self.level;
        let parts = parallel::map_blocks(self.workers, x, SPLIT_BLOCK, |_, b| {
            dispatch(level, BlockMoments { x: b, m })
        });
        add_centred::<T>(&parts)
    }
}

struct BlockSum<'a, T> {
    x: &'a [T],
    m: f64,
}

impl<T: Element> Kernel for BlockSum<'_, T> {
    type Output = f64;
    #[inline(always)]
    fn run(self) -> f64 {
        block_shifted_sum(self.x, self.m)
    }
}

struct BlockMoments<'a, T> {
    x: &'a [T],
    m: f64,
}

impl<T: Element> Kernel for BlockMoments<'_, T> {
    type Output = Centred;
    #[inline(always)]
    fn run(self) -> Centred {
        block_centred_sums(self.x, self.m)
    }
}

/// One block of a long row, normalised.
struct NormaliseBlock<'a, T> {
    x: Option<&'a [T]>,
    y: &'a mut [T],
    stats: &'a RowStats,
    w: &'a [f64],
    b: &'a [f64],
    stream: bool,
}

impl<T: Element> Kernel for NormaliseBlock<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        normalise_row(self.x, self.y, self.stats, self.w, self.b, self.stream);
        fence(self.stream);
    }
}

fn check_len(name: &'static str, got: usize, expected: usize) -> Result<(), KernelError> {
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::Length {
            name,
            expected,
            got,
        })
    }
}

/// `s = x + residual` for one block of a long row.
struct AddBlock<'a, T> {
    x: &'a [T],
    residual: Option<&'a [T]>,
    s: &'a mut [T],
}

impl<T: Element> Kernel for AddBlock<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        add_residual(self.x, self.residual, self.s);
    }
}

/// `s = x + residual`, rounded to the storage type as NumPy's `x + residual`
/// is (the f64 sum of two narrower values is exact, so it rounds once);
/// `residual` None: `s` holds it on entry.
#[inline(always)]
fn add_residual<T: Element>(x: &[T], residual: Option<&[T]>, s: &mut [T]) {
    match residual {
        Some(r) => {
            for ((s, x), r) in s.iter_mut().zip(x).zip(r) {
                *s = T::from_f64(x.to_f64() + r.to_f64());
            }
        }
        None => {
            for (s, x) in s.iter_mut().zip(x) {
                *s = T::from_f64(x.to_f64() + s.to_f64());
            }
        }
    }
}

/// A contiguous block of rows, run on one thread at one SIMD level.
/// `w` and `b` are empty when absent.
struct RowBlock<'a, T: Element> {
    norm: Norm,
    x: Input<'a, T>,
    residual: Option<Input<'a, T>>,
    cols: usize,
    w: &'a [f64],
    b: &'a [f64],
    eps: f64,
    stream: bool,
    /// float16 rows may go through F16C (`f16c`): the CPU has it.
    f16c: bool,
    y: &'a mut [T],
    sum: Option<&'a mut [T]>,
    mean: &'a mut [T::Stat],
    rstd: &'a mut [T::Stat],
}

impl<T: Element> Kernel for RowBlock<'_, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        if self.f16c {
            if let Some(y) = T::as_f16_slice_mut(&mut *self.y) {
                let rows = F16Rows {
                    norm: self.norm,
                    x: self.x.to_f16(),
                    residual: self.residual.map(Input::to_f16),
                    cols: self.cols,
                    w: self.w,
                    b: self.b,
                    eps: self.eps,
                    stream: self.stream,
                };
                let sum = self.sum.and_then(T::as_f16_slice_mut);
                f16_rows(rows, y, sum, self.mean, self.rstd);
                fence(self.stream);
                return;
            }
        }
        let RowBlock {
            norm,
            x,
            residual,
            cols,
            w,
            b,
            eps,
            stream,
            ..
        } = self;
        let mut sums = self.sum.map(|s| s.chunks_exact_mut(cols));
        for (r, y) in self.y.chunks_exact_mut(cols).enumerate() {
            let s = sums.as_mut().and_then(|s| s.next());
            let stats = match (s, residual) {
                (Some(s), Some(residual)) => {
                    add_residual(x.row(cols, r).unwrap_or(y), residual.row(cols, r), s);
                    let stats = norm_stats(norm, s, eps);
                    normalise_row(Some(s), y, &stats, w, b, stream);
                    stats
                }
                _ => match x {
                    Input::Separate(x) => {
                        let x = &x[r * cols..(r + 1) * cols];
                        let stats = norm_stats(norm, x, eps);
                        normalise_row(Some(x), y, &stats, w, b, stream);
                        stats
                    }
                    Input::InPlace => {
                        let stats = norm_stats(norm, y, eps);
                        normalise_row(None, y, &stats, w, b, stream);
                        stats
                    }
                },
            };
            self.mean[r] = T::Stat::from_f64(stats.mean);
            self.rstd[r] = T::Stat::from_f64(stats.rstd);
        }
        fence(stream);
    }
}

/// A block of float16 rows for [`f16_rows`]: `x` in place means y holds it;
/// `residual` in place means the sum output holds it.
struct F16Rows<'a> {
    norm: Norm,
    x: Input<'a, half::f16>,
    residual: Option<Input<'a, half::f16>>,
    cols: usize,
    w: &'a [f64],
    b: &'a [f64],
    eps: f64,
    stream: bool,
}

/// float16 rows through F16C (`f16c`): each row widened to f32, normalised by
/// the f32 kernels into an f32 row rounded to odd, then narrowed, which gives
/// the bits of the generic path's element-by-element conversions. With a
/// residual, `s = x + residual` is rounded the same way and narrowed into
/// `sum`, then widened back: the row normalised is the stored float16 `s`. The
/// statistics are those of the same values, so mean and rstd are the generic
/// path's too.
#[inline(always)]
fn f16_rows<S: Element>(
    rows: F16Rows<'_>,
    y: &mut [half::f16],
    sum: Option<&mut [half::f16]>,
    mean: &mut [S],
    rstd: &mut [S],
) {
    let F16Rows {
        norm,
        x,
        residual,
        cols,
        w,
        b,
        eps,
        stream,
    } = rows;
    let (mut xs, mut ys) = (vec![F16Odd::ZERO; cols], vec![F16Odd::ZERO; cols]);
    let mut sums = sum.map(|s| s.chunks_exact_mut(cols));
    for (r, y) in y.chunks_exact_mut(cols).enumerate() {
        f16c::widen(x.row(cols, r).unwrap_or(y), &mut xs);
        if let (Some(residual), Some(s)) = (residual, sums.as_mut().and_then(|s| s.next())) {
            f16c::widen(residual.row(cols, r).unwrap_or(s), &mut ys);
            add_residual(&xs, None, &mut ys);
            f16c::narrow(&ys, s, stream);
            f16c::widen(s, &mut xs);
        }
        let stats = norm_stats(norm, &xs, eps);
        normalise_row(Some(&xs), &mut ys, &stats, w, b, false);
        f16c::narrow(&ys, y, stream);
        mean[r] = S::from_f64(stats.mean);
        rstd[r] = S::from_f64(stats.rstd);
    }
}

#[inline(always)]
fn normalise_row<T: Element>(
    x: Option<&[T]>,
    y: &mut [T],
    s: &RowStats,
    w: &[f64],
    b: &[f64],
    stream: bool,
) {
    match (w.is_empty(), b.is_empty(), s.scale == 1.0) {
        (false, false, true) => normalise::<T, true, true, false>(x, y, s, w, b, stream),
        (false, true, true) => normalise::<T, true, false, false>(x, y, s, w, b, stream),
        (true, false, true) => normalise::<T, false, true, false>(x, y, s, w, b, stream),
        (true, true, true) => normalise::<T, false, false, false>(x, y, s, w, b, stream),
        _ => normalise_rescaled(x, y, s, w, b),
    }
}

#[cold]
#[inline(never)]
fn normalise_rescaled<T: Element>(
    x: Option<&[T]>,
    y: &mut [T],
    s: &RowStats,
    w: &[f64],
    b: &[f64],
) {
    match (w.is_empty(), b.is_empty()) {
        (false, false) => normalise::<T, true, true, true>(x, y, s, w, b, false),
        (false, true) => normalise::<T, true, false, true>(x, y, s, w, b, false),
        (true, false) => normalise::<T, false, true, true>(x, y, s, w, b, false),
        (true, true) => normalise::<T, false, false, true>(x, y, s, w, b, false),
    }
}

/// One row, LANES elements at a time. Each chunk is read whole before it is
/// written, so `x = None` (read from `y`) is the same computation in place.
/// With `stream`, a short unaligned head goes first so that the full chunks
/// can be streamed.
#[inline(always)]
fn normalise<T: Element, const W: bool, const B: bool, const SCALED: bool>(
    x: Option<&[T]>,
    y: &mut [T],
    s: &RowStats,
    w: &[f64],
    b: &[f64],
    stream: bool,
) {
    let n = y.len();
    let head = if stream { unaligned_head(y) } else { 0 };
    let full = head + (n - head) / LANES * LANES;
    partial::<T, W, B, SCALED>(x, y, 0..head, s, w, b);
    let mut i = head;
    while i < full {
        let src = match x {
            Some(x) => &x[i..i + LANES],
            None => &y[i..i + LANES],
        };
        let out = chunk::<T, W, B, SCALED>(
            src,
            s,
            &w[if W { i..i + LANES } else { 0..0 }],
            &b[if B { i..i + LANES } else { 0..0 }],
        );
        store_chunk(&mut y[i..i + LANES], &out, stream);
        i += LANES;
    }
    partial::<T, W, B, SCALED>(x, y, full..n, s, w, b);
}

/// Fewer than LANES elements, through a zero-padded chunk.
#[inline(always)]
fn partial<T: Element, const W: bool, const B: bool, const SCALED: bool>(
    x: Option<&[T]>,
    y: &mut [T],
    range: std::ops::Range<usize>,
    s: &RowStats,
    w: &[f64],
    b: &[f64],
) {
    let r = range.len();
    if r == 0 {
        return;
    }
    let mut xs = [T::ZERO; LANES];
    xs[..r].copy_from_slice(&x.unwrap_or(y)[range.clone()]);
    let (mut ws, mut bs) = ([0.0; LANES], [0.0; LANES]);
    if W {
        ws[..r].copy_from_slice(&w[range.clone()]);
    }
    if B {
        bs[..r].copy_from_slice(&b[range.clone()]);
    }
    let out = chunk::<T, W, B, SCALED>(&xs, s, &ws, &bs);
    y[range].copy_from_slice(&out[..r]);
}

#[inline(always)]
fn chunk<T: Element, const W: bool, const B: bool, const SCALED: bool>(
    x: &[T],
    s: &RowStats,
    w: &[f64],
    b: &[f64],
) -> [T; LANES] {
    let mut t = [0.0; LANES];
    for j in 0..LANES {
        let v = if SCALED {
            x[j].to_f64() * s.scale
        } else {
            x[j].to_f64()
        };
        t[j] = if T::WIDE {
            let d = (v - s.shift) - s.corr;
            match (W, B) {
                (true, true) => d.mul_add(s.rstd_scaled * w[j], b[j]),
                (true, false) => d * (s.rstd_scaled * w[j]),
                (false, true) => d.mul_add(s.rstd_scaled, b[j]),
                (false, false) => d * s.rstd_scaled,
            }
        } else {
            let (w, b) = (if W { w[j] } else { 1.0 }, if B { b[j] } else { 0.0 });
            exact_affine::<W, B>(v, s, w, b)
        };
    }
    T::from_f64_chunk(&t)
}

/// `((v − shift) − corr)·rstd·w + b` for f64 storage, in double-double steps and
/// rounded once at the end: where `xhat·w` and `b` cancel, the digits of xhat
/// beyond f64 become the leading digits of the result. The centred value is the
/// pair `d + dl` (TwoSum against the mean as a pair `m + ml`, a per-row
/// constant), xhat `p + pl` against the rstd pair, xhat·w `q + ql` (FMA), and
/// the sum with b is TwoSum.
#[inline(always)]
fn exact_affine<const W: bool, const B: bool>(v: f64, s: &RowStats, w: f64, b: f64) -> f64 {
    let (m, ml) = two_sum(s.shift, s.corr);
    let (d, e) = two_sum(v, -m);
    let dl = e - ml;
    let (p, pe) = two_prod(d, s.rstd_scaled);
    let pl = d.mul_add(s.rstd_lo, dl.mul_add(s.rstd_scaled, pe));
    let (q, ql) = if W {
        let (q, qe) = two_prod(w, p);
        (q, w.mul_add(pl, qe))
    } else {
        (p, pl)
    };
    if B {
        let (t, te) = two_sum(q, b);
        t + (te + ql)
    } else {
        q + ql
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::supported_levels;
    use crate::kernels::test_data as data;

    type Outputs<T> = (Vec<T>, Vec<<T as Element>::Stat>, Vec<<T as Element>::Stat>);

    fn run<T: Element>(
        level: Level,
        x: &[T],
        cols: usize,
        w: Option<&[T]>,
        b: Option<&[T]>,
    ) -> Outputs<T> {
        let rows = x.len() / cols;
        let (mut y, mut m, mut r) = (
            vec![T::ZERO; x.len()],
            vec![T::Stat::ZERO; rows],
            vec![T::Stat::ZERO; rows],
        );
        let args = Forward {
            norm: Norm::Layer,
            x: Input::Separate(x),
            residual: None,
            cols,
            weight: w.map(Param::Storage),
            bias: b.map(Param::Storage),
            eps: 1e-5,
        };
        layer_norm_forward(level, args, &mut y, None, &mut m, &mut r).unwrap();
        (y, m, r)
    }

    /// [`run`] in place (`y` holds x on entry), no weight or bias.
    fn run_in_place<T: Element>(level: Level, x: &[T], cols: usize) -> Outputs<T> {
        let rows = x.len() / cols;
        let (mut y, mut m, mut r) = (
            x.to_vec(),
            vec![T::Stat::ZERO; rows],
            vec![T::Stat::ZERO; rows],
        );
        let args = Forward {
            norm: Norm::Layer,
            x: Input::InPlace,
            residual: None,
            cols,
            weight: None,
            bias: None,
            eps: 1e-5,
        };
        layer_norm_forward(level, args, &mut y, None, &mut m, &mut r).unwrap();
        (y, m, r)
    }

    fn every_level_matches_scalar<T: Element>() {
        for cols in [1, 3, 31, 32, 33, 100, 1000] {
            let rows = 7;
            let x: Vec<T> = data(rows * cols, cols as u64, 10.0)
                .into_iter()
                .map(T::from_f64)
                .collect();
            let w: Vec<T> = data(cols, 1, 1.0).into_iter().map(T::from_f64).collect();
            let b: Vec<T> = data(cols, 2, 0.0).into_iter().map(T::from_f64).collect();
            for (w, b) in [
                (None, None),
                (Some(&w[..]), None),
                (None, Some(&b[..])),
                (Some(&w[..]), Some(&b[..])),
            ] {
                let scalar = run(Level::Scalar, &x, cols, w, b);
                for level in supported_levels() {
                    assert_eq!(run(level, &x, cols, w, b), scalar, "{level} cols {cols}");
                }
            }
        }
    }

    #[test]
    fn every_level_matches_scalar_f32() {
        every_level_matches_scalar::<f32>();
    }

    #[test]
    fn every_level_matches_scalar_f64() {
        every_level_matches_scalar::<f64>();
    }

    /// float16 takes the F16C path from AVX2 on (`f16_rows`), out of place and
    /// in place: the bits must be the generic path's.
    #[test]
    fn every_level_matches_scalar_f16() {
        every_level_matches_scalar::<half::f16>();
        let cols = 333;
        let x: Vec<half::f16> = data(6 * cols, 4, -2.0)
            .into_iter()
            .map(half::f16::from_f64)
            .collect();
        let scalar = run(Level::Scalar, &x, cols, None, None);
        for level in supported_levels() {
            assert_eq!(run_in_place(level, &x, cols), scalar, "{level} in place");
        }
    }

    /// The fused residual add for the half types (float16 through F16C from
    /// AVX2 on, bfloat16 by chunks): y, s, mean and rstd at every level are
    /// the scalar level's, with the residual separate or held by the sum
    /// output, x separate or held by y.
    fn fused_matches_scalar_at_every_level<T: Element>() {
        let cols = 77;
        let h = |seed, offset| -> Vec<T> {
            data(5 * cols, seed, offset)
                .into_iter()
                .map(T::from_f64)
                .collect()
        };
        let (x, res) = (h(5, 3.0), h(6, -1.0));
        let fused = |level, x_in_y: bool, res_in_sum: bool| {
            let mut y = if x_in_y {
                x.clone()
            } else {
                vec![T::ZERO; x.len()]
            };
            let mut sum = if res_in_sum {
                res.clone()
            } else {
                vec![T::ZERO; x.len()]
            };
            let (mut m, mut r) = (vec![T::Stat::ZERO; 5], vec![T::Stat::ZERO; 5]);
            let args = Forward {
                norm: Norm::Layer,
                x: if x_in_y {
                    Input::InPlace
                } else {
                    Input::Separate(&x)
                },
                residual: Some(if res_in_sum {
                    Input::InPlace
                } else {
                    Input::Separate(&res)
                }),
                cols,
                weight: None,
                bias: None,
                eps: 1e-5,
            };
            layer_norm_forward(level, args, &mut y, Some(&mut sum), &mut m, &mut r).unwrap();
            (y, sum, m, r)
        };
        for (x_in_y, res_in_sum) in [(false, false), (true, false), (false, true)] {
            let scalar = fused(Level::Scalar, x_in_y, res_in_sum);
            for level in supported_levels() {
                assert_eq!(fused(level, x_in_y, res_in_sum), scalar, "{level}");
            }
        }
    }

    #[test]
    fn fused_half_types_match_scalar_at_every_level() {
        fused_matches_scalar_at_every_level::<half::f16>();
        fused_matches_scalar_at_every_level::<half::bf16>();
    }

    #[test]
    fn in_place_matches_out_of_place() {
        let cols = 77;
        let x: Vec<f32> = data(5 * cols, 3, -4.0)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let level = crate::kernels::simd::active();
        assert_eq!(
            run_in_place(level, &x, cols),
            run(level, &x, cols, None, None)
        );
    }

    #[test]
    fn f32_offset_rows_are_exact_to_half_an_ulp() {
        let cols = 1000;
        let xd = data(cols, 9, 1.0e4);
        let x: Vec<f32> = xd.iter().map(|&v| v as f32).collect();
        let (y, ..) = run(crate::kernels::simd::active(), &x, cols, None, None);
        let xs: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let mean = xs.iter().sum::<f64>() / cols as f64;
        let var = xs.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
        for (yi, xi) in y.iter().zip(&xs) {
            let exact = (xi - mean) / (var + 1e-5).sqrt();
            let ulp = f32::EPSILON as f64 * exact.abs().max(2f64.powi(-10));
            assert!(
                ((*yi as f64) - exact).abs() <= 0.51 * ulp + 1e-12,
                "{yi} vs {exact}"
            );
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let cols = 513;
        let x: Vec<f32> = data(200 * cols, 4, 2.0)
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let _threads = crate::parallel::thread_count_lock();
        crate::parallel::set_num_threads(1).unwrap();
        let one = run(crate::kernels::simd::active(), &x, cols, None, None);
        crate::parallel::set_num_threads(3).unwrap();
        let three = run(crate::kernels::simd::active(), &x, cols, None, None);
        assert_eq!(one, three);
        // A row alone gives the bits it gives inside the batch.
        let alone = run(
            crate::kernels::simd::active(),
            &x[57 * cols..58 * cols],
            cols,
            None,
            None,
        );
        assert_eq!(alone.0[..], one.0[57 * cols..58 * cols]);
    }

    fn long_rows_are_split_without_changing_bits<T: Element>() {
        let cols = LONG_ROW + 3 * SPLIT_BLOCK / 2 + 7;
        let x: Vec<T> = data(2 * cols, 5, 100.0)
            .into_iter()
            .map(T::from_f64)
            .collect();
        let w: Vec<T> = data(cols, 6, 1.0).into_iter().map(T::from_f64).collect();
        let level = crate::kernels::simd::active();
        let _threads = crate::parallel::thread_count_lock();
        crate::parallel::set_num_threads(1).unwrap();
        let one = run(level, &x, cols, Some(&w), None);
        crate::parallel::set_num_threads(3).unwrap();
        // Two rows, three threads: each row is split over the threads.
        let three = run(level, &x, cols, Some(&w), None);
        assert_eq!(one, three);
        let alone = run(level, &x[cols..], cols, Some(&w), None);
        assert_eq!(alone.0[..], one.0[cols..]);
    }

    #[test]
    fn long_rows_are_split_without_changing_bits_f32() {
        long_rows_are_split_without_changing_bits::<f32>();
    }

    #[test]
    fn long_rows_are_split_without_changing_bits_f64() {
        long_rows_are_split_without_changing_bits::<f64>();
    }

    #[test]
    fn bad_lengths_and_eps_are_errors() {
        let (mut y, mut m, mut r) = (vec![0.0f32; 6], vec![0.0f32; 2], vec![0.0f32; 2]);
        let x = [0.0f32; 5];
        let args = Forward {
            norm: Norm::Layer,
            x: Input::Separate(&x),
            residual: None,
            cols: 3,
            weight: None,
            bias: None,
            eps: 1e-5,
        };
        assert!(matches!(
            layer_norm_forward(Level::Scalar, args, &mut y, None, &mut m, &mut r),
            Err(KernelError::Length { name: "x", .. })
        ));
        let x = [0.0f32; 6];
        let args = Forward {
            norm: Norm::Layer,
            x: Input::Separate(&x),
            residual: None,
            cols: 3,
            weight: None,
            bias: None,
            eps: f64::NAN,
        };
        assert!(matches!(
            layer_norm_forward(Level::Scalar, args, &mut y, None, &mut m, &mut r),
            Err(KernelError::BadEps(_))
        ));
    }
}
