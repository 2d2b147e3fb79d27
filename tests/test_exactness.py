"""lnrs against the exact reference (lnrs.testing): the accuracy goals of the
numerical-stability issue, on every adversarial case and on hypothesis-drawn data.

Goals (ulp: lnrs.testing.ulp_error, the spacing of the output dtype at the exact
value, floored at 2**-10): float32 <= 2 ulp, float64 <= 16 ulp; constant and
one-element rows exactly `bias`; NaN/Inf only in their own row; mean/rstd within
1 ulp; backward dx (LayerNorm and RMSNorm) within a few ulps on offset data.
"""

from __future__ import annotations

import functools

import lnrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lnrs import testing

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
GOAL = testing.GOAL_ULP
STAT_GOAL = 1.0
BACKWARD_GOAL = 4.0  # "a few ulps"


@functools.cache
def cases(dtype) -> dict:
    """The full-size adversarial cases; each computes its reference once."""
    return testing.adversarial_inputs(dtype)


CASES = [
    pytest.param(dt, name, id=f"{dt.name}-{name}")
    for dt in (F32, F64)
    for name in testing.adversarial_inputs(dt, quick=True)
]
EXACT_CASES = [
    p
    for p in CASES
    if "exact" in testing.adversarial_inputs(p.values[0], quick=True)[p.values[1]].tags
]


def goal_for(case: testing.Case, dtype) -> float:
    return 0.0 if "exact" in case.tags else GOAL[np.dtype(dtype)]


def finite_stats_error(got, ref) -> float:
    """Relative ulp error (no floor) of a per-row statistic on rows where it is finite."""
    got, ref = np.asarray(got).reshape(-1), np.asarray(ref).reshape(-1)
    keep = np.isfinite(ref)
    return testing.ulp_error(got[keep], ref[keep], floor=0.0) if keep.any() else 0.0


def worst_element(y, ref) -> str:
    """Where the largest error sits, for the failure message."""
    err = np.abs(y.astype(np.longdouble) - ref.astype(np.longdouble))
    err = err / np.spacing(np.maximum(np.abs(ref), testing.ULP_FLOOR).astype(ref.dtype))
    err = np.where(np.isnan(err), np.inf, err)
    i = np.unravel_index(int(np.argmax(err)), err.shape)
    return f"at {i}: got {y[i]!r}, exact {ref[i]!r}"


# --------------------------------------------------------------------------------------
# The adversarial cases
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,name", CASES)
def test_output_within_goal(dtype, name):
    case = cases(dtype)[name]
    ref, _, _ = case.reference()
    y = lnrs.layer_norm(*case.args)
    assert y.dtype == dtype and y.shape == ref.shape
    err = testing.ulp_error(y, ref)
    goal = goal_for(case, dtype)
    assert err <= goal, f"{name}: {err:g} ulp > {goal:g}; worst {worst_element(y, ref)}"


@pytest.mark.parametrize("dtype,name", CASES)
def test_mean_and_rstd_within_1_ulp(dtype, name):
    case = cases(dtype)[name]
    _, ref_mean, ref_rstd = case.reference()
    _, mean, rstd = lnrs.layer_norm_forward(*case.args)
    assert mean.dtype == rstd.dtype == dtype
    assert mean.shape == ref_mean.shape and rstd.shape == ref_rstd.shape
    m, r = finite_stats_error(mean, ref_mean), finite_stats_error(rstd, ref_rstd)
    assert m <= STAT_GOAL, f"{name}: mean {m:g} ulp; worst {worst_element(mean, ref_mean)}"
    assert r <= STAT_GOAL, f"{name}: rstd {r:g} ulp; worst {worst_element(rstd, ref_rstd)}"


@pytest.mark.parametrize("dtype,name", EXACT_CASES)
def test_constant_and_one_element_rows_give_bias_bitwise(dtype, name):
    case = cases(dtype)[name]
    y = lnrs.layer_norm(*case.args)
    want = np.broadcast_to(case.bias, y.shape)
    np.testing.assert_array_equal(y, want)
    # whatever the weight, and with no weight at all
    for weight in (None, np.full(case.normalized_shape, 1e30, dtype)):
        np.testing.assert_array_equal(
            lnrs.layer_norm(case.x, case.normalized_shape, weight, case.bias, case.eps), want
        )


@pytest.mark.parametrize("dtype", [F32, F64])
def test_nan_and_inf_stay_in_their_rows(dtype):
    case = cases(dtype)["nonfinite_rows"]
    ref, _, _ = case.reference()
    y = lnrs.layer_norm(*case.args)
    bad = ~np.isfinite(case.x).all(axis=1)
    assert np.isnan(y[bad]).all()
    assert np.isfinite(y[~bad]).all()
    assert testing.ulp_error(y[~bad], ref[~bad]) <= GOAL[dtype]
    # The finite rows' bits do not depend on their neighbours.
    alone = lnrs.layer_norm(case.x[~bad], case.normalized_shape, None, None, case.eps)
    np.testing.assert_array_equal(y[~bad], alone)


# --------------------------------------------------------------------------------------
# Hypothesis: offset, scale, length, dtype
# --------------------------------------------------------------------------------------


@st.composite
def distributions(draw):
    dtype = draw(st.sampled_from([F32, F64]))
    if dtype == F32:
        log_scale = draw(st.integers(-35, 30))
        log_offset = draw(st.integers(0, 7))  # offset relative to the spread
    else:
        log_scale = draw(st.integers(-290, 290))
        log_offset = draw(st.integers(0, 15))
    return {
        "dtype": dtype,
        "scale": 10.0**log_scale,
        "offset": draw(st.sampled_from([0.0, 1.0, -1.0])) * 10.0**log_offset,
        "n": draw(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 16, 31, 33, 64, 100, 257, 1000])),
        "rows": draw(st.integers(1, 3)),
        "weight": draw(st.booleans()),
        # float64 with a bias is the affine case of the adversarial set
        "bias": dtype == F32 and draw(st.booleans()),
        "eps": draw(st.sampled_from([1e-5, 0.0, 1.0, 1e-12])),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@settings(max_examples=200, deadline=None)
@given(distributions())
def test_property_forward_within_goal(p):
    rng = np.random.default_rng(p["seed"])
    dt, n = p["dtype"], p["n"]
    x = (p["scale"] * (p["offset"] + rng.standard_normal((p["rows"], n)))).astype(dt)
    w = rng.standard_normal(n).astype(dt) if p["weight"] else None
    b = rng.standard_normal(n).astype(dt) if p["bias"] else None
    ref, ref_mean, ref_rstd = testing.reference_layer_norm(x, n, w, b, p["eps"])
    y, mean, rstd = lnrs.layer_norm_forward(x, n, w, b, p["eps"])
    err = testing.ulp_error(y, ref)
    assert err <= GOAL[dt], f"{err:g} ulp; worst {worst_element(y, ref)}"
    assert finite_stats_error(mean, ref_mean) <= STAT_GOAL
    assert finite_stats_error(rstd, ref_rstd) <= STAT_GOAL


@settings(max_examples=150, deadline=None)
@given(
    dtype=st.sampled_from([F32, F64]),
    shift=st.integers(-20, 20),
    offset=st.integers(-(2**20), 2**20),
    n=st.sampled_from([2, 3, 4, 16, 100, 768]),
    zero_eps=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_affine_invariance(dtype, shift, offset, n, zero_eps, seed):
    """LN(a·x + c) = LN(x) for a = 2**shift and c on x's grid, so that a·x + c is
    exact; with eps scaled by a² the exact results are equal, and lnrs must match
    them within its goal."""
    rng = np.random.default_rng(seed)
    grid = 2.0**-8
    x = (rng.integers(-(2**12), 2**12, (3, n)) * grid).astype(dtype)
    a = 2.0**shift
    c = offset * grid * a
    x2 = (a * x.astype(np.float64) + c).astype(dtype)
    assert ((x2.astype(np.float64) - c) / a == x).all()  # exact
    eps = 0.0 if zero_eps else 1e-5
    eps2 = eps * a * a
    ref = testing.reference_layer_norm(x, n, eps=eps)[0]
    # the reference itself is exactly invariant
    np.testing.assert_array_equal(testing.reference_layer_norm(x2, n, eps=eps2)[0], ref)
    y, y2 = lnrs.layer_norm(x, n, eps=eps), lnrs.layer_norm(x2, n, eps=eps2)
    assert testing.ulp_error(y2, ref) <= GOAL[dtype], worst_element(y2, ref)
    assert testing.ulp_error(y2, y) <= GOAL[dtype], worst_element(y2, y)


# --------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------

OFFSETS = [
    pytest.param(dt, offset, id=f"{dt.name}-offset_{offset:g}")
    for dt, offset in [
        (F32, 0.0),
        (F32, 1e3),
        (F32, 1e4),
        (F32, 1e6),
        (F64, 0.0),
        (F64, 1e4),
        (F64, 1e8),
    ]
]


def backward_pair(dtype, offset, seed=0):
    rng = np.random.default_rng(seed)
    x = (offset + rng.standard_normal((16, 512))).astype(dtype)
    dy = rng.standard_normal((16, 512)).astype(dtype)
    w = (1 + 0.5 * rng.standard_normal(512)).astype(dtype)
    _, mean, rstd = lnrs.layer_norm_forward(x, 512, w, None)
    # eps: the exact gradient needs the exact rstd, which the rounded one
    # returned by the forward pass is not (see layer_norm_backward).
    got = lnrs.layer_norm_backward(dy, x, mean, rstd, 512, w, eps=1e-5)
    ref = testing.reference_layer_norm_backward(dy, x, 512, w)
    return got, ref


@pytest.mark.parametrize("dtype,offset", OFFSETS)
def test_backward_dx_within_a_few_ulps_on_offset_data(dtype, offset):
    (dx, _, _), (ref, _, _) = backward_pair(dtype, offset)
    assert dx.dtype == dtype
    err = testing.ulp_error(dx, ref)
    assert err <= BACKWARD_GOAL, f"dx {err:g} ulp; worst {worst_element(dx, ref)}"


@pytest.mark.parametrize("dtype,offset", OFFSETS)
def test_backward_dweight_dbias_within_a_few_ulps(dtype, offset):
    (_, dw, db), (_, ref_dw, ref_db) = backward_pair(dtype, offset)
    e_w, e_b = testing.ulp_error(dw, ref_dw), testing.ulp_error(db, ref_db)
    assert e_w <= BACKWARD_GOAL, f"dweight {e_w:g} ulp; worst {worst_element(dw, ref_dw)}"
    assert e_b <= BACKWARD_GOAL, f"dbias {e_b:g} ulp; worst {worst_element(db, ref_db)}"


RMS_BACKWARD = [
    pytest.param(dt, offset, weighted, id=f"{dt.name}-offset_{offset:g}-{label}")
    for dt in (F32, F64)
    for offset in (0.0, 1e4)
    for weighted, label in ((True, "weight"), (False, "no_weight"))
]


@pytest.mark.parametrize("dtype,offset,weighted", RMS_BACKWARD)
def test_rms_backward_within_a_few_ulps(dtype, offset, weighted):
    rng = np.random.default_rng(0)
    x = (offset + rng.standard_normal((16, 512))).astype(dtype)
    dy = rng.standard_normal((16, 512)).astype(dtype)
    w = (1 + 0.5 * rng.standard_normal(512)).astype(dtype) if weighted else None
    eps = float(np.finfo(dtype).eps)
    _, rstd = lnrs.rms_norm_forward(x, 512, w, eps)
    # eps given: the exact gradient needs the exact rstd (see rms_norm_backward)
    dx, dw = lnrs.rms_norm_backward(dy, x, rstd, 512, w, eps=eps)
    ref_dx, ref_dw = testing.reference_rms_norm_backward(dy, x, 512, w, eps)
    assert dx.dtype == dw.dtype == dtype
    e_x, e_w = testing.ulp_error(dx, ref_dx), testing.ulp_error(dw, ref_dw)
    assert e_x <= BACKWARD_GOAL, f"dx {e_x:g} ulp; worst {worst_element(dx, ref_dx)}"
    assert e_w <= BACKWARD_GOAL, f"dweight {e_w:g} ulp; worst {worst_element(dw, ref_dw)}"
