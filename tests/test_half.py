"""float16 and bfloat16 storage (issue 6).

x, y, dy, dx and the fused sum are stored in the half type (bfloat16 is
ml_dtypes.bfloat16); weight and bias may be float32 (kept exact) or the input's
half type; mean, rstd, dweight and dbias are float32; eps is applied in a type
at least as wide as float32.

Accuracy is measured against the wide references of reference.py, fed with the
half values converted exactly to float64 (so they compute in long double), and
rounded to the half type here with a correct rounding of our own (`round_to`):
NumPy's float64 -> float16 cast is correctly rounded, but ml_dtypes' float64 ->
bfloat16 cast goes through float32 and can round twice (checked below).

The metric: |y - round(ref)| in units of the half type's spacing at
max(|round(ref)|, floor). LayerNorm outputs use the floor 2**-10 of the float32
tests (the spacing there is 2**-20 for float16, 2**-17 for bfloat16), as
`xhat·w + b` cancels; RMSNorm's `x·rstd·w` has no cancellation and gets no floor
(ulps of the result itself, subnormals included). The bound is 1 ulp.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lnrs
import numpy as np
import pytest
from lnrs import _lnrs
from reference import (
    reference_layer_norm,
    reference_layer_norm_backward,
    reference_rms_norm,
    reference_rms_norm_backward,
    same_bits,
)

F32 = np.dtype(np.float32)
F16 = np.dtype(np.float16)
SUPPORTED = list(_lnrs.supported_simd_levels())

# (significand bits with the hidden one, smallest normal exponent, largest exponent)
FORMATS = {"float16": (11, -14, 15), "bfloat16": (8, -126, 127), "float32": (24, -126, 127)}
LN_FLOOR = 2.0**-10
# rms_norm's default eps (torch.nn.functional.rms_norm: finfo(x.dtype).eps).
DEFAULT_RMS_EPS = {"float16": float(np.finfo(np.float16).eps), "bfloat16": 2.0**-7}
# Gradients, in ulps of their dtype at the size of the terms they are formed from
# (reference.py's `scales`, floored at 2**-10). Backward gets float32 mean/rstd,
# a relative error of 2**-24, far below a half ulp: dx is within an ulp of the
# half type (measured 0.5). dweight/dbias are float32, measured within 1 ulp;
# the bound leaves room for the float32 accumulation the contract allows.
DX_TOL = 1.0
DPARAM_TOL = 4.0


@pytest.fixture(params=["float16", "bfloat16"])
def half(request):
    if request.param == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return F16


# ----------------------------------------------------------------------- helpers


def round_to(v, dtype) -> np.ndarray:
    """float64 values correctly rounded (to nearest, ties to even, subnormals,
    overflow to inf) to the half type `dtype`, returned in `dtype`."""
    dtype = np.dtype(dtype)
    p, emin, emax = FORMATS[dtype.name]
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        _, e = np.frexp(v)  # |v| in [2**(e-1), 2**e)
        q = np.maximum(e - 1, emin) - (p - 1)  # the exponent of the last kept bit
        r = np.ldexp(np.rint(np.ldexp(v, -q)), q)  # exact scaling; rint ties to even
        r = np.where(np.abs(r) >= 2.0 ** (emax + 1), np.copysign(np.inf, v), r)
        r = np.where(np.isfinite(v), r, v)
    return r.astype(dtype)  # every value is representable: the cast is exact


def spacing(a, dtype) -> np.ndarray:
    """The spacing of `dtype` at |a| (float64 arrays), subnormal spacing at 0."""
    p, emin, _ = FORMATS[np.dtype(dtype).name]
    a = np.abs(np.asarray(a, dtype=np.float64))
    _, e = np.frexp(a)
    exp = np.where(a == 0, emin, np.maximum(e - 1, emin))
    return np.ldexp(1.0, exp - (p - 1))


def ulps(y, r, dtype, floor) -> np.ndarray:
    """|y - r| in spacings of `dtype` at max(|r|, floor); y and r in float64-exact types."""
    y64 = np.asarray(y).astype(np.float64)
    r64 = np.asarray(r).astype(np.float64)
    same = (y64 == r64) | (np.isnan(y64) & np.isnan(r64))
    with np.errstate(invalid="ignore"):
        err = np.abs(y64 - r64) / spacing(np.maximum(np.abs(r64), floor), dtype)
    return np.where(same, 0.0, err)


def assert_ulps(y, ref_wide, dtype, floor, tol=1.0, what="y"):
    """`y` (of `dtype`) within `tol` ulps of `ref_wide` correctly rounded to `dtype`."""
    dtype = np.dtype(dtype)
    assert y.dtype == dtype, f"{what} has dtype {y.dtype}, expected {dtype}"
    ref64 = np.asarray(ref_wide).astype(np.float64)
    r = round_to(ref64, dtype) if dtype.name in ("float16", "bfloat16") else ref64.astype(dtype)
    assert y.shape == r.shape
    err = ulps(y, r, dtype, floor)
    if err.size and err.max() > tol:
        i = np.unravel_index(np.nanargmax(err), err.shape)
        pytest.fail(
            f"{what}: {err.max():.3g} ulp of {dtype} at {i}: got {y[i]!r}, "
            f"exactly rounded {r[i]!r} (reference {ref64[i]!r})"
        )


def assert_scaled(g, ref, scale, dtype, tol, what):
    """A gradient within `tol` ulps of `dtype` at the size of its terms."""
    assert g.dtype == np.dtype(dtype), f"{what} has dtype {g.dtype}, expected {dtype}"
    diff = np.abs(g.astype(np.float64) - np.asarray(ref).astype(np.float64))
    s = np.maximum(np.abs(np.asarray(scale).astype(np.float64)), LN_FLOOR)
    err = diff / spacing(s, dtype)
    assert err.max() <= tol, f"{what}: {err.max():.3g} ulp of {np.dtype(dtype)} at its scale"


def wide(a):
    """Half or float32 values as float64 (exact), so that reference.py works in long double."""
    return None if a is None else np.asarray(a).astype(np.float64)


def make_x(rng, shape, dtype, kind):
    if kind == "normal":
        v = rng.standard_normal(shape) * 3
    elif kind == "offset":  # mean far from zero: x - mean cancels
        v = 100 + rng.standard_normal(shape)
    elif kind == "mixed":  # magnitudes from 2**-12 to 2**12 within a row
        v = rng.standard_normal(shape) * 2.0 ** rng.integers(-12, 13, size=shape)
    else:
        raise AssertionError(kind)
    return v.astype(dtype)


def make_params(rng, n, dtype, kind):
    """(weight, bias) in the half type, in float32 (with bits the half type
    lacks), or None."""
    if kind == "none":
        return None, None
    w = 1 + 0.5 * rng.standard_normal(n)
    b = rng.standard_normal(n)
    if kind == "half":
        return w.astype(dtype), b.astype(dtype)
    assert kind == "float32"
    w, b = w.astype(np.float32), b.astype(np.float32)
    assert not np.array_equal(w.astype(dtype).astype(np.float32), w)
    return w, b


def bits(a) -> bytes:
    return np.ascontiguousarray(a).tobytes()


# --------------------------------------------------- the reference's own rounding


def test_round_to_matches_numpys_float16_cast(rng):
    """round_to agrees with NumPy's (correctly rounded) float64 -> float16 cast,
    midpoints, subnormals and overflow included."""
    f16 = rng.integers(0, 0x7BFF, size=20_000).astype(np.uint16).view(np.float16)
    lo = f16.astype(np.float64)
    hi = np.nextafter(f16, np.float16(np.inf)).astype(np.float64)
    mid = (lo + hi) / 2
    v = np.concatenate(
        [
            lo,
            mid,
            np.nextafter(mid, np.inf),
            np.nextafter(mid, -np.inf),
            rng.standard_normal(5000) * 2.0 ** rng.integers(-30, 17, size=5000),
            [65504.0, 65519.99, 65520.0, 1e6, 2.0**-25, 2.0**-25 + 2.0**-60, 3 * 2.0**-26],
        ]
    )
    v = np.concatenate([v, -v])
    with np.errstate(over="ignore"):
        expected = v.astype(np.float16)
    assert bits(round_to(v, np.float16)) == bits(expected)


def test_round_to_bfloat16_rounds_once():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = np.dtype(ml_dtypes.bfloat16)
    # Just above the midpoint between 1 and 1 + 2**-7: up. Through float32 (which
    # drops 2**-40) it would be a tie and go to even, 1.
    v = np.array([1 + 2.0**-8 + 2.0**-40, 1 + 2.0**-8, 1 + 3 * 2.0**-8, -(1 + 2.0**-8 + 2.0**-40)])
    assert round_to(v, bf16).astype(np.float64).tolist() == [
        1 + 2.0**-7,
        1.0,
        1 + 2.0**-6,
        -(1 + 2.0**-7),
    ]
    # Everywhere else it agrees with ml_dtypes (float32 -> bfloat16 is correctly rounded).
    rng = np.random.default_rng(5)
    f = (rng.standard_normal(20_000) * 2.0 ** rng.integers(-140, 120, size=20_000)).astype(
        np.float32
    )
    assert bits(round_to(f.astype(np.float64), bf16)) == bits(f.astype(bf16))


# ------------------------------------------------------------------- forward


SHAPES = [((37, 96), 96), ((4, 3, 20), (3, 20)), ((2, 3000), 3000)]


@pytest.mark.parametrize("params", ["none", "half", "float32"])
@pytest.mark.parametrize("kind", ["normal", "offset", "mixed"])
@pytest.mark.parametrize("shape,ns", SHAPES, ids=["37x96", "4x3x20", "2x3000"])
def test_layer_norm_within_one_ulp(half, rng, shape, ns, kind, params):
    x = make_x(rng, shape, half, kind)
    dims = (ns,) if np.ndim(ns) == 0 else ns
    w, b = make_params(rng, dims, half, params)
    eps = 1e-5
    ref, mean_ref, rstd_ref = reference_layer_norm(wide(x), ns, wide(w), wide(b), eps)
    y, mean, rstd = lnrs.layer_norm_forward(x, ns, w, b, eps)
    assert_ulps(y, ref, half, LN_FLOOR)
    lead = shape[: len(shape) - len(dims)]
    for name, s, s_ref in (("mean", mean, mean_ref), ("rstd", rstd, rstd_ref)):
        assert s.dtype == F32 and s.shape == lead, (name, s.dtype, s.shape)
        assert_ulps(s, s_ref, F32, 2.0**-126, what=name)
    assert same_bits(lnrs.layer_norm(x, ns, w, b, eps), y)


@pytest.mark.parametrize("params", ["none", "half", "float32"])
@pytest.mark.parametrize("kind", ["normal", "offset", "mixed"])
@pytest.mark.parametrize("shape,ns", SHAPES, ids=["37x96", "4x3x20", "2x3000"])
def test_rms_norm_within_one_ulp(half, rng, shape, ns, kind, params):
    x = make_x(rng, shape, half, kind)
    dims = (ns,) if np.ndim(ns) == 0 else ns
    w, _ = make_params(rng, dims, half, params)
    eps = 1e-6
    ref, rstd_ref = reference_rms_norm(wide(x), ns, wide(w), eps)
    y, rstd = lnrs.rms_norm_forward(x, ns, w, eps)
    assert_ulps(y, ref, half, 0.0)
    assert rstd.dtype == F32 and rstd.shape == shape[: len(shape) - len(dims)]
    assert_ulps(rstd, rstd_ref, F32, 2.0**-126, what="rstd")
    assert same_bits(lnrs.rms_norm(x, ns, w, eps), y)


@pytest.mark.parametrize("params", ["none", "half", "float32"])
@pytest.mark.parametrize("op", ["add_layer_norm", "add_rms_norm"])
def test_fused_add_sum_is_numpys_and_y_within_one_ulp(half, rng, op, params):
    shape, n = (29, 160), 160
    x = make_x(rng, shape, half, "normal")
    residual = make_x(rng, shape, half, "offset")
    w, b = make_params(rng, n, half, params)
    expected_s = x + residual
    assert expected_s.dtype == half
    if op == "add_layer_norm":
        y, s = lnrs.add_layer_norm(x, residual, n, w, b, 1e-5)
        ref, _, _ = reference_layer_norm(wide(expected_s), n, wide(w), wide(b), 1e-5)
        unfused = lnrs.layer_norm(expected_s, n, w, b, 1e-5)
        floor = LN_FLOOR
    else:
        y, s = lnrs.add_rms_norm(x, residual, n, w, 1e-6)
        ref, _ = reference_rms_norm(wide(expected_s), n, wide(w), 1e-6)
        unfused = lnrs.rms_norm(expected_s, n, w, 1e-6)
        floor = 0.0
    assert same_bits(s, expected_s), "s differs from NumPy's x + residual"
    assert same_bits(y, unfused), "y differs from the unfused norm of s"
    assert_ulps(y, ref, half, floor)


def test_fused_add_in_place_into_the_residual(half, rng):
    x = make_x(rng, (8, 64), half, "normal")
    residual = make_x(rng, (8, 64), half, "normal")
    expected_s = x + residual
    expected_y = lnrs.layer_norm(expected_s, 64)
    y, s = lnrs.add_layer_norm(x, residual, 64, sum_out=residual, out=x)
    assert s is residual and y is x
    assert same_bits(residual, expected_s) and same_bits(x, expected_y)


def test_in_place_matches_out_of_place(half, rng):
    x = make_x(rng, (16, 200), half, "offset")
    w, b = make_params(rng, 200, half, "float32")
    expected = lnrs.layer_norm(x, 200, w, b)
    y = lnrs.layer_norm(x, 200, w, b, out=x)
    assert y is x and same_bits(x, expected)
    x = make_x(rng, (16, 200), half, "normal")
    expected = lnrs.rms_norm(x, 200, w)
    assert same_bits(lnrs.rms_norm(x, 200, w, out=x), expected)


# ------------------------------------------------------------ weights and bias


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_float32_parameters_keep_their_bits(half, op):
    """float32 weight/bias with bits below the half type's precision are used as
    they are: rows of ±1 make `xhat·w + b` cancel down to what rounding the
    parameters to the half type would lose (many ulps at the floor)."""
    n = 16
    x = np.tile(np.array([1.0, -1.0], dtype=half), (3, n // 2))
    fine = np.float32(1 + 2.0**-14)  # 1 in float16 and in bfloat16
    assert fine.astype(half) == 1
    if op == "layer_norm":
        cases = [  # (weight, bias)
            (np.full(n, fine, np.float32), np.full(n, -1.0, np.float32)),
            (None, np.full(n, fine, np.float32)),
            (np.full(n, fine, np.float32), np.full(n, -1.0, half)),
            (np.full(n, 1.0, half), np.full(n, fine, np.float32)),
        ]
        for w, b in cases:
            ref, _, _ = reference_layer_norm(wide(x), n, wide(w), wide(b), 1e-5)
            y = lnrs.layer_norm(x, n, w, b, 1e-5)
            assert_ulps(y, ref, half, LN_FLOOR, what=f"weight {w}, bias {b}")
            rounded = [None if p is None else p.astype(half) for p in (w, b)]
            ref_rounded, _, _ = reference_layer_norm(wide(x), n, *map(wide, rounded), 1e-5)
            assert ulps(y, round_to(ref_rounded.astype(np.float64), half), half, LN_FLOOR).max() > 1
    else:
        # float16 only: weights beyond its range stay finite in float32.
        if half != F16:
            pytest.skip("bfloat16 has float32's range")
        x = np.ones((3, n), half)
        x[:, -1] = 2.0**-10
        w = np.ones(n, np.float32)
        w[-1] = 1e5  # inf in float16
        ref, _ = reference_rms_norm(wide(x), n, wide(w), 1e-6)
        y = lnrs.rms_norm(x, n, w, 1e-6)
        assert np.isfinite(y).all()
        assert_ulps(y, ref, half, 0.0)


def test_other_parameter_dtypes_go_through_float32(half, rng):
    """float64, Python lists and the other half type are converted to float32
    (not to the input's half type)."""
    x = make_x(rng, (10, 24), half, "normal")
    w64 = 1 + 2.0**-14 + rng.standard_normal(24) * 0.1
    b64 = rng.standard_normal(24)
    expected = lnrs.layer_norm(x, 24, w64.astype(np.float32), b64.astype(np.float32))
    assert same_bits(lnrs.layer_norm(x, 24, w64, b64), expected)
    assert same_bits(lnrs.layer_norm(x, 24, w64.tolist(), b64.tolist()), expected)
    expected = lnrs.rms_norm(x, 24, w64.astype(np.float32))
    assert same_bits(lnrs.rms_norm(x, 24, w64), expected)
    other = np.dtype(pytest.importorskip("ml_dtypes").bfloat16) if half == F16 else F16
    w_other = w64.astype(other)
    assert same_bits(
        lnrs.layer_norm(x, 24, w_other), lnrs.layer_norm(x, 24, w_other.astype(np.float32))
    )


# ----------------------------------------------------------------- eps, extremes


@pytest.mark.parametrize("eps", [1e-12, 2.0**-30])
@pytest.mark.parametrize("bias_dtype", ["half", "float32", "none"])
def test_zero_rows_with_tiny_eps_give_bias(half, eps, bias_dtype):
    """eps below the half type's range (1e-12 is 0 in float16) is applied in the
    wide type: a zero row gives exactly the bias, not NaN."""
    n = 12
    x = np.zeros((3, n), half)
    b = np.linspace(-3, 3, n)
    b = {"half": b.astype(half), "float32": b.astype(np.float32), "none": None}[bias_dtype]
    expected = np.zeros((3, n), half) if b is None else np.broadcast_to(b.astype(half), (3, n))
    y, mean, rstd = lnrs.layer_norm_forward(x, n, None, b, eps)
    assert same_bits(y, np.ascontiguousarray(expected))
    assert mean.dtype == F32 and (mean == 0).all()
    assert rstd.dtype == F32 and (rstd == np.float32(1 / np.sqrt(eps))).all()
    y, s = lnrs.add_layer_norm(x, x, n, None, b, eps)
    assert same_bits(y, np.ascontiguousarray(expected)) and same_bits(s, x)
    # And a constant (non-zero) row: xhat is exactly 0.
    c = np.full((2, n), 3.0, half)
    assert same_bits(lnrs.layer_norm(c, n, None, b, eps), np.ascontiguousarray(expected[:2]))
    y, rstd = lnrs.rms_norm_forward(x, n, None, eps)
    assert same_bits(y, np.zeros((3, n), half))
    assert (rstd == np.float32(1 / np.sqrt(eps))).all()


def test_large_values_whose_squares_overflow(half):
    """float16 rows near 65504 (squares overflow float16) and bfloat16 rows near
    1e30 (squares overflow float32) normalise correctly."""
    big = 60000.0 if half == F16 else 1e30
    rng = np.random.default_rng(3)
    n = 64
    x = (big * rng.uniform(-1, 1, size=(6, n))).astype(half)
    x[:, 0] = big
    x[:, 1] = -big
    x[0] = np.float64(big)  # a constant row
    x[1, 2:] = 0
    w = (1 + 0.5 * rng.standard_normal(n)).astype(np.float32)
    b = rng.standard_normal(n).astype(half)
    ref, mean_ref, rstd_ref = reference_layer_norm(wide(x), n, wide(w), wide(b), 1e-5)
    y, mean, ln_rstd = lnrs.layer_norm_forward(x, n, w, b, 1e-5)
    assert np.isfinite(y).all()
    assert_ulps(y, ref, half, LN_FLOOR)
    assert_ulps(mean, mean_ref, F32, 2.0**-126, what="mean")
    assert_ulps(ln_rstd, rstd_ref, F32, 2.0**-126, what="rstd")
    ref, rstd_ref = reference_rms_norm(wide(x), n, wide(w), 1e-6)
    y, rstd = lnrs.rms_norm_forward(x, n, w, 1e-6)
    assert np.isfinite(y).all()
    assert_ulps(y, ref, half, 0.0)
    assert_ulps(rstd, rstd_ref, F32, 2.0**-126, what="rstd")
    # Backward through such rows too.
    dy = rng.standard_normal((6, n)).astype(half)
    dx_ref, dw_ref, _, scales = reference_layer_norm_backward(wide(dy), wide(x), n, wide(w), 1e-5)
    dx, dw, _ = lnrs.layer_norm_backward(dy, x, mean, ln_rstd, n, w)
    assert_scaled(dx, dx_ref, scales["dx"], half, DX_TOL, "dx")
    assert_scaled(dw, dw_ref, scales["dweight"], F32, DPARAM_TOL, "dweight")
    dx_ref, dw_ref, scales = reference_rms_norm_backward(wide(dy), wide(x), n, wide(w), 1e-6)
    dx, dw = lnrs.rms_norm_backward(dy, x, rstd, n, w)
    assert_scaled(dx, dx_ref, scales["dx"], half, DX_TOL, "dx")
    assert_scaled(dw, dw_ref, scales["dweight"], F32, DPARAM_TOL, "dweight")


def test_rms_norm_default_eps(half, rng):
    """eps=None is finfo(float16).eps = 2**-10 for float16 and 2**-7 for bfloat16."""
    eps = DEFAULT_RMS_EPS[half.name]
    # Small rows, so that eps matters: mean(x²) is about 2**-14.
    x = (rng.standard_normal((9, 40)) * 2.0**-7).astype(half)
    y, rstd = lnrs.rms_norm_forward(x, 40)
    y_eps, rstd_eps = lnrs.rms_norm_forward(x, 40, None, eps)
    assert same_bits(y, y_eps) and same_bits(rstd, rstd_eps)
    ref, rstd_ref = reference_rms_norm(wide(x), 40, None, eps)
    assert_ulps(y, ref, half, 0.0)
    assert_ulps(rstd, rstd_ref, F32, 2.0**-126, what="rstd")
    other = lnrs.rms_norm(x, 40, None, float(np.finfo(np.float32).eps))
    assert not same_bits(y, other), "the default eps is float32's, not the half type's"
    assert same_bits(lnrs.rms_norm(x, 40), y)
    residual = np.zeros_like(x)
    assert same_bits(lnrs.add_rms_norm(x, residual, 40)[0], y)
    layer = lnrs.RMSNorm(40)
    assert same_bits(layer(x), y)


# ------------------------------------------------------------------- backward


@pytest.mark.parametrize("params", ["none", "half", "float32"])
@pytest.mark.parametrize("kind", ["normal", "offset"])
def test_layer_norm_backward(half, rng, kind, params):
    shape, n = (23, 130), 130
    x = make_x(rng, shape, half, kind)
    dy = rng.standard_normal(shape).astype(half)
    w, b = make_params(rng, n, half, params)
    eps = 1e-5
    _, mean, rstd = lnrs.layer_norm_forward(x, n, w, b, eps)
    dx, dw, db = lnrs.layer_norm_backward(dy, x, mean, rstd, n, w)
    assert dx.shape == shape and dw.shape == (n,) and db.shape == (n,)
    dx_ref, dw_ref, db_ref, scales = reference_layer_norm_backward(
        wide(dy), wide(x), n, wide(w), eps
    )
    assert_scaled(dx, dx_ref, scales["dx"], half, DX_TOL, "dx")
    assert_scaled(dw, dw_ref, scales["dweight"], F32, DPARAM_TOL, "dweight")
    assert_scaled(db, db_ref, scales["dbias"], F32, DPARAM_TOL, "dbias")


@pytest.mark.parametrize("params", ["none", "half", "float32"])
@pytest.mark.parametrize("kind", ["normal", "mixed"])
def test_rms_norm_backward(half, rng, kind, params):
    shape, n = (23, 130), 130
    x = make_x(rng, shape, half, kind)
    dy = rng.standard_normal(shape).astype(half)
    w, _ = make_params(rng, n, half, params)
    eps = 1e-6
    _, rstd = lnrs.rms_norm_forward(x, n, w, eps)
    dx, dw = lnrs.rms_norm_backward(dy, x, rstd, n, w)
    assert dx.shape == shape and dw.shape == (n,)
    dx_ref, dw_ref, scales = reference_rms_norm_backward(wide(dy), wide(x), n, wide(w), eps)
    assert_scaled(dx, dx_ref, scales["dx"], half, DX_TOL, "dx")
    assert_scaled(dw, dw_ref, scales["dweight"], F32, DPARAM_TOL, "dweight")


def test_backward_takes_the_statistics_as_float32_only(half, rng):
    x = make_x(rng, (4, 16), half, "normal")
    _, mean, rstd = lnrs.layer_norm_forward(x, 16)
    with pytest.raises(ValueError, match="rstd"):
        lnrs.layer_norm_backward(x, x, mean, rstd.astype(half), 16)
    with pytest.raises(ValueError, match="dy"):
        lnrs.layer_norm_backward(x.astype(np.float32), x, mean, rstd, 16)


# -------------------------------------------------------------------- modules


@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
def test_modules_with_half_input_and_float32_parameters(half, rng, cls):
    n = 48
    layer = getattr(lnrs, cls)(n)  # float32 parameters
    assert layer.weight.dtype == F32
    layer.weight[:] = 1 + 0.5 * rng.standard_normal(n)
    if cls == "LayerNorm":
        layer.bias[:] = rng.standard_normal(n)
    bias = layer.bias if cls == "LayerNorm" else None
    x = make_x(rng, (7, n), half, "offset")
    dy = rng.standard_normal((7, n)).astype(half)
    y = layer(x)
    dx = layer.backward(dy)
    assert dx.dtype == half and dx.shape == x.shape
    assert layer.weight_grad.dtype == F32
    if cls == "LayerNorm":
        ref, _, _ = reference_layer_norm(wide(x), n, wide(layer.weight), wide(bias), 1e-5)
        assert_ulps(y, ref, half, LN_FLOOR)
        dx_ref, dw_ref, db_ref, scales = reference_layer_norm_backward(
            wide(dy), wide(x), n, wide(layer.weight), 1e-5
        )
        assert layer.bias_grad.dtype == F32
        assert_scaled(layer.bias_grad, db_ref, scales["dbias"], F32, DPARAM_TOL, "bias_grad")
    else:
        eps = DEFAULT_RMS_EPS[half.name]
        ref, _ = reference_rms_norm(wide(x), n, wide(layer.weight), eps)
        assert_ulps(y, ref, half, 0.0)
        dx_ref, dw_ref, scales = reference_rms_norm_backward(
            wide(dy), wide(x), n, wide(layer.weight), eps
        )
    assert_scaled(dx, dx_ref, scales["dx"], half, DX_TOL, "dx")
    assert_scaled(layer.weight_grad, dw_ref, scales["dweight"], F32, DPARAM_TOL, "weight_grad")


@pytest.mark.parametrize("cls", ["LayerNorm", "RMSNorm"])
def test_modules_in_the_half_dtype(half, rng, cls):
    n = 32
    layer = getattr(lnrs, cls)(n, dtype=half)
    assert layer.weight.dtype == half
    x = make_x(rng, (5, n), half, "normal")
    y = layer(x)
    assert y.dtype == half
    fn = lnrs.layer_norm if cls == "LayerNorm" else lnrs.rms_norm
    assert same_bits(y, fn(x, n, layer.weight))
    layer.backward(rng.standard_normal((5, n)).astype(half))
    assert layer.weight_grad.dtype == half  # accumulated in the parameter's dtype


# ------------------------------------------------- determinism (fresh processes)

WORKER = r"""
import hashlib, json
import numpy as np
import lnrs

def digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(str((a.dtype.str, a.dtype.name, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()

def run():
    dtypes = [np.dtype(np.float16)]
    try:
        import ml_dtypes
        dtypes.append(np.dtype(ml_dtypes.bfloat16))
    except ImportError:
        pass
    cases = []
    for dt in dtypes:
        cases += [(dt, (512, 1024), 100.0), (dt, (3, 100_000), -5.0)]
    cases.append((np.dtype(np.float16), (4096, 33), 0.0))
    out = {}
    for seed, (dt, shape, offset) in enumerate(cases, start=2000):
        rng = np.random.default_rng(seed)
        n = shape[-1]
        x = (rng.standard_normal(shape) * 3 + offset).astype(dt)
        r = rng.standard_normal(shape).astype(dt)
        dy = rng.standard_normal(shape).astype(dt)
        w = (1 + rng.standard_normal(n) / 4).astype(np.float32)
        b = rng.standard_normal(n).astype(dt)
        y, mean, rstd = lnrs.layer_norm_forward(x, n, w, b)
        back = lnrs.layer_norm_backward(dy, x, mean, rstd, n, w)
        ry, rrstd = lnrs.rms_norm_forward(x, n, w)
        rback = lnrs.rms_norm_backward(dy, x, rrstd, n, w)
        fused = lnrs.add_layer_norm(x, r, n, w, b) + lnrs.add_rms_norm(x, r, n, w)
        out[f"{dt.name}-{shape}"] = [
            digest(y, mean, rstd), digest(*back), digest(ry, rrstd), digest(*rback),
            digest(*fused),
        ]
    return out

if __name__ == "__main__":
    report = {"threads": lnrs.get_num_threads(), "simd": lnrs.simd_level(), "cases": run()}
    print(json.dumps(report))
"""


def _run_worker(**settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LNRS_")}
    env.update({k: str(v) for k, v in settings.items()})
    proc = subprocess.run(
        [sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_bitwise_identical_across_threads_and_simd_levels():
    """Parallel-sized half-precision cases (forward, backward, fused) give the
    same bits with 1, 2 and 3 threads and on every SIMD level, and the same as
    this process."""
    namespace = {"__name__": "worker"}
    exec(compile(WORKER, "worker", "exec"), namespace)
    expected = namespace["run"]()
    runs = [{"LNRS_NUM_THREADS": n} for n in (1, 2, 3)]
    runs += [{"LNRS_NUM_THREADS": 3, "LNRS_SIMD": level} for level in SUPPORTED[:-1]]
    for settings in runs:
        report = _run_worker(**settings)
        assert report["threads"] == settings["LNRS_NUM_THREADS"]
        assert report["simd"] == settings.get("LNRS_SIMD", SUPPORTED[-1])
        for name, digests in expected.items():
            assert report["cases"][name] == digests, f"{name} differs with {settings}"
