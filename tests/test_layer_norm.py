"""layer_norm / layer_norm_forward: accuracy against an independent wide reference,
shapes and layouts, array-likes, out=, special values and batch invariance."""

from __future__ import annotations

import lnrs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import (
    affine_ulp_error,
    max_ulp,
    reference_layer_norm,
    same_bits,
    ulp_error,
)

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)

# The output bound in ulps, and the bound for mean / rstd.
Y_TOL = {F32: 2.0, F64: 16.0}
STAT_TOL = {F32: 1.0, F64: 2.0}
# For tests about something other than float64's last bits (layouts, conversions,
# shapes), so that one float64 accuracy bug fails the accuracy tests, not all of
# them. Still ~1e-16 absolute on O(1) outputs: any algorithmic error shows.
LOOSE_F64 = 1024.0

# 1-element rows, and remainders of the 32-lane loop on either side of a multiple.
ROW_LENGTHS = [1, 2, 3, 31, 32, 33, 768, 4097]
OFFSETS = {F32: [0.0, 1e4, 1e6], F64: [0.0, 1e4, 1e8]}
AFFINE = ["plain", "weight", "bias", "weight+bias"]


def _params(rng, shape, dtype, affine):
    w = rng.standard_normal(shape).astype(dtype) if "weight" in affine else None
    b = rng.standard_normal(shape).astype(dtype) if "bias" in affine else None
    return w, b


def assert_accurate(x, ns, weight, bias, eps, y, mean=None, rstd=None, *, loose=False):
    """y (and mean/rstd when given) within tolerance of the wide reference."""
    x = np.asarray(x)
    dtype = x.dtype
    y_tol, m_tol = Y_TOL[dtype], STAT_TOL[dtype]
    if loose and dtype == F64:
        y_tol = m_tol = LOOSE_F64
    ref, mref, rref = reference_layer_norm(x, ns, weight, bias, eps)
    assert y.shape == x.shape and y.dtype == dtype
    if dtype == F64 and bias is not None:
        # xhat·w + b may cancel; measure against the size of the addends.
        err = affine_ulp_error(y, x, ns, weight, bias, eps, dtype)
        worst = float(err.max()) if err.size else 0.0
    else:
        worst = max_ulp(y, ref, dtype)
    assert worst <= y_tol, f"y is {worst:.2f} ulp from the reference"
    if mean is not None:
        assert mean.shape == mref.shape and mean.dtype == dtype
        assert rstd.shape == rref.shape and rstd.dtype == dtype
        m_err = max_ulp(mean, mref, dtype)
        r_err = max_ulp(rstd, rref, dtype, floor=0.0)
        assert m_err <= m_tol, f"mean is {m_err:.2f} ulp from the reference"
        assert r_err <= STAT_TOL[dtype], f"rstd is {r_err:.2f} ulp from the reference"


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("n", ROW_LENGTHS)
@pytest.mark.parametrize("offset", OFFSETS[F32])
def test_float32_within_2_ulp(n, offset, affine, rng):
    x = (rng.standard_normal((9, n)) + offset).astype(np.float32)
    w, b = _params(rng, (n,), np.float32, affine)
    y, mean, rstd = lnrs.layer_norm_forward(x, n, w, b)
    assert_accurate(x, n, w, b, 1e-5, y, mean, rstd)


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("n", ROW_LENGTHS)
@pytest.mark.parametrize("offset", OFFSETS[F64])
def test_float64_within_16_ulp(n, offset, affine, rng):
    x = rng.standard_normal((9, n)) + offset
    w, b = _params(rng, (n,), np.float64, affine)
    y, mean, rstd = lnrs.layer_norm_forward(x, n, w, b)
    assert_accurate(x, n, w, b, 1e-5, y, mean, rstd)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("eps", [0.0, 1e-12, 1e-5, 0.5, 100.0])
def test_eps_enters_the_variance(dtype, eps, rng):
    x = (rng.standard_normal((5, 100)) * 0.3 + 2.0).astype(dtype)
    y, mean, rstd = lnrs.layer_norm_forward(x, 100, eps=eps)
    assert_accurate(x, 100, None, None, eps, y, mean, rstd)


@pytest.mark.parametrize("scale", [1e-30, 1e-3, 1e3, 1e30, 1e37])
def test_float32_extreme_scales(scale, rng):
    # Squares of these overflow or underflow float32; the statistics must not.
    x = (rng.standard_normal((6, 100)) * scale).astype(np.float32)
    y, mean, rstd = lnrs.layer_norm_forward(x, 100, eps=0.0)
    assert_accurate(x, 100, None, None, 0.0, y, mean, rstd)


@pytest.mark.parametrize("eps", [0.0, 1e-5])
@pytest.mark.parametrize("scale", [1e-300, 1e-160, 1e-100, 1e100, 1e160, 1e200, 1e300])
def test_float64_extreme_scales(scale, eps, rng):
    # Squares overflow (> ~1e154) or underflow (< ~1e-154) float64 here; lnrs
    # promises to rescale. Loose tolerance: this test is about the range, not ulps.
    x = rng.standard_normal((6, 100)) * scale
    y, mean, rstd = lnrs.layer_norm_forward(x, 100, eps=eps)
    ref, mref, rref = reference_layer_norm(x, 100, None, None, eps)
    np.testing.assert_allclose(y, ref.astype(np.float64), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean, mref.astype(np.float64), rtol=1e-12, atol=0)
    np.testing.assert_allclose(rstd, rref.astype(np.float64), rtol=1e-12, atol=0)


def test_float64_huge_pair_with_default_eps():
    # The smallest form of the overflow case: var = 1e400 overflows float64.
    y, mean, rstd = lnrs.layer_norm_forward(np.array([1e200, -1e200]), 2)
    np.testing.assert_allclose(y, [1.0, -1.0], rtol=1e-15)
    assert mean == 0.0
    np.testing.assert_allclose(rstd, 1e-200, rtol=1e-15)


# -------------------------------------------------------------- exact special rows


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("lead", [(1,), (7,), (3, 5), (2000,)])
def test_one_element_rows_give_bias_exactly(dtype, lead, rng):
    x = (rng.standard_normal(lead + (1,)) * 100).astype(dtype)
    w = np.array([-2.5], dtype)
    b = np.array([0.3712], dtype)
    y, mean, rstd = lnrs.layer_norm_forward(x, 1, w, b)
    assert same_bits(y, np.broadcast_to(b, x.shape))
    assert same_bits(mean, x[..., 0])
    assert np.array_equal(lnrs.layer_norm(x, 1), np.zeros_like(x))
    _, _, rref = reference_layer_norm(x, 1)
    assert max_ulp(rstd, rref, dtype, floor=0.0) <= STAT_TOL[dtype]


CONSTANTS = {
    F32: [0.0, 1.0, -3.5, 0.1, 1e15, -1e15, 1e30, 3e38, 1e-30],
    F64: [0.0, 1.0, -3.5, 0.1, 1e15, 1e100, -1e300, 1e-300],
}


@pytest.mark.parametrize("n", [2, 3, 33, 768, 4097])
@pytest.mark.parametrize("dtype,value", [(d, v) for d in (F32, F64) for v in CONSTANTS[d]])
def test_constant_rows_give_bias_exactly(dtype, value, n, rng):
    x = np.full((4, n), value, dtype)
    w = rng.standard_normal(n).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    y, mean, rstd = lnrs.layer_norm_forward(x, n, w, b)
    assert same_bits(y, np.broadcast_to(b, x.shape))
    assert np.all(mean == x[:, 0])
    plain = lnrs.layer_norm(x, n, w)
    assert np.array_equal(plain, np.zeros_like(x))


def test_constant_rows_inside_a_batch_of_random_rows(rng):
    x = rng.standard_normal((64, 300)).astype(np.float32)
    x[::3] = np.float32(1e15)
    b = rng.standard_normal(300).astype(np.float32)
    y = lnrs.layer_norm(x, 300, bias=b)
    assert same_bits(y[::3], np.broadcast_to(b, y[::3].shape))
    assert_accurate(x, 300, None, b, 1e-5, y)


# ------------------------------------------------------ shapes and normalized_shape


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("ns", [(5,), (4, 5), (3, 4, 5), (2, 3, 4, 5)])
def test_multi_axis_normalized_shape(ns, dtype, rng):
    x = (rng.standard_normal((2, 3, 4, 5)) * 3 + 7).astype(dtype)
    w = rng.standard_normal(ns).astype(dtype)
    b = rng.standard_normal(ns).astype(dtype)
    for weight, bias in [(None, None), (w, None), (w, b)]:
        y, mean, rstd = lnrs.layer_norm_forward(x, ns, weight, bias)
        assert mean.shape == x.shape[: 4 - len(ns)]
        assert rstd.shape == x.shape[: 4 - len(ns)]
        assert_accurate(x, ns, weight, bias, 1e-5, y, mean, rstd)


@pytest.mark.parametrize(
    "ns",
    [
        5,
        np.int64(5),
        np.int32(5),
        np.uint8(5),
        (5,),
        [5],
        (np.int64(5),),
        np.array([5]),
    ],
    ids=repr,
)
def test_normalized_shape_single_axis_forms(ns, rng):
    x = rng.standard_normal((3, 4, 5)).astype(np.float32)
    y = lnrs.layer_norm(x, ns)
    assert same_bits(y, lnrs.layer_norm(x, (5,)))
    assert_accurate(x, (5,), None, None, 1e-5, y)


@pytest.mark.parametrize(
    "ns", [(4, 5), [4, 5], (np.int64(4), 5), np.array([4, 5]), range(4, 6)], ids=repr
)
def test_normalized_shape_multi_axis_forms(ns, rng):
    x = rng.standard_normal((3, 4, 5))
    y, mean, rstd = lnrs.layer_norm_forward(x, ns)
    assert mean.shape == (3,)
    assert_accurate(x, (4, 5), None, None, 1e-5, y, mean, rstd)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_mean_rstd_dtype_and_shape(dtype, rng):
    x = rng.standard_normal((2, 3, 4, 6)).astype(dtype)
    for ns, lead in [(6, (2, 3, 4)), ((4, 6), (2, 3)), ((3, 4, 6), (2,)), (x.shape, ())]:
        y, mean, rstd = lnrs.layer_norm_forward(x, ns)
        assert isinstance(mean, np.ndarray) and isinstance(rstd, np.ndarray)
        assert mean.shape == lead and rstd.shape == lead
        assert mean.dtype == dtype and rstd.dtype == dtype
        assert y.shape == x.shape and y.dtype == dtype


def test_one_dimensional_input(rng):
    x = rng.standard_normal(50).astype(np.float32) + 3
    y, mean, rstd = lnrs.layer_norm_forward(x, 50)
    assert mean.shape == () and rstd.shape == ()
    assert_accurate(x, 50, None, None, 1e-5, y, mean, rstd)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize(
    "shape,ns", [((0, 5), 5), ((2, 0, 5), 5), ((0, 3, 4), (3, 4)), ((0, 1), (1,))]
)
def test_zero_rows(shape, ns, dtype):
    x = np.empty(shape, dtype)
    lead = shape[: len(shape) - (1 if np.ndim(ns) == 0 else len(ns))]
    y, mean, rstd = lnrs.layer_norm_forward(x, ns)
    assert y.shape == shape and y.dtype == dtype
    assert mean.shape == lead and rstd.shape == lead
    assert mean.dtype == dtype and rstd.dtype == dtype
    w = np.ones(shape[len(lead) :], dtype)
    out = np.empty(shape, dtype)
    assert lnrs.layer_norm(x, ns, w, w, out=out) is out


def test_zero_length_rows_do_not_fail():
    x = np.empty((3, 0), np.float32)
    y, mean, rstd = lnrs.layer_norm_forward(x, 0)
    assert y.shape == (3, 0) and mean.shape == (3,) and rstd.shape == (3,)


# -------------------------------------------------------------------- layouts


def _views(base):
    """Non-contiguous views of a 2-D or 3-D array, with the normalized_shape to use."""
    yield "step-cols", base[:, ::2], base[:, ::2].shape[-1]
    yield "step-rows", base[::3], base.shape[-1]
    yield "reversed-rows", base[::-1], base.shape[-1]
    yield "reversed-cols", base[:, ::-1], base.shape[-1]
    yield "transpose", base.T, base.shape[0]
    yield "fortran", np.asfortranarray(base), base.shape[-1]
    yield "window", base[1:-1:2, 3:-2:3], base[1:-1:2, 3:-2:3].shape[-1]
    cube = base[: (base.shape[0] // 4) * 4].reshape(4, -1, base.shape[1])
    yield "cube-swap", cube.transpose(1, 0, 2), (4, base.shape[1])
    yield "cube-rev", cube[:, ::-1, ::-2], cube[:, ::-1, ::-2].shape[-2:]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("shape", [(8, 70), (64, 1030)])
def test_non_contiguous_inputs_match_contiguous_copy(shape, dtype, rng):
    base = (rng.standard_normal(shape) + 10).astype(dtype)
    for name, x, ns in _views(base):
        assert not x.flags.c_contiguous, name
        dims = (ns,) if np.ndim(ns) == 0 else tuple(ns)
        w = rng.standard_normal(dims).astype(dtype)
        b = rng.standard_normal(dims).astype(dtype)
        xc = np.ascontiguousarray(x)
        y, mean, rstd = lnrs.layer_norm_forward(x, ns, w, b)
        yc, meanc, rstdc = lnrs.layer_norm_forward(xc, ns, w, b)
        assert same_bits(y, yc), name
        assert same_bits(mean, meanc) and same_bits(rstd, rstdc), name
        if dtype == F32:
            assert_accurate(x, dims, w, b, 1e-5, y)
        np.testing.assert_array_equal(x, xc)  # input untouched


def test_non_contiguous_weight_and_bias(rng):
    x = rng.standard_normal((6, 40)).astype(np.float32)
    wb = rng.standard_normal((2, 80)).astype(np.float32)
    w, b = wb[0, ::2], wb[1, ::-2]
    y = lnrs.layer_norm(x, 40, w, b)
    assert same_bits(y, lnrs.layer_norm(x, 40, w.copy(), b.copy()))
    assert_accurate(x, 40, w, b, 1e-5, y)


def test_read_only_input(rng):
    x = rng.standard_normal((10, 64)).astype(np.float32)
    x.flags.writeable = False
    y = lnrs.layer_norm(x, 64)
    assert_accurate(x, 64, None, None, 1e-5, y)


# ---------------------------------------------------------------- array-likes


def test_nested_lists(rng):
    rows = (rng.standard_normal((4, 7)) + 3).tolist()
    y, mean, rstd = lnrs.layer_norm_forward(rows, 7)
    assert y.dtype == F64 and mean.dtype == F64
    assert same_bits(y, lnrs.layer_norm(np.array(rows), 7))
    assert_accurate(np.array(rows), 7, None, None, 1e-5, y, mean, rstd)


def test_tuples_and_float32_scalars(rng):
    vals = rng.standard_normal((3, 5)).astype(np.float32)
    as_tuples = tuple(tuple(np.float32(v) for v in r) for r in vals)
    y = lnrs.layer_norm(as_tuples, (5,))
    assert y.dtype == F32
    assert same_bits(y, lnrs.layer_norm(vals, 5))


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
def test_non_native_byte_order_input(dtype, rng):
    # A big-endian float32 array is still float32 data.
    x = (rng.standard_normal((4, 33)) + 5).astype(dtype)
    native = x.astype(np.dtype(dtype).newbyteorder("="))
    y = lnrs.layer_norm(x, 33)
    assert same_bits(y.astype(native.dtype), lnrs.layer_norm(native, 33))


@pytest.mark.parametrize("xdtype", [F32, F64])
@pytest.mark.parametrize(
    "kind", ["list", "float64", "float32", "int64", "int8", "uint16", "bool", "big-endian"]
)
def test_weight_and_bias_converted_to_x_dtype(kind, xdtype, rng):
    n = 37
    x = (rng.standard_normal((5, n)) + 1).astype(xdtype)
    w0 = rng.standard_normal(n) * 3
    b0 = rng.standard_normal(n)
    convert = {
        "list": lambda a: a.tolist(),
        "float64": lambda a: a.astype(np.float64),
        "float32": lambda a: a.astype(np.float32),
        "int64": lambda a: np.round(a * 10).astype(np.int64),
        "int8": lambda a: np.round(a * 10).astype(np.int8),
        "uint16": lambda a: np.round(np.abs(a) * 10).astype(np.uint16),
        "bool": lambda a: a > 0,
        "big-endian": lambda a: a.astype(">f8"),
    }[kind]
    w, b = convert(w0), convert(b0)
    w_x, b_x = np.asarray(w).astype(xdtype), np.asarray(b).astype(xdtype)
    y = lnrs.layer_norm(x, n, w, b)
    assert same_bits(y, lnrs.layer_norm(x, n, w_x, b_x))
    assert_accurate(x, n, w_x, b_x, 1e-5, y, loose=True)


@pytest.mark.parametrize(
    "eps", [1e-5, np.float32(1e-3), np.float64(0.25), 1, np.int64(2)], ids=repr
)
def test_eps_forms(eps, rng):
    x = (rng.standard_normal((3, 10)) * 0.5).astype(np.float32)
    y, mean, rstd = lnrs.layer_norm_forward(x, 10, eps=eps)
    assert_accurate(x, 10, None, None, float(eps), y, mean, rstd)


# -------------------------------------------------------------------- out=


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("shape", [(6, 31), (300, 257)])
def test_out_is_filled_and_returned(shape, dtype, rng):
    x = (rng.standard_normal(shape) + 2).astype(dtype)
    w, b = _params(rng, shape[-1:], dtype, "weight+bias")
    out = np.full(shape, np.nan, dtype)
    y = lnrs.layer_norm(x, shape[-1], w, b, out=out)
    assert y is out
    assert same_bits(out, lnrs.layer_norm(x, shape[-1], w, b))
    out2 = np.full(shape, np.nan, dtype)
    y2, mean, rstd = lnrs.layer_norm_forward(x, shape[-1], w, b, out=out2)
    assert y2 is out2
    assert same_bits(out2, out)
    assert mean.shape == shape[:1] and rstd.shape == shape[:1]
    assert_accurate(x, shape[-1], w, b, 1e-5, out, loose=True)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("shape,ns", [((6, 31), 31), ((300, 257), 257), ((4, 5, 33), (5, 33))])
def test_out_is_x_in_place(shape, ns, dtype, rng):
    x = (rng.standard_normal(shape) * 2 + 100).astype(dtype)
    dims = (ns,) if np.ndim(ns) == 0 else ns
    w, b = _params(rng, dims, dtype, "weight+bias")
    expected, emean, erstd = lnrs.layer_norm_forward(x.copy(), ns, w, b)
    original = x.copy()
    y, mean, rstd = lnrs.layer_norm_forward(x, ns, w, b, out=x)
    assert y is x
    assert same_bits(x, expected)
    assert same_bits(mean, emean) and same_bits(rstd, erstd)
    if dtype == F32:
        assert_accurate(original, dims, w, b, 1e-5, x)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("rows,cols", [(5, 17), (64, 1024)])
@pytest.mark.parametrize("shift", [1, -1, 7, -512])
def test_out_overlapping_x_shifted(rows, cols, shift, dtype, rng):
    n = rows * cols
    buf = (rng.standard_normal(n + abs(shift)) * 3 + 1).astype(dtype)
    if shift > 0:
        x = buf[shift:].reshape(rows, cols)
        out = buf[:-shift].reshape(rows, cols)
    else:
        x = buf[:shift].reshape(rows, cols)
        out = buf[-shift:].reshape(rows, cols)
    original = x.copy()
    w, b = _params(rng, (cols,), dtype, "weight+bias")
    expected = lnrs.layer_norm(original, cols, w, b)
    y = lnrs.layer_norm(x, cols, w, b, out=out)
    assert y is out
    assert same_bits(out, expected)
    if dtype == F32:
        assert_accurate(original, cols, w, b, 1e-5, out)


@pytest.mark.parametrize("which", ["weight", "bias"])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_out_aliasing_weight_or_bias(which, dtype, rng):
    # numpy ufuncs allow out to be an operand; so should lnrs (or it must refuse
    # with an error naming out). It must not be silently wrong.
    n = 40
    x = (rng.standard_normal(n) + 1).astype(dtype)
    w = rng.standard_normal(n).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    expected = lnrs.layer_norm(x, n, w.copy(), b.copy())
    target = w if which == "weight" else b
    y = lnrs.layer_norm(x, n, w, b, out=target)
    assert y is target
    assert same_bits(y, expected)


def test_out_aliasing_weight_through_a_reshaped_view(rng):
    n = 40
    x = rng.standard_normal((1, n)).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    expected = lnrs.layer_norm(x, n, w.copy())
    y = lnrs.layer_norm(x, n, w, out=w.reshape(1, n))
    assert same_bits(y, expected)


# ------------------------------------------------------------- NaN and Inf


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("cols", [1, 40, 4097])
def test_nan_and_inf_stay_in_their_row(cols, dtype, rng):
    x = (rng.standard_normal((7, cols)) + 3).astype(dtype)
    bad = {1: np.nan, 3: np.inf, 5: -np.inf}
    for r, v in bad.items():
        x[r, cols // 2] = v
    w, b = _params(rng, (cols,), dtype, "weight+bias")
    y, mean, rstd = lnrs.layer_norm_forward(x, cols, w, b)
    good = [r for r in range(7) if r not in bad]
    for r in bad:
        assert np.isnan(y[r]).all(), f"row {r} ({bad[r]}) should be all NaN"
        assert np.isnan(rstd[r]) or np.isnan(mean[r])
    clean = x[good]
    yc, mc, rc = lnrs.layer_norm_forward(clean, cols, w, b)
    assert same_bits(y[good], yc) and same_bits(mean[good], mc) and same_bits(rstd[good], rc)
    assert np.isfinite(y[good]).all()
    assert_accurate(clean, cols, w, None, 1e-5, lnrs.layer_norm(clean, cols, w))


def test_nan_in_weight_only_affects_its_column(rng):
    x = rng.standard_normal((4, 10)).astype(np.float32)
    w = np.ones(10, np.float32)
    w[3] = np.nan
    y = lnrs.layer_norm(x, 10, w)
    assert np.isnan(y[:, 3]).all()
    keep = [c for c in range(10) if c != 3]
    assert same_bits(y[:, keep], lnrs.layer_norm(x, 10)[:, keep])


# --------------------------------------------------------- batch invariance


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("cols", [33, 1024])
def test_batch_invariance(cols, dtype, rng):
    rows = 1500 if cols == 33 else 600  # large enough to run in parallel
    x = (rng.standard_normal((rows, cols)) * 5 + 50).astype(dtype)
    w, b = _params(rng, (cols,), dtype, "weight+bias")
    y, mean, rstd = lnrs.layer_norm_forward(x, cols, w, b)
    for pos in [0, 1, 17, rows // 2, rows - 2, rows - 1]:
        yr, mr, rr = lnrs.layer_norm_forward(x[pos], cols, w, b)
        assert same_bits(yr, y[pos]), pos
        assert same_bits(mr, mean[pos]) and same_bits(rr, rstd[pos]), pos
    for k in [2, 7, 64, rows // 3]:
        yk = lnrs.layer_norm(x[:k], cols, w, b)
        assert same_bits(yk, y[:k]), k
        yk = lnrs.layer_norm(x[-k:], cols, w, b)
        assert same_bits(yk, y[-k:]), k
    # The same row planted at another position of a different batch.
    other = (rng.standard_normal((rows, cols))).astype(dtype)
    other[rows // 3] = x[5]
    assert same_bits(lnrs.layer_norm(other, cols, w, b)[rows // 3], y[5])


# ------------------------------------------------------------ property tests


@st.composite
def cases(draw, dtype):
    lead = draw(st.lists(st.integers(0, 4), min_size=0, max_size=2))
    dims = draw(st.lists(st.integers(1, 40), min_size=1, max_size=2))
    offsets = [0.0, 1.0, -1e3, 1e4] + ([1e6] if dtype == F32 else [1e8])
    return dict(
        dtype=dtype,
        lead=tuple(lead),
        dims=tuple(dims),
        offset=draw(st.sampled_from(offsets)),
        scale=draw(st.sampled_from([1e-3, 1.0, 1e3])),
        eps=draw(st.one_of(st.sampled_from([1e-12, 1e-5, 0.1, 1.0]), st.floats(1e-10, 10.0))),
        affine=draw(st.sampled_from(AFFINE)),
        steps=tuple(
            draw(
                st.lists(
                    st.integers(1, 3),
                    min_size=len(lead) + len(dims),
                    max_size=len(lead) + len(dims),
                )
            )
        ),
        flips=tuple(
            draw(
                st.lists(
                    st.booleans(), min_size=len(lead) + len(dims), max_size=len(lead) + len(dims)
                )
            )
        ),
        fortran=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _build(case):
    rng = np.random.default_rng(case["seed"])
    dtype = case["dtype"]
    shape = case["lead"] + case["dims"]
    big = tuple(s * k for s, k in zip(shape, case["steps"]))
    base = (rng.standard_normal(big) * case["scale"] + case["offset"]).astype(dtype)
    if case["fortran"]:
        base = np.asfortranarray(base)
    index = tuple(slice(None, None, -k if f else k) for k, f in zip(case["steps"], case["flips"]))
    x = base[index]
    assert x.shape == shape
    w, b = _params(rng, case["dims"], dtype, case["affine"])
    return x, w, b


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_case(case):
    x, w, b = _build(case)
    dims, eps = case["dims"], case["eps"]
    y, mean, rstd = lnrs.layer_norm_forward(x, dims, w, b, eps=eps)
    yc, mc, rc = lnrs.layer_norm_forward(np.ascontiguousarray(x), dims, w, b, eps=eps)
    assert same_bits(y, yc) and same_bits(mean, mc) and same_bits(rstd, rc)
    assert mean.shape == case["lead"]
    assert_accurate(x, dims, w, b, eps, y, mean, rstd)


@PROPERTY
@given(cases(F32))
def test_property_float32(case):
    _check_case(case)


@PROPERTY
@given(cases(F64))
def test_property_float64(case):
    _check_case(case)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 300),
    cols=st.integers(1, 300),
    dtype=st.sampled_from([F32, F64]),
    seed=st.integers(0, 2**32 - 1),
    pos=st.floats(0, 1),
)
def test_property_row_alone_equals_row_in_batch(rows, cols, dtype, seed, pos):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * 10 + rng.uniform(-1e3, 1e3)).astype(dtype)
    b = rng.standard_normal(cols).astype(dtype)
    y = lnrs.layer_norm(x, cols, None, b)
    r = min(int(pos * rows), rows - 1)
    assert same_bits(lnrs.layer_norm(x[r : r + 1], cols, None, b), y[r : r + 1])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 200),
    value=st.floats(allow_nan=False, allow_infinity=False, width=32),
    dtype=st.sampled_from([F32, F64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_constant_rows(n, value, dtype, seed):
    rng = np.random.default_rng(seed)
    x = np.full((3, n), value, dtype)
    b = rng.standard_normal(n).astype(dtype)
    w = rng.standard_normal(n).astype(dtype)
    assert same_bits(lnrs.layer_norm(x, n, w, b), np.broadcast_to(b, x.shape))


def test_ulp_metric_catches_a_one_ulp_change(rng):
    # The reference and the metric must be able to fail: nudge one output by 3 ulp.
    x = rng.standard_normal((4, 64)).astype(np.float32)
    y = lnrs.layer_norm(x, 64)
    ref, _, _ = reference_layer_norm(x, 64)
    bad = y.copy()
    bad[2, 5] = np.nextafter(np.nextafter(np.nextafter(bad[2, 5], np.inf), np.inf), np.inf)
    assert ulp_error(bad, ref, F32)[2, 5] > 2
    assert max_ulp(y, ref, F32) <= 1


def test_float64_mean_of_a_pair_is_exact():
    # The smallest case of the float64 mean losing bits: two values whose exact
    # mean is a float64 (numpy's plain mean gets it).
    from fractions import Fraction

    x = np.array([-511.92, 517.04])
    exact = (Fraction(x[0]) + Fraction(x[1])) / 2
    assert float(exact) == np.mean(x)
    _, mean, _ = lnrs.layer_norm_forward(x, 2)
    err = abs(Fraction(float(mean)) - exact) / Fraction(float(np.spacing(float(exact))))
    assert err <= 1, f"mean {float(mean)!r} is {float(err):.1f} ulp from {float(exact)!r}"


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("distance", [0.0, 5.0, 31.0, 32.5, 1e3, 1e6])
@pytest.mark.parametrize("n", [2, 33, 4097])
def test_first_element_far_from_the_mean(distance, n, dtype, rng):
    # Statistics shifted by x[0] cancel as far as x[0] is from the mean; the
    # result must not depend on which element comes first.
    x = (rng.standard_normal((6, n)) + 1e4).astype(dtype)
    x[:, 0] = (x[:, 1:].mean(axis=1) if n > 1 else 0) + distance * (x[:, 1:].std(axis=1) + 1)
    y, mean, rstd = lnrs.layer_norm_forward(x, n)
    assert_accurate(x, n, None, None, 1e-5, y, mean, rstd)
    rolled = np.roll(x, -1, axis=1)
    y_rolled = lnrs.layer_norm(rolled, n)
    assert max_ulp(y_rolled, reference_layer_norm(rolled, n)[0], dtype) <= Y_TOL[dtype]
