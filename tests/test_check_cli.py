"""`python -m lnrs check` (lnrs._check): the table, absent peers, and the exit status."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys

import numpy as np
import pytest
from lnrs import _check, testing

RUN_CHECK = "import sys; from lnrs._check import main; sys.exit(main(sys.argv[1:]))"


def check(*argv, forward=None):
    out = io.StringIO()
    status = _check.main(list(argv), forward=forward, out=out)
    return status, out.getvalue()


def test_quick_float32_check_passes_and_prints_every_case():
    status, text = check("--quick", "--against", "numpy")
    names = testing.adversarial_inputs(np.float32, quick=True)
    assert status == 0, text
    for name in names:
        assert f"\n{name} " in text
    assert "lnrs float32: goal met on all" in text
    assert "numpy: max" in text
    assert text.rstrip().splitlines()[-1].startswith("lnrs met its goal")


def test_absent_peers_are_reported_not_fatal(monkeypatch):
    monkeypatch.setitem(
        testing.PEERS, "onnxruntime", (testing.onnxruntime_fn, ("no_such_module_lnrs",))
    )
    monkeypatch.setitem(testing.PEERS, "torch", (testing.torch_fn, ("no_such_module_lnrs",)))
    status, text = check("--quick", "--case", "offset_1e3")
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
    assert "lnrs float32: MISSED its goal" in text
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


def test_float64_table_runs():
    status, text = check("--quick", "--dtype", "float64", "--against", "numpy")
    assert status in (0, 1)
    for name in testing.adversarial_inputs(np.float64, quick=True):
        assert f"\n{name} " in text
    assert ("lnrs float64: goal met" in text) == (status == 0)
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
