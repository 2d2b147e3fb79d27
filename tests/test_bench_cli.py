"""`python -m lnrs bench` on tiny shapes: every column in every row, sane numbers,
missing peers reported as absent, bad arguments refused with status 2.

These check the benchmark's plumbing, not lnrs's speed: `--quick` timings on
tiny shapes say nothing about the targets.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import types

import lnrs
import numpy as np
import pytest
from lnrs import _bench, _lnrs
from lnrs.__main__ import main
from reference import central_differences

SHAPES = [(2, 8), (3, 16)]
STATUSES = {"ok", "absent", "n/a", "error", "mismatch"}


BACKWARD_OPS = ("backward", "rms_backward")
# Arrays of x's size each op reads or writes (the byte count): forward x, y;
# backward x, dy, dx; fused add x, residual, y, s.
ARRAYS = {
    "forward_out": 2,
    "forward": 2,
    "backward": 3,
    "rms_forward_out": 2,
    "rms_forward": 2,
    "rms_backward": 3,
    "add_forward_out": 4,
    "add_rms_forward_out": 4,
}
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}


def check_rows(rows, shapes=SHAPES, ops=_bench.OPS):
    assert [(r["shape"], r["op"]) for r in rows] == [
        (_bench.shape_name(s), op) for s in shapes for op in ops
    ]
    for row in rows:
        assert list(row) == _bench.columns()
        for key in ("lnrs_s", "triad_s", "ufunc_s", "limit_s", "lnrs_gbps", "triad_gbps"):
            assert row[key] > 0 and math.isfinite(row[key]), (key, row)
        assert row["fraction"] > 0 and math.isfinite(row["fraction"]), row
        arrays = ARRAYS[row["op"]]
        assert _bench.ARRAYS_MOVED[row["op"]] == arrays
        x_bytes = row["rows"] * row["cols"] * ITEMSIZE[row["dtype"]]
        floor = row["ufunc_s"] if x_bytes <= _bench.FLOOR_MAX_BYTES else 0
        assert row["limit_s"] == pytest.approx(max(floor, row["triad_s"] * arrays / 2))
        assert row["bytes"] == arrays * x_bytes
        assert row["triad_gbps"] == pytest.approx(2 * x_bytes / row["triad_s"] / 1e9)
        half = row["dtype"] in ("float16", "bfloat16")
        assert row["triad_dtype"] == ("float32" if half else row["dtype"])
        if row["op"] == "forward":
            assert row["copy_s"] > 0 and row["lnrs_over_copy"] > 0
        else:
            assert row["copy_s"] is None and row["lnrs_over_copy"] is None
        for peer in _bench.PEERS:
            status = row[f"{peer}_status"]
            assert status in STATUSES, (peer, status)
            if status in ("ok", "mismatch"):
                assert row[f"{peer}_s"] > 0
                assert row[f"{peer}_speedup"] == pytest.approx(row[f"{peer}_s"] / row["lnrs_s"])
            else:
                assert row[f"{peer}_s"] is None and row[f"{peer}_speedup"] is None
        assert row["numpy_status"] in ("ok", "mismatch")  # NumPy is always there
        if row["op"] in BACKWARD_OPS:
            assert row["onnxruntime_status"] in ("n/a", "absent")


def test_run_bench_in_process(restore_threads):
    notes = []
    rows = _bench.run_bench(SHAPES, "float32", 1, _bench.OPS, quick=True, notes=notes)
    check_rows(rows)
    assert all(r["threads"] == 1 for r in rows)
    assert lnrs.get_num_threads() == restore_threads  # put back afterwards
    for row in rows:
        if row["op"] != "backward":  # ONNX Runtime, when there, computes what lnrs does
            assert row["numpy_status"] == "ok"
            assert row["onnxruntime_status"] in ("ok", "absent")
    table = _bench.format_table(rows)
    assert len(table.splitlines()) == 2 + len(rows)
    assert "2x8" in table and "backward" in table
    for note in notes:
        assert set(note) == {"peer", "shape", "op", "status", "reason"}


def test_missing_peer_is_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    peers, absent = _bench.load_peers()
    assert "onnxruntime" not in peers and "numpy" in peers
    assert {"peer": "onnxruntime"}.items() <= next(
        a for a in absent if a["peer"] == "onnxruntime"
    ).items()
    rows = _bench.run_bench([(2, 8)], ops=["forward"], quick=True, peers=peers)
    assert rows[0]["onnxruntime_s"] is None
    assert rows[0]["onnxruntime_status"] == "absent"
    report = _bench.format_report(_bench.machine_facts(), rows, absent, [])
    assert "absent: onnxruntime" in report


def test_ufunc_floor_only_for_tiny_inputs():
    """Past the caches one-threaded NumPy is no floor: the limit is the triad's alone."""
    (row,) = _bench.run_bench([(256, 512)], ops=["backward"], quick=True, peers=[])
    assert row["bytes"] == 3 * 256 * 512 * 4 > _bench.FLOOR_MAX_BYTES
    assert row["limit_by"] == "triad"
    assert row["limit_s"] == pytest.approx(1.5 * row["triad_s"])
    assert all(row[f"{p}_status"] == "absent" for p in _bench.PEERS)


def test_cpu_accounting():
    before = _bench.cpu_seconds()
    if before is None:
        pytest.skip("no /proc/stat")
    after = _bench.cpu_seconds()
    assert after[0] >= before[0] and after[1] >= before[1]
    assert _bench.other_cores(before, after, 1.0) >= 0
    assert _bench.other_cores(None, after, 1.0) is None


def test_report_groups_notes():
    rows = _bench.run_bench(SHAPES, ops=["forward", "backward"], quick=True, peers=[])
    notes = [
        {"peer": "onnxruntime", "shape": s, "op": "backward", "status": "n/a", "reason": "why"}
        for s in ("2x8", "3x16")
    ]
    notes.append(
        {"peer": "torch", "shape": "3x16", "op": "forward", "status": "error", "reason": "E"}
    )
    absent = [{"peer": "torch", "reason": "not here"}]
    lines = _bench.format_report(_bench.machine_facts(), rows, absent, notes).splitlines()
    assert "n/a: onnxruntime, backward: why" in lines  # every shape: the op alone
    assert "error: torch, forward at 3x16: E" in lines
    assert "absent: torch (not here)" in lines


def test_numpy_peer_formulas():
    """The NumPy peer against an independent float64 reference and finite differences."""
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((3, 10)), rng.standard_normal((3, 10))
    w, b = rng.standard_normal(10), rng.standard_normal(10)
    eps = 1e-5
    y = _bench.numpy_forward(x, w, b, eps)
    mean, var = x.mean(1), x.var(1)
    rstd = 1 / np.sqrt(var + eps)
    assert np.allclose(y, (x - mean[:, None]) * rstd[:, None] * w + b)

    def loss(x, w, b):
        return float(np.sum(_bench.numpy_forward(x, w, b, eps) * dy))

    dx, dw, db = _bench.numpy_backward(dy, x, mean, rstd, w)
    numeric = (
        central_differences(lambda v: loss(v, w, b), x),
        central_differences(lambda v: loss(x, v, b), w),
        central_differences(lambda v: loss(x, w, v), b),
    )
    for arg, (grad, fd) in enumerate(zip((dx, dw, db), numeric)):
        assert np.allclose(grad, fd, atol=1e-6), arg


def test_check_flags_a_wrong_result():
    case = _bench.Case(2, 8, "float32")
    (y,) = case.expected["forward"]
    assert _bench._check(case, "forward", (y.copy(),)) is None
    assert "differ" in _bench._check(case, "forward", (y + 0.1,))
    assert _bench._check(case, "forward", (y, y)) is not None


class FakeTensor:
    """Just what the PyTorch peer touches, backed by NumPy."""

    def __init__(self, array, inputs=None):
        self.array, self.inputs = array, inputs
        self.dtype = array.dtype

    def requires_grad_(self, flag=True):
        return self

    def detach(self):
        return self

    def numpy(self):
        return self.array

    def __add__(self, other):
        return FakeTensor(self.array + other.array)


def fake_torch(with_rms=True):
    torch = types.ModuleType("torch")
    torch.__version__ = "0.fake"
    torch.threads = 7
    torch.set_num_threads = lambda n: setattr(torch, "threads", n)
    torch.get_num_threads = lambda: torch.threads
    torch.from_numpy = FakeTensor

    def layer_norm(x, normalized_shape, weight, bias, eps):
        assert normalized_shape == x.array.shape[-1:]
        y = _bench.numpy_forward(x.array, weight.array, bias.array, eps)
        return FakeTensor(y, (x, weight, eps))

    def rms_norm(x, normalized_shape, weight, eps):
        assert normalized_shape == x.array.shape[-1:]
        y = _bench.numpy_rms_forward(x.array, weight.array, eps)
        return FakeTensor(y, (x, weight, eps, "rms"))

    def grad(outputs, inputs, grad_outputs, retain_graph=False):
        x, w, eps = outputs.inputs[0].array, outputs.inputs[1].array, outputs.inputs[2]
        assert retain_graph and len(inputs) == (2 if len(outputs.inputs) == 4 else 3)
        if len(outputs.inputs) == 4:
            rstd = (1 / np.sqrt((x * x).mean(-1) + eps)).astype(x.dtype)
            grads = _bench.numpy_rms_backward(grad_outputs.array, x, rstd, w)
        else:
            mean = x.mean(-1)
            rstd = (1 / np.sqrt(x.var(-1) + eps)).astype(x.dtype)
            grads = _bench.numpy_backward(grad_outputs.array, x, mean, rstd, w)
        return tuple(FakeTensor(g) for g in grads)

    functional = types.SimpleNamespace(layer_norm=layer_norm)
    if with_rms:
        functional.rms_norm = rms_norm
    torch.nn = types.SimpleNamespace(functional=functional)
    torch.autograd = types.SimpleNamespace(grad=grad)
    return torch


def test_torch_peer_path_with_a_fake_torch(monkeypatch):
    torch = fake_torch()
    monkeypatch.setitem(sys.modules, "torch", torch)
    peers, _ = _bench.load_peers()
    assert "torch" in peers
    rows = _bench.run_bench([(2, 8)], threads=1, quick=True, peers=["numpy", "torch"])
    check_rows(rows, [(2, 8)])
    for row in rows:
        assert row["torch_s"] > 0
        if row["op"] != "backward":
            assert row["torch_status"] == "ok"
    assert torch.threads == 7  # put back afterwards
    assert _bench.machine_facts()["torch"] == "0.fake"


@pytest.mark.parametrize("with_rms", [True, False])
def test_fake_torch_on_every_op(monkeypatch, with_rms):
    """rms_norm, its backward and the fused add through the PyTorch peer; a torch
    without rms_norm is n/a for the RMS ops, not an error."""
    monkeypatch.setitem(sys.modules, "torch", fake_torch(with_rms))
    rows = _bench.run_bench(
        [(3, 16)], threads=1, ops=_bench.ALL_OPS, quick=True, peers=["numpy", "torch"]
    )
    check_rows(rows, [(3, 16)], _bench.ALL_OPS)
    for row in rows:
        if with_rms or not row["op"].startswith(("rms", "add_rms")):
            assert row["torch_status"] == "ok", row
        else:
            assert row["torch_status"] == "n/a"


def test_cli_json(tmp_path):
    out = tmp_path / "bench.json"
    shapes = ",".join(_bench.shape_name(s) for s in SHAPES)
    cmd = [sys.executable, "-m", "lnrs", "bench", "--quick", "--shapes", shapes, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert set(data) == {"machine", "settings", "columns", "rows", "absent", "notes"}
    for key in ("lnrs", "simd", "threads", "cpu", "numpy", "onnxruntime", "torch"):
        assert key in data["machine"]
    assert data["machine"]["lnrs"] == lnrs.__version__
    assert data["columns"] == _bench.columns()
    check_rows(data["rows"])
    assert all(set(a) == {"peer", "reason"} for a in data["absent"])
    absent = {a["peer"] for a in data["absent"]}
    for row in data["rows"]:
        for peer in absent:
            assert row[f"{peer}_status"] == "absent"
    # The table on stdout: the machine facts, a header and one line per row.
    assert "threads" in proc.stdout and "of limit" in proc.stdout
    assert sum(line.startswith(("2x8 ", "3x16 ")) for line in proc.stdout.splitlines()) == 6
    assert "[6/6]" in proc.stderr  # progress


def test_cli_plot(tmp_path, capsys, restore_threads):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    ops = "forward_out,backward,rms_forward,add_forward_out,add_rms_forward_out"  # two rows
    args = ["bench", "--quick", "--shapes", "2x8,3x16", "--ops", ops]
    assert main([*args, "--threads", "1", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "forward_out" in capsys.readouterr().out


def test_cli_plot_without_matplotlib(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as e:
        main(["bench", "--quick", "--shapes", "2x8", "--plot", str(tmp_path / "x.png")])
    assert e.value.code == 2
    assert "matplotlib" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shapes", "12"], "ROWSxCOLS"),
        (["--shapes", "0x5"], ">= 1"),
        (["--shapes", "4x"], "ROWSxCOLS"),
        (["--shapes", "2x3x4"], "ROWSxCOLS"),
        (["--shapes", ""], "at least one"),
        (["--dtype", "int8"], "invalid choice"),
        (["--ops", "forward,sideways"], "subset"),
        (["--threads", "0"], ">= 1"),
    ],
)
def test_bad_arguments_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage:" in err


def test_bad_dtype_exits_2_from_the_command_line():
    cmd = [sys.executable, "-m", "lnrs", "bench", "--dtype", "int8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "int8" in proc.stderr


# ------------------------------------------------------------ RMSNorm, fused, half types


def test_every_op_in_process(restore_threads):
    """--ops all on tiny shapes: NumPy computes what lnrs does for every op (a
    mismatch would flag a wrong formula); ONNX Runtime, when there, too for each
    forward op it has (RMSNormalization needs opset 23: n/a where it is missing)."""
    notes = []
    rows = _bench.run_bench(SHAPES, "float32", 1, _bench.ALL_OPS, quick=True, notes=notes)
    check_rows(rows, ops=_bench.ALL_OPS)
    for row in rows:
        assert row["numpy_status"] == "ok", (row, notes)
        if row["op"] not in BACKWARD_OPS:
            assert row["onnxruntime_status"] in ("ok", "absent", "n/a"), (row, notes)
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        statuses = {r["op"]: r["onnxruntime_status"] for r in rows}
        assert statuses["forward_out"] == statuses["add_forward_out"] == "ok", notes
    assert lnrs.get_num_threads() == restore_threads


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_other_dtypes(dtype):
    pytest.importorskip("ml_dtypes")
    notes = []
    ops = ["forward_out", "backward", "rms_forward", "rms_backward", "add_rms_forward_out"]
    rows = _bench.run_bench([(3, 16)], dtype, 1, ops, quick=True, notes=notes)
    check_rows(rows, [(3, 16)], ops)
    for row in rows:
        assert row["dtype"] == dtype
        assert row["numpy_status"] == "ok", (row, notes)
        if dtype == "bfloat16":
            assert row["onnxruntime_status"] in ("n/a", "absent")
    report = " ".join(_bench.format_report(_bench.machine_facts(), rows, [], notes).split())
    assert ("float32 array of the same number of bytes" in report) == (dtype != "float64")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("cols", [16, 7])
def test_half_limit_runs_on_float32_of_the_same_bytes(dtype, cols):
    pytest.importorskip("ml_dtypes")
    case = _bench.Case(5, cols, dtype)
    a, out, scale = case.limit_arrays()
    assert a.dtype == out.dtype == np.float32 and a.shape == out.shape
    assert a.shape[0] == 5 and a.nbytes >= case.x.nbytes > a.nbytes - 4 * 5
    assert scale * a.nbytes == case.x.nbytes
    _lnrs.triad(a, out, 2.0, 1.0)  # the extension takes it
    x32, y32, one = _bench.Case(5, cols, "float32").limit_arrays()
    assert one == 1.0 and x32.dtype == np.float32


@pytest.mark.parametrize("op", ["add_forward_out", "add_rms_forward_out"])
def test_fused_ops_run_in_place_and_stay_bounded(op):
    case = _bench.Case(4, 32, "float16")
    r0 = case.residual.copy()
    call = _bench._lnrs_call(case, op)
    y, s = call()  # x + r0, into the working copy of the residual
    assert y is case.y
    np.testing.assert_array_equal(s, r0 + case.x)
    expected = case.expected[op]
    np.testing.assert_array_equal(s, expected[1])
    np.testing.assert_array_equal(y, expected[0])
    for _ in range(2001):  # x, -x, x, ...: the stream oscillates, it does not grow
        y, s = call()
    assert np.isfinite(s).all() and np.isfinite(y).all()
    assert np.abs(s.astype(np.float32) - r0.astype(np.float32)).max() < 0.1
    np.testing.assert_array_equal(case.residual, r0)  # the case's own stays untouched


def test_onnxruntime_without_opset_23_is_not_applicable(monkeypatch):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    real = _bench._ort_session

    def old_runtime(onnxruntime, helper, nodes, inputs, outputs, inits, opsets, threads):
        if any(o.version >= 23 for o in opsets if o.domain == ""):
            raise RuntimeError("opset 23 is not supported")
        return real(onnxruntime, helper, nodes, inputs, outputs, inits, opsets, threads)

    monkeypatch.setattr(_bench, "_ort_session", old_runtime)
    notes = []
    ops = ["rms_forward_out", "rms_forward", "forward"]
    rows = _bench.run_bench([(2, 8)], ops=ops, quick=True, peers=["onnxruntime"], notes=notes)
    assert [r["onnxruntime_status"] for r in rows] == ["n/a", "n/a", "ok"]
    assert any("opset 23" in n["reason"] for n in notes)


def test_numpy_rms_peer_formulas():
    """The NumPy RMSNorm peer against a float64 reference and finite differences."""
    rng = np.random.default_rng(2)
    x, dy, w = rng.standard_normal((3, 10)), rng.standard_normal((3, 10)), rng.standard_normal(10)
    eps = 1e-5
    rstd = 1 / np.sqrt((x * x).mean(1) + eps)
    assert np.allclose(_bench.numpy_rms_forward(x, w, eps), x * rstd[:, None] * w)

    def loss(x, w):
        return float(np.sum(_bench.numpy_rms_forward(x, w, eps) * dy))

    dx, dw = _bench.numpy_rms_backward(dy, x, rstd, w)
    numeric = (
        central_differences(lambda v: loss(v, w), x),
        central_differences(lambda v: loss(x, v), w),
    )
    for arg, (grad, fd) in enumerate(zip((dx, dw), numeric)):
        assert np.allclose(grad, fd, atol=1e-6), arg
    y, s = _bench.numpy_add_rms_forward(x, dy, w, eps)
    np.testing.assert_array_equal(s, x + dy)
    np.testing.assert_array_equal(y, _bench.numpy_rms_forward(x + dy, w, eps))


def test_ops_all_and_the_help(capsys):
    assert _bench.parse_ops("all") == list(_bench.ALL_OPS)
    assert _bench.parse_ops("rms_backward,all") == ["rms_backward"] + [
        op for op in _bench.ALL_OPS if op != "rms_backward"
    ]
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for op in _bench.ALL_OPS:
        assert op in text
    assert "or all (default: forward_out,forward,backward)" in text


def test_bfloat16_without_ml_dtypes_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(SystemExit) as e:
        main(["bench", "--quick", "--shapes", "2x8", "--dtype", "bfloat16"])
    assert e.value.code == 2
    assert "ml_dtypes" in capsys.readouterr().err


def test_cli_all_ops_half(capsys, restore_threads):
    pytest.importorskip("ml_dtypes")
    args = ["bench", "--quick", "--shapes", "2x8", "--ops", "all", "--dtype", "bfloat16"]
    assert main([*args, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for op in _bench.ALL_OPS:
        assert f"2x8    {op} " in out
    assert "bfloat16: the triad takes float32 and float64 only" in out
