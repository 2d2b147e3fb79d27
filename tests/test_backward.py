"""layer_norm_backward and LayerNorm training: finite differences, accuracy against
an independent wide reference, degenerate rows, determinism across threads, SIMD
levels and batches, and the module's gradient bookkeeping.

Error bounds: each result is a difference or sum of terms (`g`, `mean(g)`,
`xhat·mean(g·xhat)` for dx; the rows for dweight/dbias) that the kernel forms in
float64 (compensated for float64 input) and rounds once. The bound is therefore
a few ulps of the size of those terms (`scaled_ulp_error` with the reference's
`scales`), which holds even where they cancel. float32 input comes with a
float32-rounded rstd (half an ulp), so float32 dx is within ~1.5 ulp, not 0.5.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import lnrs
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from lnrs import _lnrs
from reference import (
    assert_close_fd,
    central_differences,
    max_ulp,
    reference_layer_norm,
    reference_layer_norm_backward,
    rows_view,
    same_bits,
    scaled_ulp_error,
)

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
SUPPORTED = list(_lnrs.supported_simd_levels())

# Bounds in ulps of the terms' size (see the module docstring). Measured worst
# cases over many shapes, offsets and scales: float32 dx 1.5, dweight 1.2, dbias
# 0.5 (the exact sum rounded once); float64 about 3 for each.
TOL = {
    F32: {"dx": 2.0, "dweight": 2.0, "dbias": 0.5},
    F64: {"dx": 8.0, "dweight": 8.0, "dbias": 8.0},
}


def _dims(ns):
    return (int(ns),) if np.ndim(ns) == 0 else tuple(ns)


def _grads(x, ns, weight=None, bias=None, eps=1e-5, dy=None, rng=None):
    """(dy, dx, dweight, dbias, mean, rstd) of one forward + backward."""
    if dy is None:
        dy = rng.standard_normal(x.shape).astype(x.dtype)
    _, mean, rstd = lnrs.layer_norm_forward(x, ns, weight, bias, eps)
    dx, dw, db = lnrs.layer_norm_backward(dy, x, mean, rstd, ns, weight)
    return dy, dx, dw, db, mean, rstd


def _errors(dy, x, ns, weight, eps, dx, dw, db):
    """Worst scaled-ulp error of dx, dweight, dbias against the reference."""
    rdx, rdw, rdb, scales = reference_layer_norm_backward(dy, x, ns, weight, eps)
    dtype = np.asarray(x).dtype
    out = {}
    for name, got, ref in [("dx", dx, rdx), ("dweight", dw, rdw), ("dbias", db, rdb)]:
        e = scaled_ulp_error(got, ref, scales[name], dtype)
        out[name] = float(e.max()) if e.size else 0.0
    return out


def assert_accurate(dy, x, ns, weight, eps, dx, dw, db, tol=None):
    x = np.asarray(x)
    dims = _dims(ns)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    assert dw.shape == dims and dw.dtype == x.dtype
    assert db.shape == dims and db.dtype == x.dtype
    tol = tol or TOL[x.dtype]
    errs = _errors(dy, x, ns, weight, eps, dx, dw, db)
    bad = {k: round(v, 2) for k, v in errs.items() if not v <= tol[k]}
    assert not bad, f"ulps from the reference: {errs} (bounds {tol})"


# ----------------------------------------------------------- finite differences

FD_SHAPES = [((2, 3, 4), (3, 4)), ((5, 7), 7), ((3, 2, 2, 5), (2, 2, 5))]


def _loss(x, ns, w, b, eps, dy):
    """sum(layer_norm(x) * dy), summed exactly so that only y's rounding remains."""
    return math.fsum((lnrs.layer_norm(x, ns, w, b, eps) * dy).ravel())


@pytest.mark.parametrize("eps", [1e-5, 0.5])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape,ns", FD_SHAPES)
def test_finite_differences_float64(shape, ns, weighted, eps, rng):
    dims = _dims(ns)
    x = rng.standard_normal(shape) * 1.5 + 2.0
    dy = rng.standard_normal(shape)
    w = rng.standard_normal(dims) if weighted else None
    b = rng.standard_normal(dims)
    _, mean, rstd = lnrs.layer_norm_forward(x, ns, w, b, eps)
    dx, dw, db = lnrs.layer_norm_backward(dy, x, mean, rstd, ns, w)

    assert_close_fd(dx, central_differences(lambda v: _loss(v, ns, w, b, eps, dy), x), "dx")
    # Without a weight, dweight is what a weight of ones would get.
    w0 = np.ones(dims) if w is None else w
    assert_close_fd(dw, central_differences(lambda v: _loss(x, ns, v, b, eps, dy), w0), "dweight")
    assert_close_fd(db, central_differences(lambda v: _loss(x, ns, w, v, eps, dy), b), "dbias")
    # A formula that ignores eps or the weight cannot pass: the gradient is not trivial.
    assert np.abs(dx).max() > 1e-2 and np.abs(dw).max() > 1e-2


def test_finite_differences_one_dimensional_input(rng):
    x = rng.standard_normal(9) * 3 - 1
    dy = rng.standard_normal(9)
    w = rng.standard_normal(9)
    _, mean, rstd = lnrs.layer_norm_forward(x, 9, w)
    assert mean.shape == () and rstd.shape == ()
    dx, dw, db = lnrs.layer_norm_backward(dy, x, mean, rstd, 9, w)
    assert_close_fd(dx, central_differences(lambda v: _loss(v, 9, w, None, 1e-5, dy), x), "dx")
    assert_close_fd(dw, central_differences(lambda v: _loss(x, 9, v, None, 1e-5, dy), w), "dweight")
    assert same_bits(db, dy)


# --------------------------------------------------------------------- accuracy

ACC_SHAPES = [
    ((64, 7), 7),
    ((40, 33), 33),
    ((8, 1000), 1000),  # past one compensated block (16 steps of 32 lanes)
    ((3, 5000), 5000),
    ((300, 64), 64),
    ((4, 5, 6), (5, 6)),
    ((50, 2), 2),  # dx cancels to ~eps/var of its terms
    ((20, 3), 3),
    ((2, 3, 4, 8), (3, 4, 8)),
]
OFFSETS = {F32: [0.0, 1e4, -3e4], F64: [0.0, 1e8, -1e12]}


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(
    "dtype,offset", [(d, o) for d in (F32, F64) for o in OFFSETS[d]], ids=lambda v: str(v)
)
def test_matches_reference(dtype, offset, weighted, rng):
    for shape, ns in ACC_SHAPES:
        for scale in (1.0, 1e-3, 1e3):
            x = (rng.standard_normal(shape) * scale + offset).astype(dtype)
            w = rng.standard_normal(_dims(ns)).astype(dtype) if weighted else None
            dy, dx, dw, db, _, _ = _grads(x, ns, w, rng=rng)
            assert_accurate(dy, x, ns, w, 1e-5, dx, dw, db)


@pytest.mark.parametrize("dtype,offset", [(F32, 1e4), (F32, 1e6), (F64, 1e8), (F64, 1e12)])
def test_offset_data_needs_the_mean_correction(dtype, offset, rng):
    """The stored mean is rounded to x's dtype (off by up to half an ulp of the
    offset, far more than the data's spread allows); dx stays within ulps."""
    x = (rng.standard_normal((16, 100)) + offset).astype(dtype)
    w = rng.standard_normal(100).astype(dtype)
    dy, dx, dw, db, mean, _ = _grads(x, 100, w, rng=rng)
    exact_mean = rows_view(x, 1).astype(np.longdouble).mean(axis=1)
    # The premise: the stored mean is off by hundreds of ulps of the row's spread
    # (std 1), so using it as the mean would cost that much in xhat and dx.
    off = np.abs(mean.astype(np.longdouble) - exact_mean).max()
    assert off > 100 * np.finfo(dtype).eps, off
    assert_accurate(dy, x, 100, w, 1e-5, dx, dw, db)


def test_float64_xhat_next_to_the_mean_keeps_its_digits():
    """One row, dy = 1, no weight: dweight is xhat itself, which forward's y also
    is. For the element next to the row mean, y is exact; dweight must be too.
    (The correction Σ(x − mean)/n must not carry the rounding errors of the
    other elements' x − mean: they are ulps of the spread, not of this xhat.)"""
    x = np.array([1.3834856696607478, 0.19870598843646797, -0.9786234831482519])
    dy = np.ones(3)
    y, mean, rstd = lnrs.layer_norm_forward(x, 3)
    dx, dw, db = lnrs.layer_norm_backward(dy, x, mean, rstd, 3)
    yref, _, _ = reference_layer_norm(x, 3)
    assert max_ulp(y, yref, F64) <= 1  # the premise: forward gets xhat right
    assert_accurate(dy, x, 3, None, 1e-5, dx, dw, db)


def test_float64_dweight_of_single_short_rows(rng):
    """dweight of one row is dy·xhat elementwise: within ulps of each product."""
    worst = 0.0
    for _ in range(200):
        n = int(rng.integers(2, 9))
        x = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4) + rng.choice([0.0, 0.5, -3.0])
        dy = rng.standard_normal(n)
        _, mean, rstd = lnrs.layer_norm_forward(x, n)
        dx, dw, db = lnrs.layer_norm_backward(dy, x, mean, rstd, n)
        worst = max(worst, _errors(dy, x, n, None, 1e-5, dx, dw, db)["dweight"])
    assert worst <= TOL[F64]["dweight"], f"dweight is {worst:.1f} ulp from dy·xhat"


@pytest.mark.parametrize("dtype", [F32, F64])
def test_mean_is_only_a_shift(dtype, rng):
    """A mean a few ulps off (another rounding of the same mean) gives the same
    gradient to within the bound: the kernel corrects it by Σ(x − mean)/n."""
    x = (rng.standard_normal((10, 50)) + 1e4).astype(dtype)
    dy, dx, dw, db, mean, rstd = _grads(x, 50, rng=rng)
    for k in (-3, 4):
        moved = mean + k * np.spacing(mean)
        assert not np.array_equal(moved, mean)
        dx2, dw2, db2 = lnrs.layer_norm_backward(dy, x, moved, rstd, 50)
        assert_accurate(dy, x, 50, None, 1e-5, dx2, dw2, db2)
        assert same_bits(db2, db)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_non_contiguous_inputs_match_contiguous(dtype, rng):
    base = (rng.standard_normal((6, 10, 16)) + 2).astype(dtype)
    x = base[::2, :, ::2]  # strided
    dy = np.asfortranarray(rng.standard_normal(x.shape).astype(dtype))
    wbase = rng.standard_normal((10, 16)).astype(dtype)
    w = wbase[:, ::-2]
    ns = (10, 8)
    _, mean, rstd = lnrs.layer_norm_forward(x, ns, w)
    got = lnrs.layer_norm_backward(dy, x, mean, rstd, ns, w)
    want = lnrs.layer_norm_backward(
        np.ascontiguousarray(dy),
        np.ascontiguousarray(x),
        mean.copy(),
        rstd.copy(),
        ns,
        np.ascontiguousarray(w),
    )
    for g, e in zip(got, want):
        assert same_bits(g, e)
    assert_accurate(dy, x, ns, w, 1e-5, *got)


def test_inputs_are_not_modified(rng):
    x = (rng.standard_normal((300, 70)) + 5).astype(np.float32)  # parallel size
    w = rng.standard_normal(70).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    _, mean, rstd = lnrs.layer_norm_forward(x, 70, w)
    before = [a.copy() for a in (dy, x, mean, rstd, w)]
    lnrs.layer_norm_backward(dy, x, mean, rstd, 70, w)
    for a, b in zip((dy, x, mean, rstd, w), before):
        assert same_bits(a, b)


def test_weight_converted_to_x_dtype(rng):
    x = rng.standard_normal((5, 12)).astype(np.float32)
    w64 = rng.standard_normal(12)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    _, mean, rstd = lnrs.layer_norm_forward(x, 12, w64)
    got = lnrs.layer_norm_backward(dy, x, mean, rstd, 12, w64)
    want = lnrs.layer_norm_backward(dy, x, mean, rstd, 12, w64.astype(np.float32))
    for g, e in zip(got, want):
        assert same_bits(g, e)
    assert got[0].dtype == got[1].dtype == got[2].dtype == np.float32


# ------------------------------------------------------------- degenerate rows


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("shape,ns", [((5, 1), 1), ((4, 3, 1, 1), (1, 1)), ((1,), 1)])
def test_one_element_rows_have_zero_dx(shape, ns, dtype, rng):
    x = (rng.standard_normal(shape) * 100 + 7).astype(dtype)
    w = rng.standard_normal(_dims(ns)).astype(dtype) * 3
    dy, dx, dw, db, _, _ = _grads(x, ns, w, rng=rng)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert np.all(dx == 0), dx
    assert np.all(dw == 0)  # xhat is 0
    assert_accurate(dy, x, ns, w, 1e-5, dx, dw, db)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("value", [0.0, 3.7, -2.5e-3, 1e4, 1e8])
@pytest.mark.parametrize("n", [2, 33, 1000])
def test_constant_rows(n, value, dtype, rng):
    """xhat = 0 and rstd = 1/sqrt(eps): dx = rstd·(g − mean(g)), not zero."""
    eps = 1e-5
    x = np.full((4, n), value, dtype)
    w = rng.standard_normal(n).astype(dtype)
    dy, dx, dw, db, _, rstd = _grads(x, n, w, eps=eps, rng=rng)
    # Straight from the formula, in the wide type.
    wide = np.longdouble
    g = dy.astype(wide) * w.astype(wide)
    r = 1 / np.sqrt(wide(eps))
    want = r * (g - g.mean(axis=1, keepdims=True))
    scale = r * (np.abs(g) + np.abs(g).mean(axis=1, keepdims=True))
    err = scaled_ulp_error(dx, want, scale, dtype).max()
    assert err <= TOL[dtype]["dx"], f"{err:.2f} ulp from rstd·(g − mean(g))"
    assert np.abs(dx).max() > 1.0  # truly not zero: |g − mean(g)|·316
    assert np.all(dw == 0)
    assert_accurate(dy, x, n, w, eps, dx, dw, db)


def test_constant_rows_inside_a_batch(rng):
    x = (rng.standard_normal((9, 40)) + 2).astype(np.float32)
    x[[1, 4, 8]] = np.float32(2.5)
    w = rng.standard_normal(40).astype(np.float32)
    dy, dx, dw, db, _, _ = _grads(x, 40, w, rng=rng)
    assert_accurate(dy, x, 40, w, 1e-5, dx, dw, db)
    for r in (1, 4, 8):
        alone = lnrs.layer_norm_backward(dy[r], x[r], *lnrs.layer_norm_forward(x[r], 40)[1:], 40, w)
        assert same_bits(alone[0], dx[r])
        assert np.abs(dx[r]).max() > 1.0


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize(
    "shape,ns", [((0, 4), 4), ((0, 3, 4), (3, 4)), ((2, 0, 5), 5), ((0, 20000), 20000)]
)
@pytest.mark.parametrize("weighted", [False, True])
def test_zero_rows(shape, ns, dtype, weighted):
    dims = _dims(ns)
    x = np.empty(shape, dtype)
    w = np.full(dims, 2.0, dtype) if weighted else None
    _, mean, rstd = lnrs.layer_norm_forward(x, ns, w)
    dx, dw, db = lnrs.layer_norm_backward(np.empty(shape, dtype), x, mean, rstd, ns, w)
    assert dx.shape == shape and dx.dtype == dtype
    for a in (dw, db):
        assert a.shape == dims and a.dtype == dtype
        assert np.all(a == 0) and not np.signbit(a).any()


def test_zero_length_rows():
    x = np.empty((3, 0), np.float64)
    _, mean, rstd = lnrs.layer_norm_forward(x, 0)
    dx, dw, db = lnrs.layer_norm_backward(np.empty((3, 0)), x, mean, rstd, 0)
    assert dx.shape == (3, 0) and dw.shape == (0,) and db.shape == (0,)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("cols", [1, 40, 1000])
def test_nan_and_inf_in_x_stay_in_their_row(cols, dtype, rng):
    rows = 30  # 30 × 1000 runs in parallel
    x = (rng.standard_normal((rows, cols)) + 3).astype(dtype)
    w = rng.standard_normal(cols).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    _, mean, rstd = lnrs.layer_norm_forward(x, cols, w)
    clean = lnrs.layer_norm_backward(dy, x, mean, rstd, cols, w)
    bad = {2: np.nan, 11: np.inf, 25: -np.inf}
    xb = x.copy()
    for r, v in bad.items():
        xb[r, cols // 2] = v
    _, mb, rb = lnrs.layer_norm_forward(xb, cols, w)
    dx, dw, db = lnrs.layer_norm_backward(dy, xb, mb, rb, cols, w)
    good = [r for r in range(rows) if r not in bad]
    assert same_bits(dx[good], clean[0][good])
    assert np.isfinite(dx[good]).all()
    assert np.isnan(dx[list(bad)]).all()
    # dbias does not look at x; dweight sums the bad rows' NaN into every column.
    assert same_bits(db, clean[2])
    assert np.isnan(dw).all()


@pytest.mark.parametrize("dtype", [F32, F64])
def test_nan_in_dy_stays_in_its_row_and_column(dtype, rng):
    x = (rng.standard_normal((8, 12)) - 4).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    _, mean, rstd = lnrs.layer_norm_forward(x, 12)
    clean = lnrs.layer_norm_backward(dy, x, mean, rstd, 12)
    dyb = dy.copy()
    dyb[5, 7] = np.nan
    dx, dw, db = lnrs.layer_norm_backward(dyb, x, mean, rstd, 12)
    rows = [r for r in range(8) if r != 5]
    cols = [c for c in range(12) if c != 7]
    assert np.isnan(dx[5]).all()
    assert same_bits(dx[rows], clean[0][rows])
    assert np.isnan(dw[7]) and np.isnan(db[7])
    assert np.isfinite(dw[cols]).all() and np.isfinite(db[cols]).all()
    np.testing.assert_allclose(dw[cols], clean[1][cols], rtol=1e-6 if dtype == F32 else 1e-14)


# ------------------------------------------------ threads, SIMD levels (subprocess)

# Each case is past the inline threshold (2**14 elements) so that rows are split
# over threads, and dweight/dbias are merged from several fixed blocks.
WORKER = r"""
import hashlib, json, sys
import numpy as np
import lnrs

def digest(a):
    h = hashlib.sha256()
    h.update(str((a.dtype.str, a.shape)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()

cases = [
    ("f32-1024x768", np.float32, (1024, 768), 100.0, True),
    ("f64-300x1000", np.float64, (300, 1000), 1e4, True),
    ("f32-4096x33", np.float32, (4096, 33), 0.0, False),
    ("f64-5000x7", np.float64, (5000, 7), -3.0, True),
    ("f32-3x100000", np.float32, (3, 100_000), -50.0, False),
    ("f64-2x65537", np.float64, (2, 65_537), 1.0, True),
]
result = {"threads": lnrs.get_num_threads(), "simd": lnrs.simd_level(), "cases": {}}
for seed, (name, dtype, shape, offset, weighted) in enumerate(cases, start=2000):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3 + offset).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(shape[-1]).astype(dtype) if weighted else None
    _, mean, rstd = lnrs.layer_norm_forward(x, shape[-1], w)
    dx, dw, db = lnrs.layer_norm_backward(dy, x, mean, rstd, shape[-1], w)
    result["cases"][name] = [digest(dx), digest(dw), digest(db)]
    if name == "f32-1024x768":
        np.savez(sys.argv[1], dx=dx, dw=dw, db=db)
json.dump(result, sys.stdout)
"""


def _env(**settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LNRS_")}
    env.update({k: str(v) for k, v in settings.items()})
    return env


def _run_worker(tmp_path, **settings):
    tag = "-".join(f"{k}={v}" for k, v in settings.items()) or "default"
    npz = tmp_path / f"grads-{tag}.npz"
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(npz)],
        env=_env(**settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(npz) as f:
        arrays = (f["dx"], f["dw"], f["db"])
    return json.loads(proc.stdout), arrays


def _assert_worker_result_accurate(arrays):
    rng = np.random.default_rng(2000)  # the worker's first case
    x = (rng.standard_normal((1024, 768)) * 3 + 100.0).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(768).astype(np.float32)
    assert_accurate(dy, x, 768, w, 1e-5, *arrays)


def test_bitwise_identical_across_thread_counts(tmp_path):
    runs = {n: _run_worker(tmp_path, LNRS_NUM_THREADS=n) for n in (1, 2, 3)}
    for n, (report, _) in runs.items():
        assert report["threads"] == n, "LNRS_NUM_THREADS was not applied"
    base_report, base_arrays = runs[1]
    for n in (2, 3):
        report, arrays = runs[n]
        for name, digests in base_report["cases"].items():
            for what, a, b in zip(("dx", "dweight", "dbias"), report["cases"][name], digests):
                assert a == b, f"{name}: {what} differs with {n} threads"
        for a, b in zip(arrays, base_arrays):
            assert same_bits(a, b)
    _assert_worker_result_accurate(base_arrays)


@pytest.mark.skipif(len(SUPPORTED) < 2, reason="this CPU supports one SIMD level")
def test_bitwise_identical_across_simd_levels(tmp_path):
    runs = {level: _run_worker(tmp_path, LNRS_SIMD=level) for level in SUPPORTED}
    for level, (report, _) in runs.items():
        assert report["simd"] == level, "LNRS_SIMD was not applied"
    first = SUPPORTED[0]
    for level in SUPPORTED[1:]:
        for name, digests in runs[first][0]["cases"].items():
            for what, a, b in zip(
                ("dx", "dweight", "dbias"), runs[level][0]["cases"][name], digests
            ):
                assert a == b, f"{name}: {what} differs between {level} and {first}"
        for a, b in zip(runs[level][1], runs[first][1]):
            assert same_bits(a, b)
    _assert_worker_result_accurate(runs[SUPPORTED[-1]][1])


def test_bitwise_identical_after_set_num_threads(restore_threads, rng):
    x = (rng.standard_normal((700, 513)) + 20).astype(np.float32)
    x64 = rng.standard_normal((3, 70_001)) * 5
    w = rng.standard_normal(513).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dy64 = rng.standard_normal(x64.shape)
    _, m, r = lnrs.layer_norm_forward(x, 513, w)
    _, m64, r64 = lnrs.layer_norm_forward(x64, 70_001)
    outputs = []
    for n in (1, 2, 3, 1):
        lnrs.set_num_threads(n)
        outputs.append(
            lnrs.layer_norm_backward(dy, x, m, r, 513, w)
            + lnrs.layer_norm_backward(dy64, x64, m64, r64, 70_001)
        )
    for out in outputs[1:]:
        for a, b in zip(out, outputs[0]):
            assert same_bits(a, b)


# ------------------------------------------------------------- batch composition


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("shape,ns", [((1500, 37), 37), ((40, 1000), 1000), ((30, 4, 5), (4, 5))])
def test_row_alone_equals_row_in_batch(shape, ns, dtype, rng):
    x = (rng.standard_normal(shape) * 4 + 30).astype(dtype)
    w = rng.standard_normal(_dims(ns)).astype(dtype)
    dy, dx, dw, db, mean, rstd = _grads(x, ns, w, rng=rng)
    rows = shape[0]
    for pos in [0, 1, 17, rows // 2, rows - 1]:
        # The row as its own batch of one, with and without the batch axis.
        one = lnrs.layer_norm_backward(
            dy[pos : pos + 1], x[pos : pos + 1], mean[pos : pos + 1], rstd[pos : pos + 1], ns, w
        )
        assert same_bits(one[0], dx[pos : pos + 1]), pos
        alone = lnrs.layer_norm_backward(dy[pos], x[pos], mean[pos], rstd[pos], ns, w)
        assert same_bits(alone[0], dx[pos]), pos
        assert same_bits(alone[1], one[1]) and same_bits(alone[2], one[2])
        assert same_bits(alone[2], dy[pos])  # one row: dbias is that row's dy
    for k in (2, rows // 3):
        part = lnrs.layer_norm_backward(dy[-k:], x[-k:], mean[-k:], rstd[-k:], ns, w)
        assert same_bits(part[0], dx[-k:]), k
    # The same row planted in another batch, with its own statistics recomputed.
    other = rng.standard_normal(shape).astype(dtype)
    dother = rng.standard_normal(shape).astype(dtype)
    other[rows // 3], dother[rows // 3] = x[5], dy[5]
    _, mo, ro = lnrs.layer_norm_forward(other, ns, w)
    got = lnrs.layer_norm_backward(dother, other, mo, ro, ns, w)[0]
    assert same_bits(got[rows // 3], dx[5])


# ------------------------------------------------------------------ LayerNorm


def _trained_layer(rng, ns, dtype, **kw):
    ln = lnrs.LayerNorm(ns, dtype=dtype, **kw)
    if ln.weight is not None:
        ln.weight[...] = rng.standard_normal(ln.weight.shape)
    if ln.bias is not None:
        ln.bias[...] = rng.standard_normal(ln.bias.shape)
    return ln


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("shape,ns", [((6, 9), 9), ((3, 4, 2, 5), (2, 5))])
def test_module_backward_matches_functional(shape, ns, dtype, rng):
    ln = _trained_layer(rng, ns, dtype, eps=1e-3)
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    assert ln.weight_grad is None and ln.bias_grad is None
    y = ln.forward(x)
    dx = ln.backward(dy)
    yf, mean, rstd = lnrs.layer_norm_forward(x, ns, ln.weight, ln.bias, 1e-3)
    fdx, fdw, fdb = lnrs.layer_norm_backward(dy, x, mean, rstd, ns, ln.weight, eps=ln.eps)
    assert same_bits(y, yf)
    assert same_bits(dx, fdx)
    assert same_bits(ln.weight_grad, fdw) and same_bits(ln.bias_grad, fdb)
    assert_accurate(dy, x, ns, ln.weight, 1e-3, dx, ln.weight_grad, ln.bias_grad)


def test_module_grads_accumulate_and_reset(rng):
    ns = (3, 7)
    ln = _trained_layer(rng, ns, F32)
    xs = [(rng.standard_normal((5, 3, 7)) + k).astype(np.float32) for k in range(3)]
    dys = [rng.standard_normal((5, 3, 7)).astype(np.float32) for _ in range(3)]
    functional = []
    for x, dy in zip(xs, dys):
        _, m, r = lnrs.layer_norm_forward(x, ns, ln.weight, ln.bias)
        functional.append(lnrs.layer_norm_backward(dy, x, m, r, ns, ln.weight, eps=ln.eps))

    ln(xs[0])
    assert same_bits(ln.backward(dys[0]), functional[0][0])
    first_w, first_b = ln.weight_grad.copy(), ln.bias_grad.copy()
    assert same_bits(first_w, functional[0][1]) and same_bits(first_b, functional[0][2])
    ln(xs[1])
    ln.backward(dys[1])
    assert same_bits(ln.weight_grad, functional[0][1] + functional[1][1])
    assert same_bits(ln.bias_grad, functional[0][2] + functional[1][2])
    assert ln.weight_grad.dtype == np.float32 and ln.weight_grad.shape == ns
    assert same_bits(first_w, functional[0][1]), "a copy taken earlier was modified"

    ln.zero_grad()
    assert ln.weight_grad is None and ln.bias_grad is None
    ln(xs[2])
    ln.backward(dys[2])
    assert same_bits(ln.weight_grad, functional[2][1])
    assert same_bits(ln.bias_grad, functional[2][2])


def test_module_grads_do_not_alias_each_other(rng):
    ln = lnrs.LayerNorm(8)  # weight of ones: dweight computed as with no weight
    x = rng.standard_normal((4, 8)).astype(np.float32)
    ln(x)
    ln.backward(np.ones_like(x))
    wg, bg = ln.weight_grad, ln.bias_grad
    assert not np.shares_memory(wg, bg)
    assert not np.shares_memory(wg, ln.weight) and not np.shares_memory(bg, ln.bias)
    ln(x)
    ln.backward(np.ones_like(x))
    assert same_bits(ln.bias_grad, np.full(8, 8, np.float32))


def test_module_backward_needs_a_forward(rng):
    ln = lnrs.LayerNorm(6)
    dy = np.ones((2, 6), np.float32)
    with pytest.raises(ValueError, match="forward"):
        ln.backward(dy)
    assert ln.weight_grad is None and ln.bias_grad is None
    x = rng.standard_normal((2, 6)).astype(np.float32)
    ln(x)
    ln.backward(dy)
    w, b = ln.weight_grad.copy(), ln.bias_grad.copy()
    with pytest.raises(ValueError, match="forward"):
        ln.backward(dy)
    # The refused backward added nothing.
    assert same_bits(ln.weight_grad, w) and same_bits(ln.bias_grad, b)


def test_module_backward_with_bad_dy_adds_nothing(rng):
    ln = _trained_layer(rng, 6, F32)
    ln(rng.standard_normal((2, 6)).astype(np.float32))
    with pytest.raises(ValueError, match="dy"):
        ln.backward(np.ones((2, 5), np.float32))
    assert ln.weight_grad is None and ln.bias_grad is None


def test_module_without_affine_gives_dx_only(rng):
    ln = lnrs.LayerNorm((2, 5), elementwise_affine=False)
    x = (rng.standard_normal((4, 2, 5)) + 1).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    ln(x)
    dx = ln.backward(dy)
    _, m, r = lnrs.layer_norm_forward(x, (2, 5))
    assert same_bits(dx, lnrs.layer_norm_backward(dy, x, m, r, (2, 5), eps=ln.eps)[0])
    assert ln.weight_grad is None and ln.bias_grad is None


def test_module_without_bias(rng):
    ln = _trained_layer(rng, 5, F32, bias=False)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    ln(x)
    dx = ln.backward(dy)
    _, m, r = lnrs.layer_norm_forward(x, 5, ln.weight)
    fdx, fdw, _ = lnrs.layer_norm_backward(dy, x, m, r, 5, ln.weight, eps=ln.eps)
    assert same_bits(dx, fdx) and same_bits(ln.weight_grad, fdw)
    assert ln.bias_grad is None


def test_float32_module_on_float64_input(rng):
    ln = _trained_layer(rng, 10, F32)
    x = rng.standard_normal((3, 10)) * 2 + 1
    dy = rng.standard_normal(x.shape)
    y = ln(x)
    dx = ln.backward(dy)
    assert y.dtype == np.float64 and dx.dtype == np.float64
    w64, b64 = ln.weight.astype(np.float64), ln.bias.astype(np.float64)
    _, m, r = lnrs.layer_norm_forward(x, 10, w64, b64)
    fdx, fdw, fdb = lnrs.layer_norm_backward(dy, x, m, r, 10, w64, eps=ln.eps)
    assert same_bits(dx, fdx)
    assert ln.weight_grad.dtype == np.float32 and ln.bias_grad.dtype == np.float32
    assert same_bits(ln.weight_grad, fdw.astype(np.float32))
    assert same_bits(ln.bias_grad, fdb.astype(np.float32))


def test_float64_module_on_float32_input(rng):
    ln = _trained_layer(rng, 10, F64)
    x = rng.standard_normal((3, 10)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    ln(x)
    dx = ln.backward(dy)
    w32 = ln.weight.astype(np.float32)
    _, m, r = lnrs.layer_norm_forward(x, 10, w32)
    fdx, fdw, fdb = lnrs.layer_norm_backward(dy, x, m, r, 10, w32, eps=ln.eps)
    assert dx.dtype == np.float32 and same_bits(dx, fdx)
    assert same_bits(ln.weight_grad, fdw.astype(np.float64))
    assert same_bits(ln.bias_grad, fdb.astype(np.float64))


# ------------------------------------------------------------------ properties


@st.composite
def grad_cases(draw):
    dtype = draw(st.sampled_from([F64, F64, F32]))  # float64 first of all
    lead = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=2)))
    dims = tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=2)))
    offsets = [0.0, 1.0, -1e3] + ([1e4] if dtype == F32 else [1e8, -1e12])
    return dict(
        dtype=dtype,
        lead=lead,
        dims=dims,
        offset=draw(st.sampled_from(offsets)),
        scale=10.0 ** draw(st.floats(-3, 3)),
        dy_scale=10.0 ** draw(st.floats(-3, 3)),
        eps=draw(st.sampled_from([1e-12, 1e-5, 0.1, 1.0])),
        weighted=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grad_cases())
@example(  # one row next to its mean: see test_float64_xhat_next_to_the_mean_keeps_its_digits
    dict(
        dtype=F64,
        lead=(),
        dims=(28,),
        offset=0.0,
        scale=1.0,
        dy_scale=1.0,
        eps=1e-12,
        weighted=False,
        seed=0,
    )
)
def test_property_matches_reference(case):
    rng = np.random.default_rng(case["seed"])
    dtype, dims, eps = case["dtype"], case["dims"], case["eps"]
    shape = case["lead"] + dims
    x = (rng.standard_normal(shape) * case["scale"] + case["offset"]).astype(dtype)
    dy = (rng.standard_normal(shape) * case["dy_scale"]).astype(dtype)
    w = rng.standard_normal(dims).astype(dtype) if case["weighted"] else None
    _, mean, rstd = lnrs.layer_norm_forward(x, dims, w, None, eps)
    dx, dw, db = lnrs.layer_norm_backward(dy, x, mean, rstd, dims, w)
    assert_accurate(dy, x, dims, w, eps, dx, dw, db)

    # Σ dx over a row is 0 (Σ(g − mean(g)) = 0 and Σ xhat = 0), with or without weight.
    if dx.size:
        _, _, _, scales = reference_layer_norm_backward(dy, x, dims, w, eps)
        d = rows_view(dx, len(dims)).astype(np.longdouble)
        total = np.abs(d.sum(axis=1))
        size = np.abs(d).sum(axis=1)
        # Relative to Σ|dx|; where dx itself is a cancellation (var ≫ eps with a
        # few elements), relative to the terms it was formed from.
        terms = rows_view(scales["dx"], len(dims)).sum(axis=1)
        ulp = float(np.finfo(dtype).eps)
        bound = np.maximum(1e-13 * size, 4 * ulp * terms)
        assert np.all(total <= bound), (total, size, terms)
