"""`python -m lnrs check` (lnrs._check): the table, absent peers, and the exit status."""

from __future__ import annotations

import importlib.util
import io
import math
import re
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from certificate import certify, largest, value_table
from lnrs import _check, testing

RUN_CHECK = "import sys; from lnrs._check import main; sys.exit(main(sys.argv[1:]))"


def check(*argv, **implementations):
    out = io.StringIO()
    status = _check.main(list(argv), out=out, **implementations)
    return status, out.getvalue()


def test_quick_float32_check_passes_and_prints_every_case():
    status, text = check("--quick", "--against", "numpy")
    names = testing.adversarial_inputs(np.float32, quick=True)
    assert status == 0, text
    for name in names:
        assert f"\n{name} " in text
    assert "lnrs float32 layer_norm: goal met on all" in text
    assert "lnrs float32 rms_norm: goal met on all" in text
    assert "lnrs float32 fused: bit for bit on all" in text
    assert "numpy: max" in text
    assert text.rstrip().splitlines()[-1].startswith("lnrs met its goal")


def test_absent_peers_are_reported_not_fatal(monkeypatch):
    monkeypatch.setitem(
        testing.PEERS, "onnxruntime", (testing.onnxruntime_fn, ("no_such_module_lnrs",))
    )
    monkeypatch.setitem(testing.PEERS, "torch", (testing.torch_fn, ("no_such_module_lnrs",)))
    status, text = check("--quick", "--case", "offset_1e3", "--ops", "layer_norm", "rms_norm")
    assert status == 0, text
    assert "onnxruntime: absent" in text and "torch: absent" in text
    header = next(line for line in text.splitlines() if line.startswith("case"))
    assert "numpy" in header and "torch" not in header and "onnxruntime" not in header


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_torch_is_absent_here():
    status, text = check("--quick", "--case", "rows_of_4", "--against", "torch")
    assert status == 0
    assert "torch: absent (pip install torch)" in text


def test_installed_onnxruntime_gets_a_column():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    status, text = check("--quick", "--case", "offset_1e4", "--against", "onnxruntime")
    assert status == 0, text
    header = next(line for line in text.splitlines() if line.startswith("case"))
    assert header.split()[-1] == "onnxruntime"
    row = next(line for line in text.splitlines() if line.startswith("offset_1e4 "))
    assert float(row.split()[-1]) > 100  # ONNX Runtime loses ulps on offset data


def naive_forward(x, normalized_shape, weight, bias, eps):
    y = testing.numpy_fn(x, normalized_shape, weight, bias, eps)
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    mean = x.mean(axis=axes, dtype=x.dtype)
    rstd = 1 / np.sqrt(x.var(axis=axes, dtype=x.dtype) + x.dtype.type(eps))
    return y, mean, rstd


def test_a_broken_implementation_fails_the_check():
    status, text = check("--quick", "--against", forward=naive_forward)
    assert status == 1
    assert "lnrs float32 layer_norm: MISSED its goal" in text
    assert "lnrs float32 rms_norm: goal met" in text  # the other tables are lnrs's own
    assert "offset_1e4: " in text.split("MISSED", 1)[1]
    row = next(line for line in text.splitlines() if line.startswith("offset_1e4 "))
    assert "*" in row


def test_leaking_nan_into_other_rows_fails_the_check():
    import lnrs

    def leaky(x, normalized_shape, weight, bias, eps):
        y, mean, rstd = lnrs.layer_norm_forward(x, normalized_shape, weight, bias, eps)
        if not np.isfinite(x).all():
            y = y + np.nan  # every row
        return y, mean, rstd

    status, text = check("--quick", "--case", "nonfinite", "--case", "offset_1e3", forward=leaky)
    assert status == 1
    row = next(line for line in text.splitlines() if line.startswith("nonfinite_rows"))
    assert "inf!*" in row


def test_a_constant_row_off_by_one_ulp_fails():
    import lnrs

    def nudged(x, normalized_shape, weight, bias, eps):
        y, mean, rstd = lnrs.layer_norm_forward(x, normalized_shape, weight, bias, eps)
        return np.nextafter(y, np.inf).astype(y.dtype), mean, rstd

    status, text = check("--quick", "--case", "constant_rows", "--against", forward=nudged)
    assert status == 1 and "constant_rows: 1 ulp (goal 0)" in text


def test_bad_stats_fail_and_a_crash_is_a_miss():
    import lnrs

    def bad_mean(x, normalized_shape, weight, bias, eps):
        y, mean, rstd = lnrs.layer_norm_forward(x, normalized_shape, weight, bias, eps)
        return y, mean * np.float32(1 + 2**-20), rstd

    status, text = check("--quick", "--case", "offset_1e3", "--against", forward=bad_mean)
    assert status == 1 and "mean/rstd" in text.split("MISSED", 1)[1]

    def crash(*args):
        raise RuntimeError("kernel exploded")

    status, text = check("--quick", "--case", "rows_of_3", "--against", forward=crash)
    assert status == 1 and "RuntimeError: kernel exploded" in text


def test_cells_print_sub_ulp_errors_readably():
    cells = [_check._cell(v) for v in (0.0, 2.28e-305, 0.004, 0.01, 0.5, 1.0, 99.5, 1e16)]
    assert cells == ["0", "<0.01", "<0.01", "0.01", "0.5", "1", "99.5", "1e+16"]
    assert _check._cell(1e-300, "*") == "<0.01*"
    assert [_check._cell(v) for v in (math.inf, math.nan)] == ["inf", "nan"]


def off_by_a_subnormal(forward):
    """`forward` with its zero outputs replaced by the smallest subnormal."""

    def nudged(*args):
        y, *stats = forward(*args)
        tiny = np.nextafter(y.dtype.type(0), y.dtype.type(1))
        return (np.where(y == 0, tiny, y).astype(y.dtype), *stats)

    return nudged


def test_an_error_of_one_subnormal_prints_readably_and_keeps_the_verdict():
    import lnrs

    argv = ["--quick", "--dtype", "float64", "--case", "constant_rows", "--against"]
    # RMSNorm's constant row of zeros: y = 0 exactly; one subnormal off is within the goal.
    forward = off_by_a_subnormal(lnrs.rms_norm_forward)
    status, text = check(*argv, "--ops", "rms_norm", rms_forward=forward)
    row = next(line for line in text.splitlines() if line.startswith("constant_rows "))
    assert status == 0, text
    assert "<0.01" in row.split()
    assert "goal met on all 1 cases (max <0.01 ulp," in text
    assert not re.search(r"\de-\d", text), text
    # LayerNorm's constant rows must give the bias exactly: a miss, reported readably.
    zeros = np.zeros((2, 8))
    case = testing.Case("zero_bias", zeros, (8,), None, zeros[0], tags=frozenset({"exact"}))
    out = io.StringIO()
    forward = off_by_a_subnormal(lnrs.layer_norm_forward)
    misses = _check._norm_table("layer_norm", zeros.dtype, {"zero_bias": case}, {}, forward, out)
    assert misses == ["zero_bias: <0.01 ulp (goal 0)"], out.getvalue()
    assert "<0.01*" in out.getvalue()


def test_float64_table_runs():
    status, text = check("--quick", "--dtype", "float64", "--against", "numpy")
    assert status in (0, 1)
    for name in testing.adversarial_inputs(np.float64, quick=True):
        assert f"\n{name} " in text
    met = [f"lnrs float64 {t}: goal met" in text for t in ("layer_norm", "rms_norm")]
    met.append("lnrs float64 fused: bit for bit" in text)
    assert all(met) == (status == 0)
    assert ("MISSED" in text) == (status == 1)


def test_the_command_line_end_to_end():
    proc = subprocess.run(
        [sys.executable, "-c", RUN_CHECK, "--quick", "--case", "offset_1e6", "--against", "numpy"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "offset_1e6_affine" in proc.stdout and "lnrs met its goal" in proc.stdout


def test_help_and_bad_arguments():
    with pytest.raises(SystemExit) as exc:
        _check.main(["--help"], out=io.StringIO())
    assert exc.value.code == 0
    with pytest.raises(SystemExit) as exc:
        _check.main(["--against", "jax"])
    assert exc.value.code == 2


def test_add_arguments_on_a_subparser():
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lnrs")
    sub = parser.add_subparsers(dest="command")
    _check.add_arguments(sub.add_parser("check"))
    args = parser.parse_args(["check", "--dtype", "float64", "--against", "numpy", "--quick"])
    assert args.dtype == ["float64"] and args.against == ["numpy"] and args.quick
    args = parser.parse_args(["check"])
    assert args.dtype == ["float32"] and set(args.against) == set(testing.PEERS)
    out = io.StringIO()
    args = parser.parse_args(["check", "--quick", "--case", "rows_of_4", "--against"])
    assert _check.run(args, out=out) == 0


# --------------------------------------------------------------------------------------
# The RMSNorm, fused and half-type tables
# --------------------------------------------------------------------------------------

HALF = ["float16", "bfloat16"]


def half_dtype(name):
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(name)


def summary(text, label):
    return next(line for line in text.splitlines() if line.startswith(f"lnrs {label}:"))


@pytest.mark.parametrize("dtype", HALF)
def test_quick_half_check_passes(dtype):
    half_dtype(dtype)
    status, text = check("--quick", "--dtype", dtype, "--against", "numpy", "onnxruntime")
    assert status == 0, text
    for name in testing.adversarial_inputs_half(half_dtype(dtype), quick=True):
        assert text.count(f"\n{name} ") == 3  # a row in each table
    assert "goal <= 1;" in text
    assert "goal met on all" in summary(text, f"{dtype} layer_norm")
    assert "goal met on all" in summary(text, f"{dtype} rms_norm")
    assert "bit for bit on all" in summary(text, f"{dtype} fused")
    if dtype == "bfloat16" and importlib.util.find_spec("onnxruntime"):
        assert "onnxruntime: n/a for bfloat16" in text


def test_ops_choose_the_tables():
    status, text = check("--quick", "--case", "rows_of_4", "--against", "--ops", "fused")
    assert status == 0, text
    assert "fused: bit for bit" in text and "layer_norm:" not in text and "rms_norm:" not in text
    with pytest.raises(SystemExit) as exc:
        _check.main(["--ops", "backward"], out=io.StringIO())
    assert exc.value.code == 2


def test_rms_table_has_the_peers():
    status, text = check("--quick", "--case", "offset_1e4", "--ops", "rms_norm")
    assert status == 0, text
    header = next(line for line in text.splitlines() if line.startswith("case"))
    assert header.split()[:5] == ["case", "shape", "goal", "lnrs", "rstd"]
    assert "numpy" in header.split()
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        row = next(line for line in text.splitlines() if line.startswith("offset_1e4 "))
        assert row.split()[-1] != "error"  # RMSNormalization (opset 23) ran, or is n/a


def test_a_broken_rms_norm_fails():
    import lnrs

    def sloppy(x, normalized_shape, weight, eps):
        y, rstd = lnrs.rms_norm_forward(x, normalized_shape, weight, eps)
        y = (y.astype(np.float64) * (1 + 2**-20)).astype(y.dtype)  # 8 to 16 float32 ulps
        return y, rstd

    status, text = check(
        "--quick", "--case", "offset_1e3", "--against", "--ops", "rms_norm", rms_forward=sloppy
    )
    assert status == 1
    assert "lnrs float32 rms_norm: MISSED its goal on 1 of 1 cases: offset_1e3: 16 ulp" in text

    def bad_rstd(x, normalized_shape, weight, eps):
        y, rstd = lnrs.rms_norm_forward(x, normalized_shape, weight, eps)
        return y, rstd * np.float32(1 + 2**-20)

    status, text = check(
        "--quick", "--case", "rows_of_4", "--against", "--ops", "rms_norm", rms_forward=bad_rstd
    )
    assert status == 1
    assert re.search(r"rows_of_4: 0 ulp \(goal 2\), rstd \d+ ulp \(goal 1\)", text), text


def test_half_goal_is_one_ulp():
    import lnrs

    def off_by_two(x, normalized_shape, weight, bias, eps):
        y, mean, rstd = lnrs.layer_norm_forward(x, normalized_shape, weight, bias, eps)
        bits = y.view(np.uint16).copy()
        bits[0, 0] += 2  # two ulps of float16 on one element
        return bits.view(np.float16), mean, rstd

    args = ("--quick", "--dtype", "float16", "--case", "offset_1e2", "--against")
    status, text = check(*args, "--ops", "layer_norm", forward=off_by_two)
    assert status == 1 and "offset_1e2: 2 ulp (goal 1)" in text


def test_broken_fused_ops_fail():
    import lnrs

    def sum_off(x, residual, normalized_shape, weight, bias, eps, **outputs):
        y, s = lnrs.add_layer_norm(x, residual, normalized_shape, weight, bias, eps, **outputs)
        s.flat[3] = np.nextafter(s.flat[3], np.inf)
        return y, s

    def not_in_place(x, residual, normalized_shape, weight, eps, **outputs):
        return lnrs.add_rms_norm(x, residual, normalized_shape, weight, eps)

    args = ("--quick", "--case", "offset_1e3", "--against", "--ops", "fused")
    status, text = check(*args, add_layer_norm=sum_off, add_rms_norm=not_in_place)
    assert status == 1
    row = next(line for line in text.splitlines() if line.startswith("offset_1e3 ")).split()
    # the in-place column compares with the fresh call: the same wrong s is consistent
    assert row[2:] == ["1*", "=", "=", "=", "=", "1*"]
    misses = text.split("MISSED", 1)[1]
    assert "offset_1e3 add_layer_norm: s differs in 1 elements" in misses
    assert "add_rms_norm: in place: the outputs are not out and sum_out" in misses

    def y_off(x, residual, normalized_shape, weight, eps, **outputs):
        y, s = lnrs.add_rms_norm(x, residual, normalized_shape, weight, eps, **outputs)
        y.flat[7] = np.nextafter(y.flat[7], np.float32(np.inf))
        return y, s

    status, text = check(*args, add_rms_norm=y_off)
    assert status == 1 and "add_rms_norm: y differs in 1 elements" in text


def test_fused_residual_and_bit_differences():
    case = testing.adversarial_inputs(np.float32, quick=True)["rows_of_3"]
    r = _check.residual_for(case, 0)
    assert r.dtype == case.x.dtype and r.shape == case.x.shape
    np.testing.assert_array_equal(r, _check.residual_for(case, 0))
    assert not np.array_equal(r, _check.residual_for(case, 1))
    a = np.array([1.0, np.nan, -0.0, np.inf], np.float32)
    assert _check.bit_differences(a, a.copy()) == 0
    assert _check.bit_differences(a, np.array([1.0, np.nan, 0.0, np.inf], np.float32)) == 1
    assert _check.bit_differences(a, a.astype(np.float64)) == 4


def test_bfloat16_without_ml_dtypes_is_skipped(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    status, text = check("--quick", "--dtype", "bfloat16", "--case", "rows_of_4", "--against")
    assert status == 0
    assert "bfloat16: skipped, ml_dtypes is needed" in text


# --------------------------------------------------------------------------------------
# lnrs.testing's additions: RMSNorm reference, half-type rounding, bfloat16 ulps
# --------------------------------------------------------------------------------------
# The certificate of correct rounding: tests/certificate.py.


def all_dtypes():
    out = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)]
    if importlib.util.find_spec("ml_dtypes"):
        import ml_dtypes

        out.append(np.dtype(ml_dtypes.bfloat16))
    return out


def random_rows(rng, dtype, half):
    """A few small rows of awkward magnitudes in `dtype`, finite."""
    rows, n = int(rng.integers(1, 4)), int(rng.integers(1, 8))
    offset = rng.choice([0.0, 1.0, 1e2, 3e3, -7e3] if half else [0.0, 1.0, 1e3, 1e6, -1e20])
    scale = rng.choice([1.0, 1e-2, 2.0**-20, 50.0] if half else [1.0, 1e-3, 1e-20, 1e20])
    with np.errstate(over="ignore"):
        x = (offset + scale * rng.standard_normal((rows, n))).astype(dtype)
    return np.where(np.isfinite(x.astype(np.float64)), x, 1).astype(dtype)


@pytest.mark.parametrize("dtype", all_dtypes(), ids=str)
def test_reference_rms_norm_is_correctly_rounded(dtype):
    rng = np.random.default_rng(11)
    half = dtype.itemsize == 2
    stat = np.dtype(np.float32) if half else dtype
    for trial in range(60):
        x = random_rows(rng, dtype, half)
        n = x.shape[1]
        wdt = [dtype, np.float32][trial % 2] if half else dtype
        w = rng.standard_normal(n).astype(wdt) if trial % 3 else None
        eps = [1e-5, 0.25, None, 0.0][trial % 4]
        y, rstd = testing.reference_rms_norm(x, n, w, eps)
        assert y.dtype == dtype and y.shape == x.shape
        assert rstd.dtype == stat and rstd.shape == x.shape[:1]
        e = float(np.finfo(dtype).eps) if dtype.name != "bfloat16" else 2.0**-7
        feps = Fraction(e if eps is None else eps)
        for i, row in enumerate(x):
            xs = [Fraction(float(v)) for v in row.astype(np.float64)]
            veps = sum(v * v for v in xs) / n + feps
            if veps == 0:
                assert rstd[i] == np.inf and np.isnan(y[i].astype(np.float64)).all()
                continue
            certify(rstd[i], stat, Fraction(1), inv_v=1 / veps)
            for j, v in enumerate(xs):
                k = v * (Fraction(float(w[j])) if w is not None else 1)
                certify(y[i, j], dtype, k, Fraction(0), 1 / veps)


@pytest.mark.parametrize("name", HALF)
def test_reference_layer_norm_half_is_correctly_rounded(name):
    dtype = half_dtype(name)
    rng = np.random.default_rng(12)
    for trial in range(60):
        x = random_rows(rng, dtype, True)
        n = x.shape[1]
        wdt = [dtype, np.float32][trial % 2]
        w = rng.standard_normal(n).astype(wdt) if trial % 3 else None
        b = rng.standard_normal(n).astype(wdt) if trial % 4 else None
        eps = [1e-5, 0.25, 0.0][trial % 3]
        y, mean, rstd = testing.reference_layer_norm_half(x, n, w, b, eps)
        assert y.dtype == dtype and mean.dtype == rstd.dtype == np.float32
        for i, row in enumerate(x):
            xs = [Fraction(float(v)) for v in row.astype(np.float64)]
            mu = sum(xs) / n
            veps = sum((v - mu) ** 2 for v in xs) / n + Fraction(eps)
            certify(mean[i], np.float32, mu)
            if veps == 0:
                assert rstd[i] == np.inf
                continue
            certify(rstd[i], np.float32, Fraction(1), inv_v=1 / veps)
            for j, v in enumerate(xs):
                k = (v - mu) * (Fraction(float(w[j])) if w is not None else 1)
                bj = Fraction(float(b[j])) if b is not None else Fraction(0)
                certify(y[i, j], dtype, k, bj, 1 / veps)


@pytest.mark.parametrize("name", HALF)
def test_half_rounding_of_ratios_and_of_float64(name):
    """The integer rounding and the float64 shortcut, on random ratios and on the
    hard spots: exact midpoints (ties to even), and values so close to a midpoint
    that float64 lands on it (the shortcut must then redo the rounding exactly)."""
    dtype = half_dtype(name)
    values, bits = value_table(dtype)
    rng = np.random.default_rng(13)
    nums, dens = [], []
    for i in rng.integers(0, values.size - 1, 200):
        a, b = Fraction(float(values[i])), Fraction(float(values[i + 1]))
        m = (a + b) / 2
        for f in (m, m + m / 2**70, m - m / 2**70, a + (b - a) / 3, m + (b - a) / 2**60):
            nums.append(f.numerator)
            dens.append(f.denominator)
    for _ in range(200):
        nums.append(int(rng.integers(-(2**62), 2**62)) << int(rng.integers(0, 100)))
        dens.append(int(rng.integers(1, 2**62)) << int(rng.integers(0, 200)))
    for num, den in zip(nums, dens):
        certify(testing._round_ratio(num, den, dtype), dtype, Fraction(num, den))
    num, den = np.array(nums, dtype=object), np.array(dens, dtype=object)
    got = testing._round_quotients(num, den, dtype)
    assert got.dtype == dtype
    for g, a, d in zip(got, nums, dens):
        certify(g, dtype, Fraction(a, d))
    # float64 inputs, against the table: nearest, ties to the even bit pattern
    midpoints = (values[:-1] + values[1:]) / 2
    y, tie = testing._round_float64(midpoints, dtype)
    assert tie.all()
    got = y.astype(np.float64)
    lower_even = bits[:-1] % 2 == 0
    np.testing.assert_array_equal(got, np.where(lower_even, values[:-1], values[1:]))
    q = np.concatenate(
        [
            rng.standard_normal(1500) * 10.0 ** rng.integers(-45, 40, 1500),
            rng.choice(midpoints, 200),
            [0.0, -0.0, np.inf, -np.inf, np.nan, 1e300, -1e300],
        ]
    )
    y, tie = testing._round_float64(q, dtype)
    assert y.dtype == dtype
    top, overflow = largest(dtype)
    for v, r, t in zip(q, y.astype(np.float64), tie):
        if not np.isfinite(v):
            assert (np.isnan(v) and np.isnan(r)) or v == r
            continue
        if abs(Fraction(v)) >= overflow:
            assert r == math.copysign(math.inf, v)
            continue
        certify(r, dtype, Fraction(v))
        i = int(np.searchsorted(values, v))
        at_midpoint = 0 < i < values.size and v == (values[i - 1] + values[i]) / 2
        assert bool(t) == at_midpoint, v


def test_ulp_error_in_bfloat16():
    bf16 = half_dtype("bfloat16")
    y = np.array([1.0, 3.0, -7.5, 2.0**-20, 1e38]).astype(bf16)
    ref = y.astype(np.float64)
    assert testing.ulp_error(y, ref) == 0
    assert testing.ulp_error(y, np.array([1.0, 3.0, -7.5, 2.0**-20, 1e38])) < 0.5
    # one step of the bfloat16 spacing (2**-7 relative at 1.0) on each element
    bumped = (y.view(np.uint16) + 1).view(bf16)
    err = testing.ulp_error(bumped, ref.astype(bf16), per_row=False)
    assert err == 1.0
    # 2**-20 is below the floor 2**-10: measured in the spacing at 2**-10 (2**-17)
    small = np.array([2.0**-20 + 2.0**-17], dtype=np.float64).astype(bf16)
    assert testing.ulp_error(small, np.array([2.0**-20])) == pytest.approx(1.0, rel=0.01)
    assert testing.ulp_error(small, np.array([2.0**-20]), floor=0) > 100
    nan_inf = np.array([np.nan, np.inf, 1.0]).astype(bf16)
    assert testing.ulp_error(nan_inf, np.array([np.nan, np.inf, 1.0])) == 0
    assert testing.ulp_error(nan_inf, np.array([1.0, np.inf, 1.0])) == np.inf
    rows = np.ones((2, 3)).astype(bf16)
    rows[1, 2] = (rows[1, 2:3].view(np.uint16) + 2).view(bf16)[0]
    np.testing.assert_array_equal(testing.ulp_error(rows, np.ones((2, 3)), per_row=True), [0, 2])


@pytest.mark.parametrize("name", HALF)
def test_adversarial_inputs_half(name):
    dtype = half_dtype(name)
    a = testing.adversarial_inputs_half(dtype, seed=1, quick=True)
    b = testing.adversarial_inputs_half(dtype, seed=1, quick=True)
    full_names = list(testing.adversarial_inputs_half(dtype, seed=1, quick=False))
    assert list(a) == list(b) == full_names
    assert sum(case.x.size for case in a.values()) < 100_000
    for case_name, case in a.items():
        np.testing.assert_array_equal(case.x.view(np.uint16), b[case_name].x.view(np.uint16))
        assert case.x.dtype == dtype and case.x.flags.c_contiguous
        for p in (case.weight, case.bias):
            assert p is None or p.dtype in (dtype, np.float32)
        assert ("weight_float32" in case.tags) == (
            case.weight is not None and case.weight.dtype == np.float32
        )
        finite = np.isfinite(case.x.astype(np.float64))
        assert finite.all() == ("nonfinite" not in case.tags), case_name
    for needed in ("constant_rows", "nonfinite_rows", "output_overflow", "params_float32"):
        assert needed in a
    assert np.isinf(a["output_overflow"].reference()[0].astype(np.float64)).any()
    tiny = np.abs(a["output_subnormal"].reference()[0].astype(np.float64))
    assert ((tiny > 0) & (tiny < 2.0 ** testing._format_any(dtype)[1])).mean() > 0.9
    assert testing.case_floor(a["output_subnormal"]) == 0
    with pytest.raises(TypeError):
        testing.adversarial_inputs_half(np.float32)
    # the half alias is adversarial_inputs itself for the half types
    same = testing.adversarial_inputs(dtype, seed=1, quick=True)
    assert list(same) == list(a)
    for case_name, case in same.items():
        np.testing.assert_array_equal(case.x.view(np.uint16), a[case_name].x.view(np.uint16))
        assert case.tags == a[case_name].tags


def test_reference_rms_norm_conventions():
    x = np.array(
        [[1.0, 2.0, np.inf, 3.0], [0.0, 0.0, 0.0, 0.0], [1.0, np.nan, 2.0, 3.0], [3.0, 4.0, 0, 0]],
        np.float32,
    )
    y, rstd = testing.reference_rms_norm(x, 4, eps=0.0)
    assert rstd.dtype == np.float32
    np.testing.assert_array_equal(rstd, [0.0, np.inf, np.nan, np.float32(0.4)])
    np.testing.assert_array_equal(y[0], [0.0, 0.0, np.nan, 0.0])  # IEEE: x·0
    assert np.isnan(y[1]).all() and np.isnan(y[2]).all()
    np.testing.assert_array_equal(y[3], np.float32([1.2, 1.6, 0, 0]))
    # default eps: the dtype's machine epsilon, as lnrs.rms_norm
    z = np.zeros((1, 2), np.float16)
    np.testing.assert_array_equal(testing.reference_rms_norm(z, 2)[1], [np.float32(2.0**5)])
    w = np.array([np.inf, 1.0, 1.0, np.nan], np.float32)
    yw, _ = testing.reference_rms_norm(x[3:], 4, w, eps=0.0)
    np.testing.assert_array_equal(yw, np.float32([[np.inf, 1.6, 0, np.nan]]))
    with pytest.raises(TypeError, match="float32, float64, float16 or bfloat16"):
        testing.reference_rms_norm(np.zeros((2, 2), np.int32), 2)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        testing.reference_layer_norm_half(np.zeros((2, 2), np.float32), 2)
    with pytest.raises(ValueError):
        testing.reference_rms_norm(np.zeros((2, 2), np.float32), 3)


def test_lnrs_matches_the_rms_reference_and_compare_takes_rms():
    import lnrs

    cases = testing.adversarial_inputs(np.float32, quick=True)
    case = cases["squares_overflow_1e30"]
    y, rstd = lnrs.rms_norm_forward(*case.rms_args)
    ref_y, ref_rstd = case.rms_reference()
    assert case.rms_reference() is case.rms_reference()  # computed once
    assert testing.ulp_error(y, ref_y) <= testing.goal_ulp(np.float32)
    assert testing.ulp_error(rstd, ref_rstd, floor=0) <= 1
    results = testing.compare(testing.lnrs_rms_fn, [case], norm="rms")
    assert results[case.name].max_ulp <= 2 and results[case.name].error is None
    naive = testing.compare(testing.numpy_rms_fn, [case], norm="rms")[case.name]
    assert naive.max_ulp > 1e6  # its squares overflow float32
    assert testing.peer_fn("numpy", "rms") is testing.numpy_rms_fn
    assert testing.peer_fn("lnrs", "rms") is testing.lnrs_rms_fn
    with pytest.raises(ValueError):
        testing.peer_fn("numpy", "group")
    with pytest.raises(ValueError):
        testing.compare(testing.lnrs_fn, [case], norm="batch")
    assert testing.goal_ulp(np.float16) == 1 and testing.goal_ulp(np.float64) == 16


def test_unsupported_is_told_from_an_error():
    """A peer raising NotSupported is "n/a" in the table, any other exception "error"."""
    case = testing.adversarial_inputs(np.float32, quick=True)["offset_1e3"]

    def lacks(*args):
        raise testing.NotSupported("no such op here")

    def fails(*args):
        raise ValueError("bad")

    unsupported = testing.compare(lacks, [case])[case.name]
    failed = testing.compare(fails, [case])[case.name]
    assert unsupported.unsupported and unsupported.error.startswith("NotSupported")
    assert not failed.unsupported and failed.error.startswith("ValueError")
    assert (_check._peer_cell(unsupported), _check._peer_cell(failed)) == ("n/a", "error")


def test_onnxruntime_adapters_on_half_types():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    case = testing.adversarial_inputs_half(np.float16, quick=True)["offset_1e2"]
    assert testing.compare(testing.onnxruntime_fn, [case])[case.name].max_ulp <= 4
    result = testing.compare(testing.onnxruntime_rms_fn, [case], norm="rms")[case.name]
    assert result.error is None or result.unsupported
    bf16 = half_dtype("bfloat16")
    case = testing.adversarial_inputs_half(bf16, quick=True)["offset_1e2"]
    result = testing.compare(testing.onnxruntime_fn, [case])[case.name]
    assert result.unsupported and result.error.startswith("NotSupported")
