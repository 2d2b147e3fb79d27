"""RMSNorm: rms_norm / rms_norm_forward / rms_norm_backward and the RMSNorm layer.

Semantics are torch.nn.functional.rms_norm's and ONNX RMSNormalization's:
`y = x / sqrt(mean(x²) + eps) · weight` over the trailing `normalized_shape`
axes, `eps=None` meaning `np.finfo(x.dtype).eps`. Results are measured against
the independent wide reference in reference.py (float64 for float32 input,
long double for float64), with the ulp metrics the LayerNorm tests use: the
output within 2 ulp (float32) / 16 ulp (float64) with the 2**-10 floor, rstd
within 1 / 2 ulp, and gradients within a few ulps of the size of the terms they
are formed from (see tests/test_backward.py).
"""

from __future__ import annotations

import json
import math

import lnrs
import numpy as np
import pytest
import workers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lnrs import _lnrs
from reference import (
    assert_close_fd,
    central_differences,
    max_ulp,
    reference_rms_norm,
    reference_rms_norm_backward,
    rows_view,
    same_bits,
    scaled_ulp_error,
)

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
SUPPORTED = list(_lnrs.supported_simd_levels())

Y_TOL = {F32: 2.0, F64: 16.0}
RSTD_TOL = {F32: 1.0, F64: 2.0}
# Gradients against the reference (exact rstd), in ulps of the size of their terms.
# float32 backward is given forward's float32 rstd (within half an ulp); dx's
# second term x·rstd³·mean(g·x) carries it three times: up to 3 ulps of the terms
# plus the final rounding (measured 2.7). float64 measured about 4.5.
GRAD_TOL = {F32: {"dx": 3.5, "dweight": 2.0}, F64: {"dx": 8.0, "dweight": 8.0}}
# The same formulas evaluated exactly with the rstd backward was given: float32
# results are then correctly rounded (measured 0.4999997), float64 within ~2.5.
FORMULA_TOL = {F32: 0.501, F64: 8.0}
EPS = {F32: float(np.finfo(np.float32).eps), F64: float(np.finfo(np.float64).eps)}

# 1-element rows, remainders of the 32-lane loop on either side of a multiple, long rows.
ROW_LENGTHS = [1, 3, 31, 32, 33, 768, 4097]


def _dims(ns):
    return (int(ns),) if np.ndim(ns) == 0 else tuple(int(d) for d in ns)


def assert_accurate(x, ns, weight, eps, y, rstd=None):
    """y (and rstd when given) within tolerance of the wide reference.

    `eps` is the value the reference uses (None: finfo(x.dtype).eps)."""
    x = np.asarray(x)
    dtype = x.dtype
    ref, rref = reference_rms_norm(x, ns, weight, eps)
    assert y.shape == x.shape and y.dtype == dtype
    worst = max_ulp(y, ref, dtype)
    assert worst <= Y_TOL[dtype], f"y is {worst:.2f} ulp from the reference"
    if rstd is not None:
        assert isinstance(rstd, np.ndarray)
        assert rstd.shape == rref.shape and rstd.dtype == dtype
        r_err = max_ulp(rstd, rref, dtype, floor=0.0)
        assert r_err <= RSTD_TOL[dtype], f"rstd is {r_err:.2f} ulp from the reference"


def assert_grads_accurate(dy, x, ns, weight, eps, dx, dw, tol=None):
    x = np.asarray(x)
    dims = _dims(ns)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    assert dw.shape == dims and dw.dtype == x.dtype
    rdx, rdw, scales = reference_rms_norm_backward(dy, x, ns, weight, eps)
    tol = tol or GRAD_TOL[x.dtype]
    errs = {}
    for name, got, ref in [("dx", dx, rdx), ("dweight", dw, rdw)]:
        e = scaled_ulp_error(got, ref, scales[name], x.dtype)
        errs[name] = float(e.max()) if e.size else 0.0
    bad = {k: v for k, v in errs.items() if not v <= tol[k]}
    assert not bad, f"ulps from the reference: {errs} (bounds {tol})"


# ============================================================ forward: accuracy


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n", ROW_LENGTHS)
@pytest.mark.parametrize("dtype", [F32, F64])
def test_forward_matches_reference(dtype, n, weighted, rng):
    w = rng.standard_normal(n).astype(dtype) if weighted else None
    for scale, offset in [(1.0, 0.0), (1e-3, 0.0), (1e3, 0.0), (0.5, 4.0)]:
        x = (rng.standard_normal((9, n)) * scale + offset).astype(dtype)
        y, rstd = lnrs.rms_norm_forward(x, n, w)
        assert_accurate(x, n, w, None, y, rstd)
        assert same_bits(lnrs.rms_norm(x, n, w), y)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("ns", [(5,), (4, 5), (3, 4, 5), (2, 3, 4, 5)])
def test_multi_axis_normalized_shape(ns, dtype, rng):
    x = (rng.standard_normal((2, 3, 4, 5)) * 3 + 1).astype(dtype)
    w = rng.standard_normal(ns).astype(dtype)
    lead = x.shape[: 4 - len(ns)]
    for weight in (None, w):
        for eps in (None, 1e-5):
            y, rstd = lnrs.rms_norm_forward(x, ns, weight, eps)
            assert rstd.shape == lead
            assert_accurate(x, ns, weight, eps, y, rstd)
    # Normalising over the trailing axes is normalising the flattened rows.
    lead_size = math.prod(lead)
    y, rstd = lnrs.rms_norm_forward(x, ns, w)
    yf, rstdf = lnrs.rms_norm_forward(x.reshape(lead_size, -1), w.size, w.reshape(-1))
    assert same_bits(y, yf.reshape(x.shape)) and same_bits(rstd, rstdf.reshape(lead))


@pytest.mark.parametrize(
    "ns", [5, np.int64(5), np.uint8(5), (5,), [5], (np.int64(5),), np.array([5])], ids=repr
)
def test_normalized_shape_single_axis_forms(ns, rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    y = lnrs.rms_norm(x, ns)
    assert same_bits(y, lnrs.rms_norm(x, (5,)))
    assert_accurate(x, 5, None, None, y)


@pytest.mark.parametrize("ns", [(4, 5), [4, 5], (np.int64(4), 5), np.array([4, 5])], ids=repr)
def test_normalized_shape_multi_axis_forms(ns, rng):
    x = rng.standard_normal((3, 4, 5))
    y, rstd = lnrs.rms_norm_forward(x, ns)
    assert rstd.shape == (3,)
    assert_accurate(x, (4, 5), None, None, y, rstd)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_rstd_dtype_shape_and_value(dtype, rng):
    x = (rng.standard_normal((2, 3, 4, 6)) * 2).astype(dtype)
    for ns, lead in [(6, (2, 3, 4)), ((4, 6), (2, 3)), ((3, 4, 6), (2,)), (x.shape, ())]:
        result = lnrs.rms_norm_forward(x, ns)
        assert isinstance(result, tuple) and len(result) == 2
        y, rstd = result
        assert isinstance(rstd, np.ndarray)
        assert rstd.shape == lead and rstd.dtype == dtype
        assert y.shape == x.shape and y.dtype == dtype
        # rstd is 1/sqrt(mean(x²) + eps): check directly, independently of reference.py.
        rows = rows_view(x, len(_dims(ns))).astype(np.longdouble)
        direct = 1 / np.sqrt((rows * rows).mean(axis=1) + np.longdouble(EPS[dtype]))
        np.testing.assert_allclose(
            rstd.reshape(-1).astype(np.longdouble), direct, rtol=4 * EPS[dtype]
        )
        assert_accurate(x, ns, None, None, y, rstd)


def test_one_dimensional_input(rng):
    x = rng.standard_normal(50).astype(np.float32) + 3
    y, rstd = lnrs.rms_norm_forward(x, 50)
    assert rstd.shape == ()
    assert_accurate(x, 50, None, None, y, rstd)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("shape,ns", [((0, 5), 5), ((2, 0, 5), 5), ((0, 3, 4), (3, 4))])
def test_zero_rows(shape, ns, dtype):
    x = np.empty(shape, dtype)
    dims = _dims(ns)
    lead = shape[: len(shape) - len(dims)]
    y, rstd = lnrs.rms_norm_forward(x, ns)
    assert y.shape == shape and y.dtype == dtype
    assert rstd.shape == lead and rstd.dtype == dtype
    w = np.ones(dims, dtype)
    out = np.empty(shape, dtype)
    assert lnrs.rms_norm(x, ns, w, out=out) is out
    dx, dw = lnrs.rms_norm_backward(np.empty(shape, dtype), x, rstd, ns, w)
    assert dx.shape == shape and dx.dtype == dtype
    assert same_bits(dw, np.zeros(dims, dtype))


# ================================================================== eps


@pytest.mark.parametrize("dtype", [F32, F64])
def test_default_eps_is_machine_epsilon_and_matters(dtype, rng):
    # mean(x²) about eps: the default changes the result by tens of percent.
    scale = math.sqrt(EPS[dtype])
    x = (rng.standard_normal((6, 64)) * scale).astype(dtype)
    w = rng.standard_normal(64).astype(dtype)
    y, rstd = lnrs.rms_norm_forward(x, 64, w)
    y_eps, rstd_eps = lnrs.rms_norm_forward(x, 64, w, EPS[dtype])
    assert same_bits(y, y_eps) and same_bits(rstd, rstd_eps)
    assert same_bits(lnrs.rms_norm(x, 64, w), y)
    assert same_bits(lnrs.rms_norm(x, 64, w, None), y)
    assert_accurate(x, 64, w, EPS[dtype], y, rstd)
    # It matters: eps=0, the other dtype's eps and LayerNorm's 1e-5 all differ.
    _, rstd0 = lnrs.rms_norm_forward(x, 64, w, 0.0)
    other = EPS[F64 if dtype == F32 else F32]
    _, rstd_other = lnrs.rms_norm_forward(x, 64, w, other)
    _, rstd_ln = lnrs.rms_norm_forward(x, 64, w, 1e-5)
    for r in (rstd0, rstd_other, rstd_ln):
        assert np.all(np.abs(r / rstd - 1) > 0.1), (r, rstd)


def test_default_eps_follows_the_input_dtype_of_array_likes(rng):
    x = rng.standard_normal((3, 8)) * 1e-7
    # Lists of Python floats are float64: float64's eps.
    y = lnrs.rms_norm(x.tolist(), 8)
    assert y.dtype == F64 and same_bits(y, lnrs.rms_norm(x, 8, eps=EPS[F64]))
    # Tuples of float32 scalars are float32: float32's eps.
    x32 = (rng.standard_normal((3, 8)) * 3e-4).astype(np.float32)
    as_tuples = tuple(tuple(np.float32(v) for v in r) for r in x32)
    y32 = lnrs.rms_norm(as_tuples, 8)
    assert y32.dtype == F32 and same_bits(y32, lnrs.rms_norm(x32, 8, eps=EPS[F32]))
    assert not same_bits(y32, lnrs.rms_norm(x32, 8, eps=EPS[F64]))


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
def test_non_native_byte_order_input_with_default_eps(dtype, rng):
    # Big-endian float32 is still float32 data (layer_norm accepts it); the default
    # eps is that of the float type.
    x = (rng.standard_normal((4, 33)) * 1e-3).astype(dtype)
    native = x.astype(np.dtype(dtype).newbyteorder("="))
    expected = lnrs.rms_norm(native, 33)
    assert same_bits(lnrs.rms_norm(x, 33).astype(native.dtype), expected)
    y, rstd = lnrs.rms_norm_forward(x, 33)
    assert same_bits(y.astype(native.dtype), expected)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("eps", [0.0, 1e-12, 1e-5, 0.5, 100.0])
def test_explicit_eps(dtype, eps, rng):
    x = (rng.standard_normal((5, 100)) * 0.3 + 0.2).astype(dtype)
    y, rstd = lnrs.rms_norm_forward(x, 100, eps=eps)
    assert_accurate(x, 100, None, eps, y, rstd)


@pytest.mark.parametrize(
    "eps", [1e-5, np.float32(1e-3), np.float64(0.25), 1, np.int64(2)], ids=repr
)
def test_eps_forms(eps, rng):
    x = (rng.standard_normal((3, 10)) * 0.5).astype(np.float32)
    y, rstd = lnrs.rms_norm_forward(x, 10, eps=eps)
    assert_accurate(x, 10, None, float(eps), y, rstd)


# ======================================================= huge and tiny magnitudes


@pytest.mark.parametrize(
    "scale,eps",
    [(1e20, None), (1e30, None), (1e37, 0.0), (1e-20, 0.0), (1e-30, 0.0), (1e-20, None)],
)
def test_float32_huge_and_tiny(scale, eps, rng):
    # Squares of these overflow or underflow float32; the mean square must not.
    x = (rng.standard_normal((6, 100)) * scale).astype(np.float32)
    y, rstd = lnrs.rms_norm_forward(x, 100, eps=eps)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(rstd)) and np.all(rstd > 0)
    assert_accurate(x, 100, None, eps, y, rstd)


@pytest.mark.parametrize(
    "scale,eps",
    [
        (1e160, None),
        (1e200, None),
        (1e300, 0.0),
        (1e200, 1e-5),
        (1e-160, 0.0),
        (1e-200, 0.0),
        (1e-300, 0.0),
        (1e-200, None),
    ],
)
def test_float64_huge_and_tiny(scale, eps, rng):
    # Squares overflow (> ~1e154) or underflow (< ~1e-154) float64 here.
    x = rng.standard_normal((6, 100)) * scale
    y, rstd = lnrs.rms_norm_forward(x, 100, eps=eps)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(rstd)) and np.all(rstd > 0)
    assert_accurate(x, 100, None, eps, y, rstd)


@pytest.mark.parametrize("dtype,v", [(F32, 1e20), (F32, 1e-20), (F64, 1e200), (F64, 1e-200)])
def test_smallest_pair(dtype, v):
    x = np.array([v, -v], dtype)
    y, rstd = lnrs.rms_norm_forward(x, 2, eps=0.0)
    assert same_bits(y, np.array([1, -1], dtype))
    np.testing.assert_allclose(rstd, 1 / dtype.type(v), rtol=float(np.finfo(dtype).eps))
    if v > 1:  # default eps is negligible next to v²
        assert same_bits(lnrs.rms_norm(x, 2), y)


# ============================================================ special rows


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("n", [1, 3, 33, 4097])
@pytest.mark.parametrize("eps", [None, 1e-5])
def test_zero_row_gives_zeros(dtype, n, eps, rng):
    x = rng.standard_normal((5, n)).astype(dtype)
    x[2] = 0
    w = rng.standard_normal(n).astype(dtype)
    y, rstd = lnrs.rms_norm_forward(x, n, w, eps)
    assert np.all(y[2] == 0)
    e = EPS[dtype] if eps is None else eps
    assert max_ulp(rstd[2:3], np.array([1 / np.sqrt(np.longdouble(e))]), dtype, 0.0) <= 1
    assert_accurate(x, n, w, eps, y, rstd)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("value", [1.0, -3.5, 1e-3, 1e15])
def test_constant_and_single_element_rows(dtype, value, rng):
    for n in (1, 2, 33, 768):
        x = np.full((4, n), value, dtype)
        w = rng.standard_normal(n).astype(dtype)
        y, rstd = lnrs.rms_norm_forward(x, n, w)
        assert_accurate(x, n, w, None, y, rstd)
    # Single-element rows: y = x/sqrt(x² + eps)·w, about sign(x)·w.
    x = (rng.standard_normal((2000, 1)) * value).astype(dtype)
    y, rstd = lnrs.rms_norm_forward(x, 1, np.array([-2.5], dtype))
    assert_accurate(x, 1, np.array([-2.5], dtype), None, y, rstd)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("cols", [1, 40, 4097, 70_000])
def test_nan_stays_in_its_row(cols, dtype, rng):
    x = (rng.standard_normal((5, cols)) + 1).astype(dtype)
    x[1, cols // 2] = np.nan
    w = rng.standard_normal(cols).astype(dtype)
    y, rstd = lnrs.rms_norm_forward(x, cols, w)
    assert np.isnan(y[1]).all() and np.isnan(rstd[1])
    good = [0, 2, 3, 4]
    yc, rc = lnrs.rms_norm_forward(x[good], cols, w)
    assert same_bits(y[good], yc) and same_bits(rstd[good], rc)
    assert np.isfinite(y[good]).all()


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("cols", [5, 40, 70_000])
def test_inf_row_as_torch(cols, dtype, rng):
    """torch: `x * rsqrt(mean(x²) + eps)` with mean(x²) = inf is `x * 0`: NaN at
    the infinity, zeros elsewhere; and rstd = 0. The same for float32 and float64;
    other rows untouched."""
    x = (rng.standard_normal((3, cols)) + 1).astype(dtype)
    x[1, 2] = np.inf
    y, rstd = lnrs.rms_norm_forward(x, cols)
    assert same_bits(y[[0, 2]], lnrs.rms_norm(x[[0, 2]], cols))
    assert np.isnan(y[1, 2])
    others = np.delete(y[1], 2)
    assert np.all(others == 0), f"{dtype}: row with inf gives {y[1, :4]}, rstd {rstd[1]}"
    assert rstd[1] == 0


# ================================================================== layouts


def _views(base):
    """Non-contiguous views of a 2-D array, with the normalized_shape to use."""
    yield "step-cols", base[:, ::2], base[:, ::2].shape[-1]
    yield "reversed-rows", base[::-1], base.shape[-1]
    yield "reversed-cols", base[:, ::-1], base.shape[-1]
    yield "transpose", base.T, base.shape[0]
    yield "fortran", np.asfortranarray(base), base.shape[-1]
    yield "window", base[1:-1:2, 3:-2:3], base[1:-1:2, 3:-2:3].shape[-1]
    cube = base[: (base.shape[0] // 4) * 4].reshape(4, -1, base.shape[1])
    yield "cube-rev", cube[:, ::-1, ::-2], cube[:, ::-1, ::-2].shape[-2:]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("shape", [(8, 70), (64, 1030)])
def test_non_contiguous_inputs_match_contiguous_copy(shape, dtype, rng):
    base = (rng.standard_normal(shape) + 0.5).astype(dtype)
    for name, x, ns in _views(base):
        assert not x.flags.c_contiguous, name
        dims = _dims(ns)
        w = rng.standard_normal(dims).astype(dtype)
        xc = np.ascontiguousarray(x)
        before = xc.copy()
        y, rstd = lnrs.rms_norm_forward(x, ns, w)
        yc, rstdc = lnrs.rms_norm_forward(xc, ns, w)
        assert same_bits(y, yc) and same_bits(rstd, rstdc), name
        dy = rng.standard_normal(x.shape).astype(dtype)
        dy_view = dy[..., ::-1].copy()[..., ::-1]  # dy's values, negative strides
        g = lnrs.rms_norm_backward(dy_view, x, rstd, ns, w)
        gc = lnrs.rms_norm_backward(np.ascontiguousarray(dy), xc, rstdc, ns, w)
        assert same_bits(g[0], gc[0]) and same_bits(g[1], gc[1]), name
        np.testing.assert_array_equal(x, before)  # input untouched
    flipped = base[::-1, ::-1]
    assert_accurate(flipped, shape[-1], None, None, lnrs.rms_norm(flipped, shape[-1]))


def test_non_contiguous_weight_and_read_only_input(rng):
    x = rng.standard_normal((6, 40)).astype(np.float32)
    x.flags.writeable = False
    w = rng.standard_normal((2, 80)).astype(np.float32)[1, ::-2]
    y = lnrs.rms_norm(x, 40, w)
    assert same_bits(y, lnrs.rms_norm(x, 40, w.copy()))
    assert_accurate(x, 40, w, None, y)


# ------------------------------------------------------------------- weight forms


@pytest.mark.parametrize("xdtype", [F32, F64])
@pytest.mark.parametrize("kind", ["list", "float64", "float32", "int64", "bool", "big-endian"])
def test_weight_converted_to_x_dtype(kind, xdtype, rng):
    n = 37
    x = (rng.standard_normal((5, n)) + 1).astype(xdtype)
    w0 = rng.standard_normal(n) * 3
    w = {
        "list": lambda a: a.tolist(),
        "float64": lambda a: a.astype(np.float64),
        "float32": lambda a: a.astype(np.float32),
        "int64": lambda a: np.round(a * 10).astype(np.int64),
        "bool": lambda a: a > 0,
        "big-endian": lambda a: a.astype(">f8"),
    }[kind](w0)
    w_x = np.asarray(w).astype(xdtype)
    y, rstd = lnrs.rms_norm_forward(x, n, w)
    ye, rstde = lnrs.rms_norm_forward(x, n, w_x)
    assert same_bits(y, ye) and same_bits(rstd, rstde)
    assert_accurate(x, n, w_x, None, y, rstd)
    dy = rng.standard_normal(x.shape).astype(xdtype)
    g, ge = (lnrs.rms_norm_backward(dy, x, rstd, n, v) for v in (w, w_x))
    assert same_bits(g[0], ge[0]) and same_bits(g[1], ge[1])


def test_nested_list_input(rng):
    rows = (rng.standard_normal((4, 7)) + 3).tolist()
    y, rstd = lnrs.rms_norm_forward(rows, 7)
    assert y.dtype == F64 and rstd.dtype == F64
    assert same_bits(y, lnrs.rms_norm(np.array(rows), 7))
    assert_accurate(np.array(rows), 7, None, None, y, rstd)


# ===================================================================== out=


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("shape,ns", [((6, 31), 31), ((300, 257), 257), ((4, 5, 33), (5, 33))])
def test_out_and_in_place(shape, ns, dtype, rng):
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    w = rng.standard_normal(_dims(ns)).astype(dtype)
    expected, erstd = lnrs.rms_norm_forward(x, ns, w)
    out = np.full(shape, np.nan, dtype)
    assert lnrs.rms_norm(x, ns, w, out=out) is out
    assert same_bits(out, expected)
    out2 = np.full(shape, np.nan, dtype)
    y2, rstd2 = lnrs.rms_norm_forward(x, ns, w, out=out2)
    assert y2 is out2 and same_bits(out2, expected) and same_bits(rstd2, erstd)
    # out=x: in place, the same bits.
    original = x.copy()
    y, rstd = lnrs.rms_norm_forward(x, ns, w, out=x)
    assert y is x and same_bits(x, expected) and same_bits(rstd, erstd)
    inplace = original.copy()
    assert lnrs.rms_norm(inplace, ns, w, eps=None, out=inplace) is inplace
    assert same_bits(inplace, expected)
    assert_accurate(original, ns, w, None, expected, erstd)


def test_out_in_place_large_parallel(rng):
    for shape in [(1024, 768), (2, 70_000)]:
        x = rng.standard_normal(shape).astype(np.float32)
        expected = lnrs.rms_norm(x, shape[-1])
        lnrs.rms_norm(x, shape[-1], out=x)
        assert same_bits(x, expected)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("shift", [1, -1, 7, -512])
def test_out_overlapping_x_shifted(shift, dtype, rng):
    rows, cols = 64, 1024
    buf = (rng.standard_normal(rows * cols + abs(shift)) * 3 + 1).astype(dtype)
    if shift > 0:
        x, out = buf[shift:].reshape(rows, cols), buf[:-shift].reshape(rows, cols)
    else:
        x, out = buf[:shift].reshape(rows, cols), buf[-shift:].reshape(rows, cols)
    w = rng.standard_normal(cols).astype(dtype)
    expected = lnrs.rms_norm(x.copy(), cols, w)
    assert lnrs.rms_norm(x, cols, w, out=out) is out
    assert same_bits(out, expected)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_out_aliasing_weight(dtype, rng):
    n = 40
    x = (rng.standard_normal(n) + 1).astype(dtype)
    w = rng.standard_normal(n).astype(dtype)
    expected = lnrs.rms_norm(x, n, w.copy())
    assert lnrs.rms_norm(x, n, w, out=w) is w
    assert same_bits(w, expected)


# ======================================================== batch invariance


@pytest.mark.parametrize("dtype", [F32, F64])
def test_row_alone_equals_row_in_batch(dtype, rng):
    rows, cols = 1500, 33
    x = (rng.standard_normal((rows, cols)) * 5).astype(dtype)
    w = rng.standard_normal(cols).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, rstd = lnrs.rms_norm_forward(x, cols, w)
    dx, dw = lnrs.rms_norm_backward(dy, x, rstd, cols, w)
    for pos in [0, 1, 17, rows // 2, rows - 1]:
        yr, rr = lnrs.rms_norm_forward(x[pos], cols, w)
        assert same_bits(yr, y[pos]) and same_bits(rr, rstd[pos]), pos
        dxr, dwr = lnrs.rms_norm_backward(dy[pos], x[pos], rstd[pos], cols, w)
        assert same_bits(dxr, dx[pos]), pos
        one = lnrs.rms_norm_backward(
            dy[pos : pos + 1], x[pos : pos + 1], rstd[pos : pos + 1], cols, w
        )
        assert same_bits(one[0][0], dxr) and same_bits(one[1], dwr), pos
        # One row: dweight is that row's dy·x·rstd.
        wide = np.longdouble
        exact = dy[pos].astype(wide) * x[pos].astype(wide) * wide(rstd[pos])
        assert max_ulp(dwr, exact, dtype, floor=0.0) <= FORMULA_TOL[dtype], pos
    for k in (2, rows // 3):
        assert same_bits(lnrs.rms_norm(x[-k:], cols, w), y[-k:]), k
        part = lnrs.rms_norm_backward(dy[-k:], x[-k:], rstd[-k:], cols, w)
        assert same_bits(part[0], dx[-k:]), k


# ===================================================================== backward

FD_SHAPES = [((2, 3, 4), (3, 4)), ((5, 7), 7), ((3, 2, 2, 5), (2, 2, 5)), ((4, 1), 1), ((6,), 6)]


def _loss(x, ns, w, eps, dy):
    """sum(rms_norm(x) * dy), summed exactly so that only y's rounding remains."""
    return math.fsum((lnrs.rms_norm(x, ns, w, eps) * dy).ravel())


@pytest.mark.parametrize("eps", [None, 0.5])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape,ns", FD_SHAPES)
def test_finite_differences_float64(shape, ns, weighted, eps, rng):
    dims = _dims(ns)
    x = rng.standard_normal(shape) * 1.5 + 0.5
    dy = rng.standard_normal(shape)
    w = rng.standard_normal(dims) if weighted else None
    _, rstd = lnrs.rms_norm_forward(x, ns, w, eps)
    dx, dw = lnrs.rms_norm_backward(dy, x, rstd, ns, w)
    assert dx.shape == x.shape and dw.shape == dims
    assert_close_fd(dx, central_differences(lambda v: _loss(v, ns, w, eps, dy), x), "dx")
    # Without a weight, dweight is what a weight of ones gets.
    w0 = np.ones(dims) if w is None else w
    assert_close_fd(dw, central_differences(lambda v: _loss(x, ns, v, eps, dy), w0), "dweight")
    if dims != (1,) or eps is not None:  # a 1-element row with tiny eps has dx ≈ 0
        assert np.abs(dx).max() > 1e-3
    assert np.abs(dw).max() > 1e-2


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_backward_is_the_formula_with_the_given_rstd(dtype, weighted, rng):
    """dx = rstd·(g − x·rstd²·mean(g·x)), g = dy·w; dweight = Σ_rows dy·x·rstd,
    evaluated in the wide type with the rstd that forward returned."""
    wide = np.dtype(np.longdouble)
    for shape, ns in [((40, 33), 33), ((4, 5, 6), (5, 6)), ((3, 5000), 5000)]:
        dims = _dims(ns)
        x = (rng.standard_normal(shape) * 2 + 0.3).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        w = rng.standard_normal(dims).astype(dtype) if weighted else None
        _, rstd = lnrs.rms_norm_forward(x, ns, w)
        dx, dw = lnrs.rms_norm_backward(dy, x, rstd, ns, w)
        xr = rows_view(x, len(dims)).astype(wide)
        dyr = rows_view(dy, len(dims)).astype(wide)
        r = rstd.reshape(-1, 1).astype(wide)
        g = dyr if w is None else dyr * w.reshape(-1).astype(wide)
        mgx = (g * xr).mean(axis=1, keepdims=True)
        fdx = r * (g - xr * r * r * mgx)
        fdw = (dyr * xr * r).sum(axis=0)
        sdx = r * (np.abs(g) + np.abs(xr) * r * r * np.abs(g * xr).mean(axis=1, keepdims=True))
        sdw = np.abs(dyr * xr * r).sum(axis=0)
        e_dx = scaled_ulp_error(dx.reshape(xr.shape), fdx, sdx, dtype).max()
        e_dw = scaled_ulp_error(dw.reshape(-1), fdw, sdw, dtype).max()
        assert e_dx <= FORMULA_TOL[dtype], (shape, e_dx)
        assert e_dw <= FORMULA_TOL[dtype], (shape, e_dw)


ACC_SHAPES = [
    ((64, 7), 7),
    ((40, 33), 33),
    ((8, 1000), 1000),
    ((300, 64), 64),
    ((4, 5, 6), (5, 6)),
    ((50, 1), 1),  # dx = g·rstd·eps/(x² + eps): a cancellation
    ((20, 3), 3),
    ((2, 70_000), 70_000),  # long rows, summed in blocks
]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_backward_matches_reference(dtype, weighted, rng):
    for shape, ns in ACC_SHAPES:
        for scale, eps in [(1.0, None), (1e-3, 1e-5), (1e3, None), (1e-4, None)]:
            x = (rng.standard_normal(shape) * scale).astype(dtype)
            w = rng.standard_normal(_dims(ns)).astype(dtype) if weighted else None
            dy = rng.standard_normal(shape).astype(dtype)
            _, rstd = lnrs.rms_norm_forward(x, ns, w, eps)
            dx, dw = lnrs.rms_norm_backward(dy, x, rstd, ns, w)
            assert_grads_accurate(dy, x, ns, w, eps, dx, dw)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_backward_scale_invariance_with_zero_eps(dtype, rng):
    """With eps = 0, y(λx) = y(x), so Σ_j dx_j·x_j = 0 in every row."""
    x = (rng.standard_normal((30, 50)) * 3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    w = rng.standard_normal(50).astype(dtype)
    _, rstd = lnrs.rms_norm_forward(x, 50, w, 0.0)
    dx, _ = lnrs.rms_norm_backward(dy, x, rstd, 50, w)
    prod = dx.astype(np.longdouble) * x.astype(np.longdouble)
    total = np.abs(prod.sum(axis=1))
    assert np.all(total <= 16 * EPS[dtype] * np.abs(prod).sum(axis=1)), total


def test_backward_one_dimensional_input(rng):
    x = rng.standard_normal(9) * 3 - 1
    dy = rng.standard_normal(9)
    w = rng.standard_normal(9)
    _, rstd = lnrs.rms_norm_forward(x, 9, w)
    assert rstd.shape == ()
    dx, dw = lnrs.rms_norm_backward(dy, x, rstd, 9, w)
    assert_close_fd(dx, central_differences(lambda v: _loss(v, 9, w, None, dy), x), "dx")
    assert_grads_accurate(dy, x, 9, w, None, dx, dw)


def test_backward_huge_and_tiny_rows(rng):
    for dtype, scale, eps in [(F32, 1e20, None), (F32, 1e-20, 0.0), (F64, 1e-200, 0.0)]:
        x = (rng.standard_normal((4, 64)) * scale).astype(dtype)
        dy = rng.standard_normal(x.shape).astype(dtype)
        _, rstd = lnrs.rms_norm_forward(x, 64, None, eps)
        dx, dw = lnrs.rms_norm_backward(dy, x, rstd, 64)
        assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dw))
        assert_grads_accurate(dy, x, 64, None, eps, dx, dw)


# ============================================ determinism across threads and SIMD

WORKER = (
    workers.PRELUDE
    + r"""
cases = [
    ("f32-1024x768", np.float32, (1024, 768)),
    ("f64-300x1000", np.float64, (300, 1000)),
    ("f32-2x70000", np.float32, (2, 70_000)),
    ("f64-2x70000", np.float64, (2, 70_000)),
    ("f32-1x300000", np.float32, (1, 300_000)),
    ("f32-4100x1024", np.float32, (4100, 1024)),
]
result = {"threads": lnrs.get_num_threads(), "simd": lnrs.simd_level(), "cases": {}}
for seed, (name, dtype, shape) in enumerate(cases, start=3000):
    rng = np.random.default_rng(seed)
    n = shape[-1]
    x = (rng.standard_normal(shape) * 3 + 0.5).astype(dtype)
    w = rng.standard_normal(n).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y, rstd = lnrs.rms_norm_forward(x, n, w)
    plain = lnrs.rms_norm(x, n, eps=1e-5)
    inplace = x.copy()
    lnrs.rms_norm(inplace, n, w, out=inplace)
    dx, dw = lnrs.rms_norm_backward(dy, x, rstd, n, w)
    dx0, dw0 = lnrs.rms_norm_backward(dy, x, rstd, n)
    result["cases"][name] = {
        "y": digest(y), "rstd": digest(rstd), "plain": digest(plain),
        "inplace": digest(inplace), "dx": digest(dx, dx0), "dweight": digest(dw, dw0),
    }
    if name == "f32-1024x768":
        np.savez(sys.argv[1], y=y, rstd=rstd, dx=dx, dw=dw)
json.dump(result, sys.stdout)
"""
)


def _run_worker(tmp_path, **settings):
    tag = "-".join(f"{k}={v}" for k, v in settings.items()) or "default"
    npz = tmp_path / f"rms-{tag}.npz"
    proc = workers.python("-c", WORKER, str(npz), timeout=120, **settings)
    assert proc.returncode == 0, proc.stderr
    with np.load(npz) as f:
        arrays = {k: f[k] for k in ("y", "rstd", "dx", "dw")}
    return json.loads(proc.stdout), arrays


def _assert_same_runs(runs, what):
    (base_key, (base, base_arrays)), *rest = runs.items()
    for name, digests in base["cases"].items():
        assert digests["y"] == digests["inplace"], f"{name}: in place differs"
    for key, (report, arrays) in rest:
        for name, digests in base["cases"].items():
            for part, d in digests.items():
                assert report["cases"][name][part] == d, f"{name}: {part} {key} != {base_key}"
        for k in base_arrays:
            assert same_bits(arrays[k], base_arrays[k]), (what, key, k)
    # And the saved results are right.
    rng = np.random.default_rng(3000)
    x = (rng.standard_normal((1024, 768)) * 3 + 0.5).astype(np.float32)
    w = rng.standard_normal(768).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    assert_accurate(x, 768, w, None, base_arrays["y"], base_arrays["rstd"])
    assert_grads_accurate(dy, x, 768, w, None, base_arrays["dx"], base_arrays["dw"])


def test_bitwise_identical_across_thread_counts(tmp_path):
    runs = {n: _run_worker(tmp_path, LNRS_NUM_THREADS=n) for n in (1, 2, 3)}
    for n, (report, _) in runs.items():
        assert report["threads"] == n, "LNRS_NUM_THREADS was not applied"
    _assert_same_runs(runs, "threads")


@pytest.mark.skipif(len(SUPPORTED) < 2, reason="this CPU supports one SIMD level")
def test_bitwise_identical_across_simd_levels(tmp_path):
    runs = {
        level: _run_worker(tmp_path, LNRS_SIMD=level, LNRS_NUM_THREADS=1 + i % 3)
        for i, level in enumerate(SUPPORTED)
    }
    for level, (report, _) in runs.items():
        assert report["simd"] == level, "LNRS_SIMD was not applied"
    _assert_same_runs(runs, "simd")


def test_bitwise_identical_after_set_num_threads(restore_threads, rng):
    x = rng.standard_normal((700, 513)).astype(np.float32)
    x64 = rng.standard_normal((3, 70_001)) * 5
    w = rng.standard_normal(513).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dy64 = rng.standard_normal(x64.shape)
    outputs = []
    for n in (1, 2, 3, 1):
        lnrs.set_num_threads(n)
        y, r = lnrs.rms_norm_forward(x, 513, w)
        y64, r64 = lnrs.rms_norm_forward(x64, 70_001)
        outputs.append(
            (y, r, y64, r64)
            + lnrs.rms_norm_backward(dy, x, r, 513, w)
            + lnrs.rms_norm_backward(dy64, x64, r64, 70_001)
        )
    for out in outputs[1:]:
        for a, b in zip(out, outputs[0]):
            assert same_bits(a, b)


# ===================================================================== RMSNorm


def _trained(rng, ns, dtype=F32, **kw):
    layer = lnrs.RMSNorm(ns, dtype=dtype, **kw)
    if layer.weight is not None:
        layer.weight[...] = rng.standard_normal(layer.weight.shape)
    return layer


def _layer_eps(layer, x):
    """The eps an RMSNorm layer normalised `x` with (its backward recomputes rstd)."""
    return layer.eps if layer.eps is not None else float(np.finfo(np.asarray(x).dtype).eps)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_module_initial_state(dtype):
    layer = lnrs.RMSNorm((3, 4), dtype=dtype)
    assert layer.normalized_shape == (3, 4)
    assert same_bits(layer.weight, np.ones((3, 4), dtype))
    assert layer.eps is None and layer.elementwise_affine is True
    assert layer.weight_grad is None
    assert getattr(layer, "bias", None) is None
    assert lnrs.RMSNorm(5).normalized_shape == (5,)
    assert lnrs.RMSNorm(5).weight.dtype == F32  # default dtype
    plain = lnrs.RMSNorm(5, eps=1e-6, elementwise_affine=False)
    assert plain.weight is None and plain.eps == 1e-6 and plain.elementwise_affine is False


@pytest.mark.parametrize("eps", [None, 1e-3])
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("shape,ns", [((6, 9), 9), ((3, 4, 2, 5), (2, 5))])
def test_module_matches_functional(shape, ns, dtype, eps, rng):
    layer = _trained(rng, ns, dtype, eps=eps)
    x = (rng.standard_normal(shape) * 2).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y = layer.forward(x)
    dx = layer.backward(dy)
    yf, rstd = lnrs.rms_norm_forward(x, ns, layer.weight, eps)
    fdx, fdw = lnrs.rms_norm_backward(dy, x, rstd, ns, layer.weight, eps=_layer_eps(layer, x))
    assert same_bits(y, yf) and same_bits(dx, fdx) and same_bits(layer.weight_grad, fdw)
    assert same_bits(layer(x), yf)  # __call__
    out = np.empty_like(x)
    assert layer(x, out=out) is out and same_bits(out, yf)
    assert_grads_accurate(dy, x, ns, layer.weight, eps, dx, layer.weight_grad)


def test_module_default_eps_follows_each_input(rng):
    layer = _trained(rng, 16)  # float32 weight
    for dtype in (F32, F64):
        x = (rng.standard_normal((4, 16)) * math.sqrt(EPS[dtype])).astype(dtype)
        y = layer(x)
        w = layer.weight.astype(dtype)
        assert y.dtype == dtype
        assert same_bits(y, lnrs.rms_norm(x, 16, w, EPS[dtype]))


def test_module_grads_accumulate_and_reset(rng):
    ns = (3, 7)
    layer = _trained(rng, ns)
    xs = [(rng.standard_normal((5, 3, 7)) + k).astype(np.float32) for k in range(3)]
    dys = [rng.standard_normal((5, 3, 7)).astype(np.float32) for _ in range(3)]
    functional = []
    for x, dy in zip(xs, dys):
        _, r = lnrs.rms_norm_forward(x, ns, layer.weight)
        functional.append(
            lnrs.rms_norm_backward(dy, x, r, ns, layer.weight, eps=_layer_eps(layer, x))
        )
    assert layer.weight_grad is None
    layer(xs[0])
    assert same_bits(layer.backward(dys[0]), functional[0][0])
    first = layer.weight_grad.copy()
    assert same_bits(first, functional[0][1])
    layer(xs[1])
    layer.backward(dys[1])
    assert same_bits(layer.weight_grad, functional[0][1] + functional[1][1])
    assert layer.weight_grad.dtype == F32 and layer.weight_grad.shape == ns
    assert not np.shares_memory(layer.weight_grad, layer.weight)
    layer.zero_grad()
    assert layer.weight_grad is None
    layer(xs[2])
    layer.backward(dys[2])
    assert same_bits(layer.weight_grad, functional[2][1])


def test_module_backward_needs_a_forward(rng):
    layer = lnrs.RMSNorm(6)
    dy = np.ones((2, 6), np.float32)
    with pytest.raises(ValueError, match="forward"):
        layer.backward(dy)
    assert layer.weight_grad is None
    layer(rng.standard_normal((2, 6)).astype(np.float32))
    layer.backward(dy)
    w = layer.weight_grad.copy()
    with pytest.raises(ValueError, match="forward"):
        layer.backward(dy)  # one backward per forward
    assert same_bits(layer.weight_grad, w)


def test_module_bad_dy_adds_nothing(rng):
    layer = _trained(rng, 6)
    layer(rng.standard_normal((2, 6)).astype(np.float32))
    with pytest.raises(ValueError, match="dy"):
        layer.backward(np.ones((2, 5), np.float32))
    assert layer.weight_grad is None


def test_module_without_affine(rng):
    layer = lnrs.RMSNorm((2, 5), elementwise_affine=False)
    x = rng.standard_normal((4, 2, 5)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y = layer(x)
    dx = layer.backward(dy)
    yf, r = lnrs.rms_norm_forward(x, (2, 5))
    assert same_bits(y, yf)
    assert same_bits(dx, lnrs.rms_norm_backward(dy, x, r, (2, 5), eps=_layer_eps(layer, x))[0])
    assert layer.weight_grad is None


def test_float32_module_on_float64_input(rng):
    layer = _trained(rng, 10)
    x = rng.standard_normal((3, 10)) * 2
    dy = rng.standard_normal(x.shape)
    y = layer(x)
    dx = layer.backward(dy)
    w64 = layer.weight.astype(np.float64)
    yf, r = lnrs.rms_norm_forward(x, 10, w64)
    fdx, fdw = lnrs.rms_norm_backward(dy, x, r, 10, w64, eps=_layer_eps(layer, x))
    assert y.dtype == F64 and same_bits(y, yf) and same_bits(dx, fdx)
    assert layer.weight_grad.dtype == F32
    assert same_bits(layer.weight_grad, fdw.astype(np.float32))


def test_module_out_must_not_overlap_x(rng):
    layer = lnrs.RMSNorm(8)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="out"):
        layer(x, out=x)


def test_module_repr():
    r = repr(lnrs.RMSNorm((2, 3), eps=1e-6, elementwise_affine=False))
    assert r.startswith("RMSNorm(") and "(2, 3)" in r and "1e-06" in r
    assert "elementwise_affine=False" in r
    assert "LayerNorm" not in repr(lnrs.RMSNorm(4))


# =============================================================== bad input

X = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
_, RSTD = lnrs.rms_norm_forward(X, 4)
DY = np.ones_like(X)


def _readonly(shape, dtype):
    a = np.empty(shape, dtype)
    a.flags.writeable = False
    return a


def _rms(fn=lnrs.rms_norm, **kw):
    args = dict(x=X, normalized_shape=(4,))
    args.update(kw)
    x, ns = args.pop("x"), args.pop("normalized_shape")
    return lambda: fn(x, ns, **args)


def _rmsf(**kw):
    return _rms(lnrs.rms_norm_forward, **kw)


def _bwd(**kw):
    args = dict(dy=DY, x=X, rstd=RSTD, normalized_shape=4, weight=None)
    args.update(kw)
    return lambda: lnrs.rms_norm_backward(**args)


# (id, call, exception type, regex the message must match)
CASES = [
    ("ns-empty", _rms(normalized_shape=()), ValueError, "normalized_shape"),
    ("ns-not-trailing", _rms(normalized_shape=(3,)), ValueError, "normalized_shape"),
    ("ns-too-long", _rms(normalized_shape=(1, 2, 3, 4)), ValueError, "normalized_shape"),
    ("ns-negative", _rms(normalized_shape=-4), ValueError, "normalized_shape"),
    ("ns-float", _rms(normalized_shape=4.0), TypeError, "normalized_shape"),
    ("ns-string", _rms(normalized_shape="4"), TypeError, "normalized_shape"),
    ("ns-none", _rms(normalized_shape=None), TypeError, "normalized_shape"),
    ("ns-bool", _rms(normalized_shape=True), TypeError, "normalized_shape"),
    ("ns-forward", _rmsf(normalized_shape=(2,)), ValueError, "normalized_shape"),
    ("x-int", _rms(x=np.arange(8).reshape(2, 4)), TypeError, r"\bx\b"),
    ("x-int-list", _rms(x=[[1, 2, 3, 4]]), TypeError, r"\bx\b"),
    ("x-bool", _rms(x=np.ones((2, 4), bool)), TypeError, r"\bx\b"),
    ("x-complex", _rms(x=np.ones((2, 4), np.complex64)), TypeError, r"\bx\b"),
    ("x-int16", _rms(x=np.ones((2, 4), np.int16)), TypeError, r"\bx\b"),
    ("x-none", _rms(x=None), TypeError, r"\bx\b"),
    ("x-string", _rms(x="abcd", normalized_shape=4), TypeError, r"\bx\b"),
    ("x-ragged", _rms(x=[[1.0, 2.0], [3.0]], normalized_shape=2), TypeError, r"\bx\b"),
    ("x-forward-int", _rmsf(x=np.arange(8).reshape(2, 4)), TypeError, r"\bx\b"),
    ("weight-short", _rms(weight=np.ones(3, np.float32)), ValueError, "weight"),
    ("weight-2d", _rms(weight=np.ones((1, 4), np.float32)), ValueError, "weight"),
    ("weight-scalar", _rms(weight=1.0), ValueError, "weight"),
    ("weight-multi", _rms(normalized_shape=(3, 4), weight=np.ones(12)), ValueError, "weight"),
    ("weight-complex", _rms(weight=np.ones(4, np.complex128)), TypeError, "weight"),
    ("weight-str", _rms(weight=["a", "b", "c", "d"]), TypeError, "weight"),
    ("weight-forward", _rmsf(weight=np.ones(5)), ValueError, "weight"),
    ("out-shape", _rms(out=np.empty((2, 3, 5), np.float32)), ValueError, "out"),
    ("out-dtype", _rms(out=np.empty((2, 3, 4), np.float64)), ValueError, "out"),
    ("out-strided", _rms(out=np.empty((2, 3, 8), np.float32)[..., ::2]), ValueError, "out"),
    ("out-readonly", _rms(out=_readonly((2, 3, 4), np.float32)), ValueError, "out"),
    ("out-list", _rms(out=[[0.0] * 4] * 6), TypeError, "out"),
    ("out-forward", _rmsf(out=np.empty((2, 3, 4), np.float64)), ValueError, "out"),
    ("eps-nan", _rms(eps=float("nan")), ValueError, "eps"),
    ("eps-negative", _rms(eps=-1e-5), ValueError, "eps"),
    ("eps-inf", _rms(eps=np.inf), ValueError, "eps"),
    ("eps-string", _rms(eps="1e-5"), TypeError, "eps"),
    ("eps-bool", _rms(eps=True), TypeError, "eps"),
    ("eps-list", _rms(eps=[1e-5]), TypeError, "eps"),
    ("eps-forward-negative", _rmsf(eps=-1.0), ValueError, "eps"),
    ("eps-forward-nan", _rmsf(eps=np.float32("nan")), ValueError, "eps"),
    ("bwd-dy-shape", _bwd(dy=np.ones((2, 3, 5), np.float32)), ValueError, "dy"),
    ("bwd-dy-dtype", _bwd(dy=np.ones((2, 3, 4))), ValueError, "dy"),
    ("bwd-dy-int", _bwd(dy=np.ones((2, 3, 4), int)), TypeError, "dy"),
    ("bwd-dy-none", _bwd(dy=None), TypeError, "dy"),
    ("bwd-rstd-shape", _bwd(rstd=RSTD[:1]), ValueError, "rstd"),
    ("bwd-rstd-flat", _bwd(rstd=RSTD.reshape(-1)), ValueError, "rstd"),
    ("bwd-rstd-dtype", _bwd(rstd=RSTD.astype(np.float64)), ValueError, "rstd"),
    ("bwd-rstd-none", _bwd(rstd=None), (ValueError, TypeError), "rstd"),
    ("bwd-x-int", _bwd(x=np.ones((2, 3, 4), int)), TypeError, r"\bx\b"),
    ("bwd-ns", _bwd(normalized_shape=3), ValueError, "normalized_shape"),
    ("bwd-ns-multi", _bwd(normalized_shape=(3, 4)), ValueError, "rstd"),
    ("bwd-weight", _bwd(weight=np.ones(5, np.float32)), ValueError, "weight"),
    ("bwd-eps-negative", _bwd(eps=-1e-5), ValueError, "eps"),
    ("bwd-eps-nan", _bwd(eps=float("nan")), ValueError, "eps"),
    ("bwd-eps-string", _bwd(eps="1e-5"), TypeError, "eps"),
    ("module-dtype", lambda: lnrs.RMSNorm(4, dtype=np.int32), TypeError, "dtype"),
    ("module-ns", lambda: lnrs.RMSNorm(()), ValueError, "normalized_shape"),
    ("module-ns-float", lambda: lnrs.RMSNorm(4.5), TypeError, "normalized_shape"),
    ("module-eps", lambda: lnrs.RMSNorm(4, eps=-1.0), ValueError, "eps"),
    ("module-eps-nan", lambda: lnrs.RMSNorm(4, eps=float("nan")), ValueError, "eps"),
    ("module-call-shape", lambda: lnrs.RMSNorm(5)(X), ValueError, "normalized_shape"),
    ("module-call-int", lambda: lnrs.RMSNorm(4)(np.ones((2, 4), int)), TypeError, r"\bx\b"),
]


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_nothing_panics():
    """Every bad case raises ValueError or TypeError, never another exception."""
    wrong = []
    for name, call, _, _ in CASES:
        try:
            call()
        except (ValueError, TypeError):
            continue
        except BaseException as e:  # noqa: BLE001 - PanicException is a BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            wrong.append(f"{name}: {type(e).__module__}.{type(e).__name__}: {e}")
        else:
            wrong.append(f"{name}: no exception")
    assert not wrong, "\n".join(wrong)


def test_failed_call_leaves_out_untouched():
    out = np.full((2, 3, 4), 7.0, np.float32)
    with pytest.raises(ValueError):
        lnrs.rms_norm(X, (4,), weight=np.ones(5, np.float32), out=out)
    with pytest.raises(ValueError):
        lnrs.rms_norm(X, (4,), eps=-1.0, out=out)
    assert np.all(out == 7.0)


# ============================================================ property test


@st.composite
def rms_cases(draw):
    dtype = draw(st.sampled_from([F64, F32]))
    lead = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=2)))
    dims = tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=2)))
    return dict(
        dtype=dtype,
        lead=lead,
        dims=dims,
        scale=10.0 ** draw(st.floats(-4, 4)),
        offset=draw(st.sampled_from([0.0, 1.0, -30.0])),
        eps=draw(st.sampled_from([None, 0.0, 1e-12, 1e-5, 1.0])),
        weighted=draw(st.booleans()),
        reversed=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rms_cases())
def test_property_forward_and_backward(case):
    rng = np.random.default_rng(case["seed"])
    dtype, dims, eps = case["dtype"], case["dims"], case["eps"]
    shape = case["lead"] + dims
    x = (rng.standard_normal(shape) * case["scale"] + case["offset"]).astype(dtype)
    if case["reversed"]:
        x = x[..., ::-1]
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(dims).astype(dtype) if case["weighted"] else None
    y, rstd = lnrs.rms_norm_forward(x, dims, w, eps)
    assert_accurate(x, dims, w, eps, y, rstd)
    assert same_bits(y, lnrs.rms_norm(np.ascontiguousarray(x), dims, w, eps))
    dx, dw = lnrs.rms_norm_backward(dy, x, rstd, dims, w)
    assert_grads_accurate(dy, x, dims, w, eps, dx, dw)
