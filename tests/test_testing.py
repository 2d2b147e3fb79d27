"""lnrs.testing itself: the exact reference certified by exact rational comparisons,
the ulp metric, the adversarial inputs and the compare() harness."""

from __future__ import annotations

import importlib.util
import math
import time
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
from certificate import certify
from hypothesis import given, settings
from hypothesis import strategies as st
from lnrs import testing

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


# Correct rounding is certified by tests/certificate.py.


def exact_row(x, eps):
    xs = [Fraction(float(v)) for v in x]
    n = len(xs)
    mean = sum(xs) / n
    veps = sum((v - mean) ** 2 for v in xs) / n + Fraction(float(eps))
    return xs, mean, veps


small = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from([F32, F64]),
        "n": st.integers(1, 7),
        "rows": st.integers(1, 3),
        "offset": st.sampled_from([0.0, 1.0, 1e3, 1e6, 1e8, 1e20, -1e30]),
        "scale": st.sampled_from([1.0, 1e-3, 1e-7, 1e-20, 1e20, 2.0**-140]),
        "eps": st.sampled_from([1e-5, 0.0, 0.25, 1.0]),
        "weight": st.booleans(),
        "bias": st.booleans(),
        "seed": st.integers(0, 2**32 - 1),
    }
)


def draw_input(p):
    rng = np.random.default_rng(p["seed"])
    dt = p["dtype"]
    with np.errstate(over="ignore"):
        x = (p["offset"] + p["scale"] * rng.standard_normal((p["rows"], p["n"]))).astype(dt)
    x = np.where(np.isfinite(x), x, 1.0).astype(dt)
    w = rng.standard_normal(p["n"]).astype(dt) if p["weight"] else None
    b = rng.standard_normal(p["n"]).astype(dt) if p["bias"] else None
    return x, w, b


@settings(max_examples=800, deadline=None)
@given(small)
def test_forward_is_correctly_rounded(p):
    x, w, b = draw_input(p)
    dt, eps = p["dtype"], p["eps"]
    y, mean, rstd = testing.reference_layer_norm(x, p["n"], w, b, eps)
    assert y.dtype == dt and mean.dtype == dt and rstd.dtype == dt
    assert y.shape == x.shape and mean.shape == rstd.shape == (p["rows"],)
    for i, row in enumerate(x):
        xs, mu, veps = exact_row(row, eps)
        certify(mean[i], dt, mu)
        if veps == 0:  # a constant row with eps = 0: 0/0
            assert np.isnan(y[i]).all() and rstd[i] == np.inf
            continue
        certify(rstd[i], dt, Fraction(1), inv_v=1 / veps)
        for j, v in enumerate(xs):
            k = (v - mu) * (Fraction(float(w[j])) if w is not None else 1)
            bj = Fraction(float(b[j])) if b is not None else Fraction(0)
            certify(y[i, j], dt, k, bj, 1 / veps)


@settings(max_examples=300, deadline=None)
@given(small)
def test_backward_is_correctly_rounded(p):
    x, w, _ = draw_input(p)
    dt, eps, n = p["dtype"], p["eps"], p["n"]
    dy = np.random.default_rng(p["seed"] + 1).standard_normal(x.shape).astype(dt)
    dx, dweight, dbias = testing.reference_layer_norm_backward(dy, x, n, w, eps)
    assert dx.shape == x.shape and dweight.shape == dbias.shape == (n,)
    rows = []
    for i, row in enumerate(x):
        xs, mu, veps = exact_row(row, eps)
        rows.append((xs, mu, veps))
        if veps == 0:
            assert np.isnan(dx[i]).all()
            continue
        g = [
            Fraction(float(dy[i, j])) * (Fraction(float(w[j])) if w is not None else 1)
            for j in range(n)
        ]
        u = 1 / veps  # rstd²
        mg = sum(g) / n
        mgd = sum(gj * (v - mu) for gj, v in zip(g, xs)) / n  # mean(g·xhat) / rstd
        for j, v in enumerate(xs):
            # dx = rstd·(g - mean(g) - xhat·mean(g·xhat)) = rstd·(g - mg - (v - mu)·u·mgd)
            certify(dx[i, j], dt, g[j] - mg - (v - mu) * u * mgd, inv_v=u)
    for j in range(n):
        certify(dbias[j], dt, sum(Fraction(float(dy[i, j])) for i in range(len(x))))
    if any(veps == 0 for _, _, veps in rows):
        assert np.isnan(dweight).all()
        return
    # Σ_rows dy·(x - mean)·rstd_row
    for j in range(n):
        terms = [
            (Fraction(float(dy[i, j])) * (xs[j] - mu), veps)
            for i, (xs, mu, veps) in enumerate(rows)
        ]
        certify_sum(dweight[j], terms)


def certify_sum(value, terms) -> None:
    """Assert that `value` is Σ k/sqrt(v) over `terms` (k, v) correctly rounded: irrational
    terms of several rows, checked against 250-digit decimals (the reference's bracketing
    decides the rounding exactly)."""
    with localcontext() as ctx:
        ctx.prec = 250
        total = Decimal(0)
        for k, v in terms:
            r = 1 / (Decimal(v.numerator) / Decimal(v.denominator)).sqrt()
            total += Decimal(k.numerator) / Decimal(k.denominator) * r
    expect = Fraction(total)
    got = Fraction(float(value))
    spacing = Fraction(float(np.spacing(np.abs(value))))
    assert abs(got - expect) <= spacing / 2 * (1 + Fraction(1, 10**30)) + Fraction(1, 10**200), (
        value,
        float(expect),
    )


@settings(max_examples=300, deadline=None)
@given(small)
def test_rms_backward_is_correctly_rounded(p):
    x, w, _ = draw_input(p)
    dt, eps, n = p["dtype"], p["eps"], p["n"]
    dy = np.random.default_rng(p["seed"] + 1).standard_normal(x.shape).astype(dt)
    dx, dweight = testing.reference_rms_norm_backward(dy, x, n, w, eps)
    assert dx.dtype == dweight.dtype == dt
    assert dx.shape == x.shape and dweight.shape == (n,)
    rows = []
    for i, row in enumerate(x):
        xs = [Fraction(float(v)) for v in row]
        veps = sum(v * v for v in xs) / n + Fraction(float(eps))  # 1 / rstd²
        rows.append((xs, veps))
        if veps == 0:
            assert np.isnan(dx[i]).all()
            continue
        g = [
            Fraction(float(dy[i, j])) * (Fraction(float(w[j])) if w is not None else 1)
            for j in range(n)
        ]
        u = 1 / veps
        mgx = sum(gj * v for gj, v in zip(g, xs)) / n  # mean(g·xhat) / rstd
        for j, v in enumerate(xs):
            # dx = rstd·(g - xhat·mean(g·xhat)) = rstd·(g - x·u·mgx)
            certify(dx[i, j], dt, g[j] - v * u * mgx, inv_v=u)
    if any(veps == 0 for _, veps in rows):
        assert np.isnan(dweight).all()
        return
    for j in range(n):  # Σ_rows dy·x·rstd_row
        certify_sum(
            dweight[j], [(Fraction(float(dy[i, j])) * xs[j], v) for i, (xs, v) in enumerate(rows)]
        )


def rms_loss(dy, x, w, eps) -> float:
    """sum(dy·rms_norm(x)) in float64, for finite differences."""
    rstd = 1 / np.sqrt((x * x).mean(axis=1, keepdims=True) + eps)
    return float((dy * x * rstd * w).sum())


@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_rms_backward_matches_finite_differences(offset):
    rng = np.random.default_rng(5)
    x = offset + rng.standard_normal((3, 6))
    dy, w = rng.standard_normal((3, 6)), 1 + 0.5 * rng.standard_normal(6)
    eps = 0.1
    dx, dweight = testing.reference_rms_norm_backward(dy, x, 6, w, eps)
    h = 1e-6
    for i, j in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i, j] += h
        down[i, j] -= h
        numeric = (rms_loss(dy, up, w, eps) - rms_loss(dy, down, w, eps)) / (2 * h)
        assert numeric == pytest.approx(dx[i, j], rel=1e-6, abs=1e-8), (i, j)
    for j in range(6):
        up, down = w.copy(), w.copy()
        up[j] += h
        down[j] -= h
        numeric = (rms_loss(dy, x, up, eps) - rms_loss(dy, x, down, eps)) / (2 * h)
        assert numeric == pytest.approx(dweight[j], rel=1e-6, abs=1e-8), j


def test_rms_backward_defaults_and_special_rows():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    dy = rng.standard_normal((4, 5)).astype(np.float32)
    # eps defaults to float32's machine epsilon, as lnrs.rms_norm's; no weight is a weight of ones
    default = testing.reference_rms_norm_backward(dy, x, 5)
    explicit = testing.reference_rms_norm_backward(dy, x, 5, np.ones(5), float(np.finfo(F32).eps))
    for a, b in zip(default, explicit):
        np.testing.assert_array_equal(a, b)
    # multi-axis rows are flattened rows
    dx, dweight = testing.reference_rms_norm_backward(
        dy.reshape(4, 1, 5), x.reshape(4, 1, 5), (1, 5)
    )
    np.testing.assert_array_equal(dx.reshape(4, 5), default[0])
    np.testing.assert_array_equal(dweight.reshape(5), default[1])
    # a zero row with eps = 0, and NaN/Inf in x or dy: NaN dx in that row only;
    # a bad x row makes dweight NaN
    x[0] = 0
    dx, dweight = testing.reference_rms_norm_backward(dy, x, 5, eps=0.0)
    assert np.isnan(dx[0]).all() and np.isfinite(dx[1:]).all() and np.isnan(dweight).all()
    x[0] = 1
    dy[2, 3] = np.inf
    x[3, 1] = np.nan
    dx, dweight = testing.reference_rms_norm_backward(dy, x, 5)
    assert np.isnan(dx[2:]).all() and np.isfinite(dx[:2]).all() and np.isnan(dweight).all()
    empty = testing.reference_rms_norm_backward(np.zeros((0, 5)), np.zeros((0, 5)), 5)
    assert empty[0].shape == (0, 5) and np.isnan(empty[1]).all()
    with pytest.raises(TypeError, match="float32 or float64"):
        testing.reference_rms_norm_backward(dy, x.astype(np.float16), 5)
    with pytest.raises(ValueError, match="dy must have shape"):
        testing.reference_rms_norm_backward(dy[:2], x, 5)
    with pytest.raises(ValueError, match="eps"):
        testing.reference_rms_norm_backward(dy, x, 5, eps=-1.0)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_undecided_roundings_are_retried(monkeypatch, dtype):
    """With too few root bits most roundings are undecided at first; the retries
    must land on the same bits as the default precision."""
    cases = testing.adversarial_inputs(dtype, quick=True)
    names = ["offset_1e4_affine", "rows_of_3", "variance_near_eps", "squares_overflow_uniform"]
    expected = [testing.reference_layer_norm(*cases[k].args) for k in names]
    rng = np.random.default_rng(1)
    x = (1e3 + rng.standard_normal((4, 16))).astype(dtype)
    dy = rng.standard_normal((4, 16)).astype(dtype)
    w = rng.standard_normal(16).astype(dtype)
    backward = testing.reference_layer_norm_backward(dy, x, 16, w)
    rms_backward = testing.reference_rms_norm_backward(dy, x, 16, w)
    monkeypatch.setattr(testing, "_GUARD", -testing._format(dtype)[0] + 4)
    for name, want in zip(names, expected):
        for a, b in zip(testing.reference_layer_norm(*cases[name].args), want):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(testing.reference_layer_norm_backward(dy, x, 16, w), backward):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(testing.reference_rms_norm_backward(dy, x, 16, w), rms_backward):
        np.testing.assert_array_equal(a, b)


def test_reference_on_a_known_row():
    # [1, 2, 3, 4]: mean 2.5, var 1.25, rstd 2/sqrt(5), xhat = (-3, -1, 1, 3)/sqrt(5)
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    y, mean, rstd = testing.reference_layer_norm(x, 4, eps=0.0)
    assert mean[0] == 2.5
    certify(rstd[0], F64, Fraction(1), inv_v=Fraction(4, 5))
    for j, k in enumerate((-3, -1, 1, 3)):
        certify(y[0, j], F64, Fraction(k), inv_v=Fraction(1, 5))
    np.testing.assert_allclose(y[0], np.array([-3, -1, 1, 3]) / math.sqrt(5), rtol=1e-15)


def test_rational_roots_round_ties_to_even():
    # Two elements, eps = 0: xhat = ±1 exactly, so y = b ± 1 exactly, which can be a tie.
    b = np.array([2.0**-24, 3 * 2.0**-25], dtype=np.float32)  # 1 + b: a tie, and just above one
    x = np.array([[0.0, 1.0]], dtype=np.float32)
    y, _, rstd = testing.reference_layer_norm(x, 2, None, b, eps=0.0)
    assert rstd[0] == 2.0
    # -1 + 2**-24 is exact; 1 + 3·2**-25 lies between 1 + 2**-23 and 1 + 2·2**-23: rounds up
    assert y[0, 0] == np.float32(-1 + 2.0**-24)
    assert y[0, 1] == np.float32(1 + 2.0**-23)
    b = np.array([0.0, 2.0**-24], dtype=np.float32)  # 1 + 2**-24: the midpoint, to even (1.0)
    y, _, _ = testing.reference_layer_norm(x, 2, None, b, eps=0.0)
    assert y[0, 1] == 1.0


def test_reference_overflow_and_subnormal_outputs():
    x = np.array([[-1.0, 1.0]], dtype=np.float32)
    w = np.array([3e38, 3e38], dtype=np.float32)
    b = np.array([0.0, 3e38], dtype=np.float32)
    y, _, _ = testing.reference_layer_norm(x, 2, w, b, eps=0.0)
    assert y[0, 0] == np.float32(-3e38) and y[0, 1] == np.inf
    w = np.array([1e-45, 3e-45], dtype=np.float32)
    y, _, _ = testing.reference_layer_norm(x, 2, w, None, eps=0.0)
    assert y[0, 0] == -np.float32(1e-45) and y[0, 1] == np.float32(3e-45)


def test_reference_special_rows():
    x = np.array(
        [[1.0, 2.0, 3.0], [1.0, np.nan, 3.0], [np.inf, 1.0, 2.0], [-np.inf, np.inf, 0.0], [7.0] * 3]
    )
    y, mean, rstd = testing.reference_layer_norm(x, 3, eps=0.0)
    assert np.isfinite(y[0]).all() and np.isnan(y[1:]).all()
    assert np.isnan(mean[1]) and mean[2] == np.inf and np.isnan(mean[3]) and mean[4] == 7.0
    assert np.isnan(rstd[1:4]).all() and rstd[4] == np.inf
    # With eps > 0 a constant row gives exactly the bias.
    b = np.array([0.5, -2.0, 3.0])
    y, _, rstd = testing.reference_layer_norm(x[4:], 3, np.array([9.0, 9.0, 9.0]), b)
    np.testing.assert_array_equal(y[0], b)
    certify(rstd[0], F64, Fraction(1), inv_v=1 / Fraction(1e-5))


def test_reference_non_finite_weight_follows_ieee():
    x = np.array([[0.0, 1.0, 2.0]])
    y, _, _ = testing.reference_layer_norm(x, 3, np.array([np.inf, np.inf, 1.0]), None)
    assert y[0, 0] == -np.inf and np.isnan(y[0, 1]) and np.isfinite(y[0, 2])


def test_reference_checks_its_arguments():
    with pytest.raises(TypeError, match="float32 or float64"):
        testing.reference_layer_norm(np.zeros((2, 3), np.float16), 3)
    with pytest.raises(ValueError, match="trailing"):
        testing.reference_layer_norm(np.zeros((2, 3)), 4)
    with pytest.raises(ValueError, match="weight"):
        testing.reference_layer_norm(np.zeros((2, 3)), 3, np.ones(4))
    with pytest.raises(ValueError, match="eps"):
        testing.reference_layer_norm(np.zeros((2, 3)), 3, eps=-1.0)


def test_reference_multi_axis_matches_flattened_rows():
    rng = np.random.default_rng(3)
    x = (1e4 + rng.standard_normal((2, 3, 4, 5))).astype(np.float32)
    w = rng.standard_normal((4, 5)).astype(np.float32)
    y, mean, rstd = testing.reference_layer_norm(x, (4, 5), w, None)
    y2, mean2, rstd2 = testing.reference_layer_norm(x.reshape(6, 20), 20, w.reshape(20), None)
    np.testing.assert_array_equal(y.reshape(6, 20), y2)
    assert mean.shape == (2, 3)
    np.testing.assert_array_equal(mean.reshape(6), mean2)
    np.testing.assert_array_equal(rstd.reshape(6), rstd2)


def test_reference_speed_on_a_long_float64_row():
    x = 1e8 + np.random.default_rng(0).standard_normal((1, 1 << 16))
    started = time.perf_counter()
    testing.reference_layer_norm(x, 1 << 16, np.ones(1 << 16), np.zeros(1 << 16))
    assert time.perf_counter() - started < 10.0


def test_round_ratio_agrees_with_python_division():
    # Python's int/int is correctly rounded to float64 (subnormals included): an
    # independent check of the integer rounding used for float32 and for the fallbacks.
    rng = np.random.default_rng(7)
    for _ in range(3000):
        a = int(rng.integers(1, 2**62)) << int(rng.integers(0, 80))
        d = int(rng.integers(1, 2**62)) << int(rng.integers(0, 1200))
        sign = 1 if rng.random() < 0.5 else -1
        assert testing._round_ratio(sign * a, d, F64) == sign * a / d
        # float32: against a search among float32 neighbours
        f = Fraction(sign * a, d)
        got = np.float32(testing._round_ratio(sign * a, d, F32))
        if not np.isfinite(got):
            assert abs(f) >= Fraction(2**128 - 2**103)
            continue
        certify(got, F32, f)


# --------------------------------------------------------------------------------------
# ulp_error
# --------------------------------------------------------------------------------------


def test_ulp_error_counts_spacings():
    ref = np.array([1.0, 3.0, -7.5], dtype=np.float32)
    y = ref.copy()
    assert testing.ulp_error(y, ref) == 0.0
    y[1] = np.nextafter(y[1], np.float32(10))
    assert testing.ulp_error(y, ref) == 1.0
    y[2] = ref[2] - 3 * np.spacing(np.float32(7.5))
    assert testing.ulp_error(y, ref) == 3.0
    # float64: the unit is float64's spacing
    ref64 = np.array([1.0, 2.0])
    assert testing.ulp_error(ref64 + np.spacing(ref64) * [0, 5], ref64) == 5.0


def test_ulp_error_floor():
    ref = np.zeros(3, dtype=np.float32)
    y = np.array([0.0, np.spacing(np.float32(2**-10)), 1e-30], dtype=np.float32)
    assert testing.ulp_error(y, ref) == 1.0
    # Below the floor: measured in spacings of 2**-10, however small the reference.
    assert testing.ulp_error(np.float32([1e-6]), np.float32([2e-6])) == pytest.approx(
        1e-6 / float(np.spacing(np.float32(2**-10))), rel=1e-6
    )
    # floor=0: purely relative
    assert testing.ulp_error(np.float32([1e-30]), np.float32([2e-30]), floor=0.0) > 1e6


def test_ulp_error_reference_may_be_wider():
    ref = np.array([1 + 2.0**-24])  # half a float32 ulp above 1
    assert testing.ulp_error(np.float32([1.0]), ref) == 0.5


def test_ulp_error_non_finite():
    ref = np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float32)
    assert testing.ulp_error(ref.copy(), ref) == 0.0
    for i, bad in [(0, 1.0), (1, -np.inf), (1, np.nan), (2, 0.0), (3, np.nan), (3, np.inf)]:
        y = ref.copy()
        y[i] = bad
        assert testing.ulp_error(y, ref) == np.inf, (i, bad)


def test_ulp_error_per_row():
    ref = np.zeros((2, 3, 4), dtype=np.float32)
    y = ref.copy()
    unit = np.spacing(np.float32(2**-10))
    y[0, 1, 2] = 3 * unit
    y[1, 2, 0] = np.nan
    rows = testing.ulp_error(y, ref, per_row=True)
    assert rows.shape == (2, 3)
    np.testing.assert_array_equal(rows, [[0, 3, 0], [0, 0, np.inf]])
    two = testing.ulp_error(y, ref, per_row=2)
    np.testing.assert_array_equal(two, [3, np.inf])
    with pytest.raises(ValueError, match="shape"):
        testing.ulp_error(y, ref[0])
    with pytest.raises(ValueError, match="per_row"):
        testing.ulp_error(y, ref, per_row=4)


# --------------------------------------------------------------------------------------
# adversarial_inputs
# --------------------------------------------------------------------------------------

CLASSES = [
    "offset_1e3",
    "offset_1e4",
    "offset_1e5",
    "offset_1e6",
    "offset_1e4_affine",
    "offset_1e6_affine",
    "tiny_spread",
    "squares_overflow_uniform",
    "squares_underflow",
    "long_rows",
    "long_row_single",
    "outlier",
    "outlier_first",
    "variance_near_eps",
    "rows_of_3",
    "rows_of_4",
    "multi_axis",
    "constant_rows",
    "constant_rounds_equal",
    "one_element_rows",
    "nonfinite_rows",
]
EXTRA = {
    F32: ["squares_overflow_1e20", "squares_overflow_1e30"],
    F64: ["offset_1e8", "offset_1e8_affine", "squares_overflow_1e200", "squares_overflow_1e300"],
}


@pytest.mark.parametrize("dtype", [F32, F64])
def test_adversarial_inputs_cover_the_classes(dtype):
    cases = testing.adversarial_inputs(dtype)
    assert set(CLASSES + EXTRA[dtype]) <= set(cases)
    for name, case in cases.items():
        assert case.name == name
        assert case.x.dtype == dtype and case.x.flags.c_contiguous
        dims = case.normalized_shape
        assert case.x.shape[case.x.ndim - len(dims) :] == dims
        for p in (case.weight, case.bias):
            assert p is None or (p.shape == dims and p.dtype == dtype)
        assert case.args == (case.x, dims, case.weight, case.bias, case.eps)
        if "nonfinite" not in case.tags:
            assert np.isfinite(case.x).all(), name
    fmax = float(np.finfo(dtype).max)
    big = np.abs(cases["squares_overflow_uniform"].x.astype(np.float64))
    assert big.max() > math.sqrt(fmax) * 1e10 and big.max() > 0.5 * (
        3e38 if dtype == F32 else 1e308
    )
    under = cases["squares_underflow"]
    assert under.eps == 0.0
    assert np.median(np.abs(under.x)) ** 2 < float(np.finfo(dtype).tiny)
    assert cases["long_rows"].x.shape[-1] == 1 << 16
    assert cases["long_row_single"].x.shape == (1, 1 << 20)
    assert cases["rows_of_3"].x.shape[-1] == 3 and cases["rows_of_4"].x.shape[-1] == 4
    assert len(cases["multi_axis"].normalized_shape) == 2
    out = cases["outlier_first"].x
    assert (np.abs(out[:, 0]) == 1e4).all()
    out = cases["outlier"].x
    assert ((np.abs(out) == 1e4).sum(axis=1) == 1).all() and (np.abs(out[:, 0]) < 1e4).all()
    for name in ("constant_rows", "constant_rounds_equal"):
        x = cases[name].x
        assert "exact" in cases[name].tags
        assert (x == x[:, :1]).all(), name
    assert cases["one_element_rows"].x.shape[-1] == 1
    spread = cases["tiny_spread"].x
    assert ((spread.max(axis=1) - spread.min(axis=1)) < 1e-4 * np.abs(spread[:, 0])).all()
    bad = ~np.isfinite(cases["nonfinite_rows"].x)
    assert bad.any(axis=1).sum() >= 3 and not bad.all(axis=1).any()
    assert np.isnan(cases["nonfinite_rows"].x).any() and np.isinf(cases["nonfinite_rows"].x).any()


def test_adversarial_inputs_are_reproducible_and_quick_is_small():
    a = testing.adversarial_inputs(np.float32, seed=1, quick=True)
    b = testing.adversarial_inputs(np.float32, seed=1, quick=True)
    c = testing.adversarial_inputs(np.float32, seed=2, quick=True)
    assert list(a) == list(b) == list(c)
    for name in a:
        np.testing.assert_array_equal(a[name].x, b[name].x)
    assert not np.array_equal(a["offset_1e3"].x, c["offset_1e3"].x)
    assert sum(case.x.size for case in a.values()) < 100_000
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        testing.adversarial_inputs(np.int32)


# --------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------


def naive_fn(x, normalized_shape, weight, bias, eps):
    """E[x²] - E[x]², all in float32: the textbook way to lose everything."""
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    with np.errstate(all="ignore"):
        mean = x.mean(axis=axes, keepdims=True, dtype=x.dtype)
        var = (x * x).mean(axis=axes, keepdims=True, dtype=x.dtype) - mean * mean
        y = (x - mean) / np.sqrt(var + x.dtype.type(eps))
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
    return y


@pytest.fixture(scope="module")
def quick32():
    return testing.adversarial_inputs(np.float32, quick=True)


def test_compare_reports_a_naive_implementation(quick32):
    results = testing.compare(naive_fn, quick32)
    assert set(results) == set(quick32)
    for name in ("offset_1e3", "offset_1e4", "offset_1e6", "tiny_spread", "rows_of_4"):
        assert results[name].max_ulp > 1e3, (name, results[name])
    # Squares that overflow float32: var = inf, every output 0.
    assert results["squares_overflow_1e20"].max_ulp > 1e6
    # inf - inf in the variance, or a variance cancelled below zero: NaN.
    assert results["squares_overflow_uniform"].nonfinite
    assert results["squares_overflow_uniform"].max_ulp == np.inf
    assert all(r.error is None for r in results.values())


def test_compare_on_lnrs_and_the_numpy_peer(quick32):
    results = testing.compare(testing.lnrs_fn, quick32)
    assert all(r.max_ulp <= 2 and not r.nonfinite for r in results.values()), results
    numpy_results = testing.compare(testing.numpy_fn, quick32)
    assert numpy_results["offset_1e6"].max_ulp > 1e3


def test_compare_records_exceptions_and_shapes():
    cases = testing.adversarial_inputs(np.float32, quick=True)
    few = [cases["rows_of_3"], cases["one_element_rows"]]

    def raises(*args):
        raise RuntimeError("boom")

    results = testing.compare(raises, few)
    assert results["rows_of_3"].error == "RuntimeError: boom"
    assert results["rows_of_3"].max_ulp == np.inf
    results = testing.compare(lambda x, *rest: x[..., :1], few)
    assert "shape" in results["rows_of_3"].error

    def missing(*args):
        raise ImportError("no such package")

    with pytest.raises(ImportError):
        testing.compare(missing, few)


def test_compare_defaults_to_the_adversarial_cases(monkeypatch):
    seen = []
    real = testing.adversarial_inputs
    monkeypatch.setattr(
        testing, "adversarial_inputs", lambda dtype=np.float32: seen.append(dtype) or {}
    )
    assert testing.compare(testing.lnrs_fn, dtype=np.float64) == {}
    assert seen == [np.float64]
    monkeypatch.setattr(testing, "adversarial_inputs", real)


def test_case_reference_is_computed_once(quick32):
    case = quick32["rows_of_4"]
    assert case.reference() is case.reference()


# --------------------------------------------------------------------------------------
# peers
# --------------------------------------------------------------------------------------


def test_peer_fn_reports_absent_packages(monkeypatch):
    assert testing.peer_fn("lnrs") is testing.lnrs_fn
    assert testing.peer_fn("numpy") is testing.numpy_fn
    monkeypatch.setitem(testing.PEERS, "torch", (testing.torch_fn, ("no_such_module_lnrs",)))
    assert testing.peer_fn("torch") is None
    with pytest.raises(ValueError, match="unknown"):
        testing.peer_fn("jax")


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_torch_fn_without_torch_raises_a_clear_import_error():
    assert testing.peer_fn("torch") is None
    with pytest.raises(ImportError, match="pip install torch"):
        testing.torch_fn(np.zeros((1, 2), np.float32), (2,), None, None, 1e-5)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_torch_fn_runs():  # pragma: no cover - where torch is installed
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    y = testing.torch_fn(x, (8,), None, None, 1e-5)
    assert testing.ulp_error(y, testing.reference_layer_norm(x, 8)[0]) < 100


@pytest.mark.parametrize("dtype", [F32, F64])
def test_onnxruntime_fn(dtype):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 8)).astype(dtype)
    w, b = rng.standard_normal((4, 8)).astype(dtype), rng.standard_normal((4, 8)).astype(dtype)
    for weight, bias in [(None, None), (w, b), (w, None)]:
        y = testing.onnxruntime_fn(x, (4, 8), weight, bias, 1e-5)
        assert y.dtype == dtype and y.shape == x.shape
        ref = testing.reference_layer_norm(x, (4, 8), weight, bias)[0]
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_numpy_fn_is_naive_but_correct_on_easy_data():
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    ref = testing.reference_layer_norm(x, 64)[0]
    assert testing.numpy_fn(x, (64,), None, None, 1e-5).dtype == np.float32
    assert testing.ulp_error(testing.numpy_fn(x, (64,), None, None, 1e-5), ref) < 64
