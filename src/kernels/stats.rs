//! Row statistics: the shifted, corrected two-pass mean and variance.
//!
//! The mean is kept as an unevaluated pair `m0 + c` so that `x − mean` is formed
//! as `(x − m0) − c` in f64 and never loses the digits an offset would take.
//! f64 storage: pass 1 sums `x − x[0]` for a first mean `m0`; pass 2 sums
//! `d = x − m0` and `d²` error-free (TwoSum, FMA), so `Σd` corrects `m0` and
//! `Σd²` gives the variance to about twice f64's precision, without the
//! cancellation of `E[x²] − E[x]²`; rows whose squares would overflow or
//! underflow are rescaled by a power of two. `rstd` comes as a pair too, for the
//! double-double normalisation of f64 rows (see `layer_norm::chunk`).
//! Narrower storage: `x − x[0]` is exact in f64, so one pass of plain f64 lane
//! sums suffices (see `one_pass_wide`).

use super::element::Element;

/// Independent accumulators per sum: four AVX-512 or eight AVX2 f64 registers,
/// enough to hide the add latency. Fixed for every SIMD level so that all
/// levels add in the same order.
pub const LANES: usize = 32;

pub type Lanes = [f64; LANES];

/// The statistics of one row in the form the normalise pass wants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowStats {
    /// `x·scale − shift − corr` is the centred value, in scaled units.
    pub shift: f64,
    pub corr: f64,
    /// `1/sqrt(var + eps)` in scaled units (`rstd / scale`), and the rest of
    /// it: `rstd_scaled + rstd_lo` carries about twice f64's precision (f64
    /// storage; 0 for narrower types, which do not need it).
    pub rstd_scaled: f64,
    pub rstd_lo: f64,
    /// A power of two; 1 unless the row's magnitude forced a rescale.
    pub scale: f64,
    /// `mean` and `rstd` of the unscaled row.
    pub mean: f64,
    pub rstd: f64,
}

impl RowStats {
    /// The statistics of an empty row: NaN, as `0/0`.
    pub fn empty() -> Self {
        RowStats {
            shift: f64::NAN,
            corr: f64::NAN,
            rstd_scaled: f64::NAN,
            rstd_lo: 0.0,
            scale: 1.0,
            mean: f64::NAN,
            rstd: f64::NAN,
        }
    }
}

/// Add the lanes pairwise, in the same fixed tree on every level.
#[inline(always)]
pub fn reduce(mut a: Lanes) -> f64 {
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for j in 0..w {
            a[j] += a[j + w];
        }
    }
    a[0]
}

/// `(s, e)` with `s = fl(a + b)` and `a + b = s + e` exactly (Knuth's TwoSum).
#[inline(always)]
pub fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

/// `(p, e)` with `p = fl(a·b)` and `a·b = p + e` exactly (FMA).
#[inline(always)]
pub fn two_prod(a: f64, b: f64) -> (f64, f64) {
    let p = a * b;
    (p, a.mul_add(b, -p))
}

/// Lanes of error-free sums: `hi[j] + lo[j]` is lane j's total, `lo` holding
/// every rounding error of the additions into `hi` (and whatever else the caller
/// adds there), so the total carries about twice f64's precision.
#[derive(Clone, Copy, Default)]
pub struct Exact {
    pub hi: Lanes,
    pub lo: Lanes,
}

impl Exact {
    /// Add `v` to lane j.
    #[inline(always)]
    pub fn add(&mut self, j: usize, v: f64) {
        let (s, e) = two_sum(self.hi[j], v);
        self.hi[j] = s;
        self.lo[j] += e;
    }

    /// The lanes' total as an unevaluated pair, `hi` rounded to nearest.
    #[inline(always)]
    pub fn total(&self) -> (f64, f64) {
        add_pairs((0..LANES).map(|j| (self.hi[j], self.lo[j])))
    }
}

/// The sum of `hi + lo` pairs, in the order given, as a pair `(s, r)` with `s`
/// the rounded total. An infinite or NaN total is returned as `(total, 0)`
/// (TwoSum's error term of an infinity is NaN).
#[inline(always)]
pub fn add_pairs(parts: impl IntoIterator<Item = (f64, f64)>) -> (f64, f64) {
    let (mut hi, mut lo) = (0.0, 0.0);
    for (h, l) in parts {
        let (s, e) = two_sum(hi, h);
        hi = s;
        lo += e + l;
    }
    if hi.is_finite() {
        two_sum(hi, lo)
    } else {
        (hi, 0.0)
    }
}

/// Σ (x·scale − k), plain f64 lanes: only a first estimate of the mean.
#[inline(always)]
fn shifted_sum<T: Element, const SCALED: bool>(x: &[T], scale: f64, k: f64) -> f64 {
    let mut acc = [0.0; LANES];
    let load = |v: T| {
        if SCALED {
            v.to_f64() * scale
        } else {
            v.to_f64()
        }
    };
    let chunks = x.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            acc[j] += load(c[j]) - k;
        }
    }
    for (j, &v) in rem.iter().enumerate() {
        acc[j] += load(v) - k;
    }
    reduce(acc)
}

/// Σd and Σd² of a row's values around `m`, d = x − m. For f64 storage both
/// are error-free to about twice f64's precision: `sum` rounded once, the
/// squares as the pair `squares + squares_lo`. Narrower storage: plain f64
/// lanes, `squares_lo = 0`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Centred {
    pub sum: f64,
    pub squares: f64,
    pub squares_lo: f64,
}

#[inline(always)]
fn centred_sums<T: Element, const SCALED: bool>(x: &[T], scale: f64, m: f64) -> Centred {
    let load = |v: T| {
        if SCALED {
            v.to_f64() * scale
        } else {
            v.to_f64()
        }
    };
    if T::WIDE {
        let (mut s1, mut s2) = ([0.0; LANES], [0.0; LANES]);
        let step = |s1: &mut Lanes, s2: &mut Lanes, c: &[T]| {
            for j in 0..c.len().min(LANES) {
                let d = load(c[j]) - m;
                s1[j] += d;
                s2[j] = d.mul_add(d, s2[j]);
            }
        };
        let chunks = x.chunks_exact(LANES);
        let rem = chunks.remainder();
        for c in chunks {
            step(&mut s1, &mut s2, c);
        }
        step(&mut s1, &mut s2, rem);
        return Centred {
            sum: reduce(s1),
            squares: reduce(s2),
            squares_lo: 0.0,
        };
    }
    // The difference x − m is d + e exactly (TwoSum), and its square
    // d² + 2de (+ e², below the pair's precision), with d² split exactly by FMA.
    let step = |s1: &mut Exact, s2: &mut Exact, c: &[T]| {
        for j in 0..c.len().min(LANES) {
            let (d, e) = two_sum(load(c[j]), -m);
            s1.add(j, d);
            s1.lo[j] += e;
            let (p, pe) = two_prod(d, d);
            s2.add(j, p);
            s2.lo[j] += (2.0 * d).mul_add(e, pe);
        }
    };
    let (mut s1, mut s2) = (Exact::default(), Exact::default());
    let chunks = x.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        step(&mut s1, &mut s2, c);
    }
    step(&mut s1, &mut s2, rem);
    let (squares, squares_lo) = s2.total();
    Centred {
        sum: s1.total().0,
        squares,
        squares_lo,
    }
}

/// Rows from this length on are summed in fixed blocks of `SPLIT_BLOCK`
/// elements whose sums are then added in block order, so that threads can
/// share a row while the bits stay those of one thread. Shorter rows are
/// summed whole. The choice depends on the row length alone.
pub const LONG_ROW: usize = 1 << 16;
pub const SPLIT_BLOCK: usize = 1 << 14;

/// How a row's two kinds of sums are taken: whole, or in fixed blocks.
pub trait RowSums<T: Element> {
    /// Σ (x − k).
    fn shifted_sum(&self, x: &[T], k: f64) -> f64;
    /// Σd and Σd² with d = x − m.
    fn centred_sums(&self, x: &[T], m: f64) -> Centred;
}

/// A short row: its sums in one go.
pub struct Whole;

impl<T: Element> RowSums<T> for Whole {
    #[inline(always)]
    fn shifted_sum(&self, x: &[T], k: f64) -> f64 {
        shifted_sum::<T, false>(x, 1.0, k)
    }
    #[inline(always)]
    fn centred_sums(&self, x: &[T], m: f64) -> Centred {
        centred_sums::<T, false>(x, 1.0, m)
    }
}

/// The sums of one block of a long row; what `RowSums` implementations that
/// split rows compute per block before adding the blocks with [`add_blocks`]
/// and [`add_centred`].
#[inline(always)]
pub fn block_shifted_sum<T: Element>(x: &[T], k: f64) -> f64 {
    shifted_sum::<T, false>(x, 1.0, k)
}

#[inline(always)]
pub fn block_centred_sums<T: Element>(x: &[T], m: f64) -> Centred {
    centred_sums::<T, false>(x, 1.0, m)
}

/// Add per-block sums in block order; compensated (TwoSum) for f64 storage.
pub fn add_blocks<T: Element>(parts: impl IntoIterator<Item = f64>) -> f64 {
    add_block_pairs::<T>(parts.into_iter().map(|p| (p, 0.0))).0
}

/// Add per-block `(sum, rest)` pairs in block order: error-free for f64
/// storage ([`add_pairs`]); plain sums for narrower storage, whose rests are 0.
pub fn add_block_pairs<T: Element>(parts: impl IntoIterator<Item = (f64, f64)>) -> (f64, f64) {
    if T::WIDE {
        (parts.into_iter().map(|p| p.0).sum(), 0.0)
    } else {
        add_pairs(parts)
    }
}

/// Add per-block centred sums in block order, as [`add_block_pairs`] does.
pub fn add_centred<T: Element>(parts: &[Centred]) -> Centred {
    let (squares, squares_lo) =
        add_block_pairs::<T>(parts.iter().map(|p| (p.squares, p.squares_lo)));
    Centred {
        sum: add_blocks::<T>(parts.iter().map(|p| p.sum)),
        squares,
        squares_lo,
    }
}

/// A long row summed block by block on the calling thread: the same bits as
/// any parallel split of the same blocks.
pub struct Blocks;

// Plain loops, not iterator adapters: a closure handed to `map` may be compiled
// out of line, and then without the caller's SIMD target features.
impl<T: Element> RowSums<T> for Blocks {
    #[inline(always)]
    fn shifted_sum(&self, x: &[T], k: f64) -> f64 {
        let mut parts = Vec::with_capacity(x.len().div_ceil(SPLIT_BLOCK));
        for b in x.chunks(SPLIT_BLOCK) {
            parts.push(block_shifted_sum(b, k));
        }
        add_blocks::<T>(parts)
    }
    #[inline(always)]
    fn centred_sums(&self, x: &[T], m: f64) -> Centred {
        let mut parts = Vec::with_capacity(x.len().div_ceil(SPLIT_BLOCK));
        for b in x.chunks(SPLIT_BLOCK) {
            parts.push(block_centred_sums(b, m));
        }
        add_centred::<T>(&parts)
    }
}

/// A row's mean as `m0 + corr` and its variance as the pair `var + var_lo`.
/// The variance may come out slightly negative (or non-finite): see
/// `variance`.
#[derive(Clone, Copy)]
struct Moments {
    m0: f64,
    corr: f64,
    var: f64,
    var_lo: f64,
}

impl Moments {
    /// From the sums of `n` values around `m0`: Σ(d − c)² = Σd² − n·c² with
    /// `c = Σd/n`. Around a first mean c is tiny next to the spread, so nothing
    /// cancels; around `x[0]` (`one_pass_wide`) it is bounded there.
    #[inline(always)]
    fn around(m0: f64, s: Centred, n: f64) -> Self {
        let corr = s.sum / n;
        let (var, var_lo) = div_pair((s.squares, s.squares_lo), n);
        Moments {
            m0,
            corr,
            var,
            var_lo: var_lo - corr * corr,
        }
    }
}

/// The pair `(h + l)/n` as a pair: the quotient and, from the division's
/// remainder (exact by FMA), the rest; `(q, 0)` for a non-finite quotient.
#[inline(always)]
pub fn div_pair((h, l): (f64, f64), n: f64) -> (f64, f64) {
    let q = h / n;
    if q.is_finite() {
        (q, ((-q).mul_add(n, h) + l) / n)
    } else {
        (q, 0.0)
    }
}

/// The corrected two-pass scheme.
#[inline(always)]
fn two_pass<T: Element>(x: &[T], sums: &impl RowSums<T>) -> Moments {
    let k = x[0].to_f64();
    let m0 = k + sums.shifted_sum(x, k) / x.len() as f64;
    Moments::around(m0, sums.centred_sums(x, m0), x.len() as f64)
}

/// The two passes on `x·scale` (the rare rescaled f64 row), whole.
fn two_pass_scaled<T: Element>(x: &[T], scale: f64) -> Moments {
    let n = x.len() as f64;
    let k = x[0].to_f64() * scale;
    let m0 = k + shifted_sum::<T, true>(x, scale, k) / n;
    Moments::around(m0, centred_sums::<T, true>(x, scale, m0), n)
}

/// Narrow storage in one pass: `u = x − x[0]` is exact in f64, so Σu and Σu²
/// hold everything. `Σu²/n − c²` cancels only as far as x[0] is from the mean;
/// past 32 standard deviations (2^10 in variance) a second pass around the
/// mean takes over, so at most 10 of f64's 53 bits are ever lost.
#[inline(always)]
fn one_pass_wide<T: Element>(x: &[T], sums: &impl RowSums<T>) -> Moments {
    let n = x.len() as f64;
    let k = x[0].to_f64();
    let first = Moments::around(k, sums.centred_sums(x, k), n);
    if first.corr * first.corr > (first.var + first.var_lo) * 1024.0 {
        let m0 = k + first.corr;
        return Moments::around(m0, sums.centred_sums(x, m0), n);
    }
    first
}

/// `1/sqrt(v + v_lo + eps)` as a pair `(r, r_lo)`: `r` within about half an
/// ulp, `r + r_lo` to about twice f64's precision. `1/sqrt` of the rounded sum
/// errs by up to ~1.5 ulp, so one Newton step follows, its residual
/// `1 − (v + v_lo + eps)·r²` formed exactly with FMA (always correctly rounded,
/// so every SIMD level gets the same bits); the step itself is the pair.
/// Once per row: the cost does not matter.
#[inline(always)]
pub fn inv_sqrt_sum(v: f64, v_lo: f64, eps: f64) -> (f64, f64) {
    let (v, e) = two_sum(v, eps);
    let v_lo = e + v_lo;
    let r = 1.0 / v.sqrt();
    if !(r.is_finite() && r > 0.0 && v.is_normal()) {
        return (r, 0.0);
    }
    let (p, p_lo) = two_prod(r, r);
    let (q, q_lo) = two_prod(v, p);
    let residual = ((1.0 - q) - q_lo) - (v * p_lo + v_lo * p);
    two_sum(r, (0.5 * r) * residual)
}

/// Squares of f64 values below this would lose bits to underflow.
const TINY_SQUARES: f64 = 1.0e-280;

/// The variance pair, clamped at 0 (a rounding-negative variance); NaN when
/// the row holds a NaN or an infinity.
#[inline(always)]
fn variance(m: &Moments) -> (f64, f64) {
    let total = m.var + m.var_lo;
    if total.is_nan() {
        (f64::NAN, 0.0)
    } else if m.var.is_infinite() {
        (m.var, 0.0)
    } else if total <= 0.0 {
        (0.0, 0.0)
    } else {
        two_sum(m.var, m.var_lo)
    }
}

/// LayerNorm's statistics of one row for `eps ≥ 0`, the sums taken by `sums`.
#[inline(always)]
pub fn row_stats_with<T: Element>(x: &[T], eps: f64, sums: &impl RowSums<T>) -> RowStats {
    if x.is_empty() {
        return RowStats::empty();
    }
    let m = if T::WIDE {
        one_pass_wide(x, sums)
    } else {
        two_pass(x, sums)
    };
    let needs_rescale = !T::WIDE
        && (!m.var.is_finite()
            || !m.m0.is_finite()
            || (m.var < TINY_SQUARES && eps < TINY_SQUARES));
    if needs_rescale {
        if let Some(stats) = rescaled(Norm::Layer, x, eps) {
            return stats;
        }
    }
    let (var, var_lo) = variance(&m);
    let (rstd, rstd_lo) = inv_sqrt_sum(var, var_lo, eps);
    RowStats {
        shift: m.m0,
        corr: m.corr,
        rstd_scaled: rstd,
        rstd_lo,
        scale: 1.0,
        mean: m.m0 + m.corr,
        rstd,
    }
}

/// `1/sqrt(var + eps)` as a pair from the sums of `n` values around a mean
/// that `s.sum` corrects (0 for RMSNorm): what the backward pass recomputes.
#[inline(always)]
pub fn rstd_from(s: Centred, n: f64, eps: f64) -> (f64, f64) {
    let (var, var_lo) = variance(&Moments::around(0.0, s, n));
    inv_sqrt_sum(var, var_lo, eps)
}

/// Which normalisation: LayerNorm centres each row on its mean, RMSNorm does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    Layer,
    Rms,
}

/// The statistics `norm` needs of one row, summed whole or in the fixed blocks
/// of a long row.
#[inline(always)]
pub fn norm_stats<T: Element>(norm: Norm, x: &[T], eps: f64) -> RowStats {
    match (norm, x.len() >= LONG_ROW) {
        (Norm::Layer, false) => row_stats_with(x, eps, &Whole),
        (Norm::Layer, true) => row_stats_with(x, eps, &Blocks),
        (Norm::Rms, false) => rms_stats_with(x, eps, &Whole),
        (Norm::Rms, true) => rms_stats_with(x, eps, &Blocks),
    }
}

/// The mean square Σx²/n as a pair.
#[inline(always)]
fn mean_square(s: Centred, n: f64) -> Moments {
    let s = Centred { sum: 0.0, ..s };
    Moments::around(0.0, s, n)
}

/// RMSNorm's statistics: `rstd = 1/sqrt(Σx²/n + eps)`, no shift. f64 rows whose
/// squares overflow or underflow are rescaled as LayerNorm's are.
#[inline(always)]
pub fn rms_stats_with<T: Element>(x: &[T], eps: f64, sums: &impl RowSums<T>) -> RowStats {
    if x.is_empty() {
        return RowStats::empty();
    }
    let ms = mean_square(sums.centred_sums(x, 0.0), x.len() as f64);
    let needs_rescale =
        !T::WIDE && (!ms.var.is_finite() || (ms.var < TINY_SQUARES && eps < TINY_SQUARES));
    if needs_rescale {
        if let Some(stats) = rescaled(Norm::Rms, x, eps) {
            return stats;
        }
    }
    let (var, var_lo) = variance(&ms);
    let (rstd, rstd_lo) = inv_sqrt_sum(var, var_lo, eps);
    RowStats {
        shift: 0.0,
        corr: 0.0,
        rstd_scaled: rstd,
        rstd_lo,
        scale: 1.0,
        mean: 0.0,
        rstd,
    }
}

/// Statistics of an f64 row whose squares overflow or underflow: rerun the two
/// passes on `x·2^-e` with `2^e` near the largest magnitude. `None` when the row
/// holds a NaN or infinity (the unscaled result then propagates it) or is all zero.
#[cold]
#[inline(never)]
fn rescaled<T: Element>(norm: Norm, x: &[T], eps: f64) -> Option<RowStats> {
    let mut amax = 0.0f64;
    for &v in x {
        let a = v.to_f64().abs();
        if !a.is_finite() {
            return None;
        }
        amax = amax.max(a);
    }
    if amax == 0.0 {
        return None;
    }
    let scale = pow2(-exponent(amax));
    let m = match norm {
        Norm::Layer => two_pass_scaled(x, scale),
        Norm::Rms => mean_square(centred_sums::<T, true>(x, scale, 0.0), x.len() as f64),
    };
    let (var, var_lo) = variance(&m);
    let eps_scaled = eps * scale * scale;
    let (rstd_scaled, rstd_lo) = inv_sqrt_sum(var, var_lo, eps_scaled);
    let (rstd, rstd_scaled, rstd_lo) = if eps_scaled.is_finite() {
        (rstd_scaled * scale, rstd_scaled, rstd_lo)
    } else {
        // eps dwarfs a variance this small.
        let rstd = 1.0 / eps.sqrt();
        (rstd, rstd / scale, 0.0)
    };
    Some(RowStats {
        shift: m.m0,
        corr: m.corr,
        rstd_scaled,
        rstd_lo,
        scale,
        mean: (m.m0 + m.corr) / scale,
        rstd,
    })
}

/// The binary exponent of a positive finite value (of its leading bit).
fn exponent(v: f64) -> i32 {
    let bits = v.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i32;
    if e == 0 {
        // Subnormal: count from the leading mantissa bit.
        -1074 + (63 - bits.leading_zeros() as i32)
    } else {
        e - 1023
    }
}

/// 2^e for e in the normal range (clamped to it).
fn pow2(e: i32) -> f64 {
    let e = e.clamp(-1022, 1023);
    f64::from_bits(((e + 1023) as u64) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_stats<T: Element>(x: &[T], eps: f64) -> RowStats {
        norm_stats(Norm::Layer, x, eps)
    }

    #[test]
    fn rms_of_plain_huge_and_tiny_rows() {
        for scale in [1.0, 1e200, 1e-200] {
            let x: Vec<f64> = [3.0, -4.0].iter().map(|v| v * scale).collect();
            // mean square 12.5·scale²
            let s = norm_stats(Norm::Rms, &x, 0.0);
            assert_eq!((s.shift, s.corr, s.mean), (0.0, 0.0, 0.0));
            assert!(
                (s.rstd * 12.5f64.sqrt() * scale - 1.0).abs() < 2e-16,
                "scale {scale}"
            );
        }
        let s = norm_stats(Norm::Rms, &[3.0f32, -4.0], 1e-6);
        assert_eq!(s.rstd, 1.0 / (12.5f64 + 1e-6).sqrt());
    }

    #[test]
    fn exponent_and_pow2() {
        assert_eq!(exponent(1.0), 0);
        assert_eq!(exponent(3.0), 1);
        assert_eq!(exponent(0.5), -1);
        assert_eq!(exponent(f64::MAX), 1023);
        assert_eq!(exponent(f64::from_bits(1)), -1074);
        assert_eq!(pow2(-3), 0.125);
        assert_eq!(pow2(1023), 2f64.powi(1023));
    }

    #[test]
    fn two_sum_is_exact() {
        let (s, e) = two_sum(1.0, 1e-20);
        assert_eq!(s, 1.0);
        assert_eq!(e, 1e-20);
    }

    #[test]
    fn rstd_pair_carries_twice_f64s_precision() {
        // (r + r_lo)²·v = 1 to about 2^-104: the residual taken in pieces that
        // are exact (two_prod) or far below it.
        for (v, v_lo) in [(2.0, 0.0), (3.0, 1e-17), (1.25e-7, 0.0), (7.0e30, -3.0e14)] {
            let (r, r_lo) = inv_sqrt_sum(v, v_lo, 0.0);
            assert!(r_lo.abs() <= 0.5 * r * f64::EPSILON, "{v}: r_lo {r_lo}");
            let (p, pe) = two_prod(r, r);
            let (q, qe) = two_prod(p, v);
            let rest = qe + pe * v + p * v_lo + 2.0 * r * r_lo * v;
            let residual = (q - 1.0) + rest;
            assert!(
                residual.abs() < 2f64.powi(-100),
                "{v}: residual {residual:e}"
            );
        }
        // Without the low part the same test fails: the pair is doing the work.
        let (r, _) = inv_sqrt_sum(2.0, 0.0, 0.0);
        let (p, pe) = two_prod(r, r);
        assert!(((2.0 * p - 1.0) + 2.0 * pe).abs() > 2f64.powi(-60));
    }

    #[test]
    fn f64_squares_are_summed_to_twice_f64s_precision() {
        // d = ±(1 + 2^-40): d² = 1 + 2^-39 + 2^-80, whose last term f64 drops.
        let d = 1.0 + 2f64.powi(-40);
        let s = centred_sums::<f64, false>(&[d, -d, d, -d], 1.0, 0.0);
        assert_eq!(s.sum, 0.0);
        assert_eq!(s.squares, 4.0 + 2f64.powi(-37));
        assert_eq!(s.squares_lo, 2f64.powi(-78));
    }

    #[test]
    fn offset_rows_keep_their_variance() {
        // 1e8 + {0, 1, 2, 3}: variance 1.25 exactly.
        let x: Vec<f64> = (0..4).map(|i| 1.0e8 + i as f64).collect();
        let s = row_stats(&x, 0.0);
        assert_eq!(s.mean, 1.0e8 + 1.5);
        assert_eq!(s.rstd, 1.0 / 1.25f64.sqrt());
        let x: Vec<f32> = (0..4).map(|i| 1.0e4 + i as f32).collect();
        let s = row_stats(&x, 0.0);
        assert_eq!(s.mean, 1.0e4 + 1.5);
        assert_eq!(s.rstd, 1.0 / 1.25f64.sqrt());
    }

    #[test]
    fn huge_and_tiny_f64_rows_are_rescaled() {
        for scale in [1e200, 1e-200, 1e300] {
            let x: Vec<f64> = [1.0, 2.0, 3.0, 4.0].iter().map(|v| v * scale).collect();
            let s = row_stats(&x, 0.0);
            let rel = (s.rstd * 1.25f64.sqrt() * scale - 1.0).abs();
            assert!(rel < 1e-15, "scale {scale}: rstd {} rel {rel}", s.rstd);
            assert!((s.mean / (2.5 * scale) - 1.0).abs() < 1e-15);
        }
        // Squares overflow while the mean is fine; any eps.
        for eps in [0.0, 1e-5] {
            let s = row_stats(&[1e200, -1e200], eps);
            assert_eq!(s.mean, 0.0);
            assert!(
                (s.rstd * 1e200 - 1.0).abs() < 1e-15,
                "eps {eps}: rstd {}",
                s.rstd
            );
        }
        // Opposite extremes: the differences overflow without a rescale.
        let x = [f64::MAX, -f64::MAX];
        let s = row_stats(&x, 1e-5);
        assert_eq!(s.mean, 0.0);
        assert!((s.rstd * f64::MAX - 1.0).abs() < 1e-15);
    }

    #[test]
    fn f64_mean_is_exact_to_the_last_bit() {
        // The exact mean 2.55999999999997385...: a plain f64 pass gets 2.5600000000000023.
        let s = row_stats(&[-511.92f64, 517.04], 0.0);
        assert_eq!(s.mean, 2.559999999999974);
    }

    #[test]
    fn nan_rows_stay_nan() {
        let s = row_stats(&[1.0f64, f64::NAN, 3.0], 1e-5);
        assert!(s.mean.is_nan() && s.rstd.is_nan());
        let s = row_stats(&[1.0f32, f32::INFINITY, 3.0], 1e-5);
        assert!(s.rstd.is_nan());
    }

    #[test]
    fn constant_and_empty_rows() {
        let s = row_stats(&[7.5f32; 100], 1e-5);
        assert_eq!(s.mean, 7.5);
        assert_eq!(s.shift - 7.5 + s.corr, 0.0);
        assert!(row_stats::<f64>(&[], 1e-5).mean.is_nan());
    }
}
