"""`python -m lnrs bench`: lnrs against the memory-bandwidth limit and against its peers.

Past the caches each op moves whole arrays of x's size, counted in the bytes of
x's dtype: a forward pass two (read x, write y), a backward pass three (read x and
dy, write dx), a residual add fused with the norm four (read x and the residual,
write y and s = x + residual). The limit is the streaming triad ``y = a*x + b``
in the extension, run in the same process on the same shape and threads, with the
forward pass's row split and store policy, scaled to the op's bytes; the triad
takes float32 and float64 only, so for float16 and bfloat16 it runs on a float32
array of the same number of bytes (half the columns). For tiny inputs (x within
FLOOR_MAX_BYTES) the limit is never taken below one bare NumPy ufunc call on an
array of the same bytes (``np.add(x, 1, out=y)``), the least a call from Python
can cost.

Ops (--ops, comma-separated; "all" for every one; the default is the first three):
  forward_out          layer_norm(x, out=y)                              2 arrays
  forward              layer_norm(x), a fresh output                     2 arrays
  backward             layer_norm_backward -> dx, dweight, dbias         3 arrays
  rms_forward_out      rms_norm(x, out=y)                                2 arrays
  rms_forward          rms_norm(x)                                       2 arrays
  rms_backward         rms_norm_backward -> dx, dweight                  3 arrays
  add_forward_out      add_layer_norm(x, r, out=y, sum_out=r), in place  4 arrays
  add_rms_forward_out  add_rms_norm(x, r, out=y, sum_out=r), in place    4 arrays

Peers (NumPy, ONNX Runtime, PyTorch) are timed when they import; a peer that
does not is reported as absent with the reason, never as a failure, and a peer
without an op or dtype as n/a. ONNX Runtime runs LayerNormalization (opset 17),
RMSNormalization (opset 23, where the installed runtime has it) and its
SkipLayerNormalization / SkipSimplifiedLayerNormalization contrib ops for the
fused ones; PyTorch runs layer_norm, rms_norm and ``x + r`` then the norm; NumPy
the textbook formulas (for the half types in float32, cast back). Each peer's
first result is checked against lnrs, so a peer that computes something else is
flagged rather than timed silently.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import platform
import sys
import time
from functools import partial
from typing import Any, Callable

import numpy as np

import lnrs
from lnrs import _checks, _lnrs
from lnrs._checks import resolve_dtype
from lnrs._torch_views import numpy_view, tensor_view

OPS = ("forward_out", "forward", "backward")  # the default set
ALL_OPS = OPS + (
    "rms_forward_out",
    "rms_forward",
    "rms_backward",
    "add_forward_out",
    "add_rms_forward_out",
)
PEERS = ("numpy", "onnxruntime", "torch")
DTYPES = ("float32", "float64", "float16", "bfloat16")
DEFAULT_SHAPES = ((1, 768), (32, 768), (512, 768), (4096, 1024), (8192, 4096))
EPS = 1e-5

# Arrays of x's size each op moves: forward reads x and writes y; backward reads
# x and dy and writes dx (weight, mean and rstd are one row or one column); the
# fused add reads x and the residual and writes y and s (over the residual).
ARRAYS_MOVED = {
    "forward_out": 2,
    "forward": 2,
    "backward": 3,
    "rms_forward_out": 2,
    "rms_forward": 2,
    "rms_backward": 3,
    "add_forward_out": 4,
    "add_rms_forward_out": 4,
}

# The ufunc floor holds for inputs up to this size, where a call's fixed cost is
# what a ufunc call measures. Past it NumPy's ufunc is bound by one thread's
# bandwidth, which the triad on all threads beats: it would be no floor but a
# lenient limit. 256 KiB fits the L2 cache of about any core; it takes in 1x768
# and 32x768 in both dtypes.
FLOOR_MAX_BYTES = 256 * 1024

# Time spent per measurement, the least number of samples, and how long one
# sample lasts at least (small calls are looped so the timer's cost vanishes).
BUDGET_S = {False: 0.4, True: 0.01}
MIN_SAMPLES = {False: 5, True: 2}
SAMPLE_S = {False: 2e-3, True: 2e-4}
MAX_SAMPLES = 1000

# Largest difference from lnrs, relative to the result's scale, that a peer may
# show before its row is flagged (a few ulps of the half types).
CHECK_TOL = {"float32": 1e-3, "float64": 1e-8, "float16": 4e-3, "bfloat16": 3e-2}

# Seconds to wait after a peer that runs its own thread pool, whose workers may
# spin for a while after a call and would steal a core from the next measurement.
SETTLE_S = {False: 0.05, True: 0.0}


class NotApplicable(Exception):
    """The peer has no such operation (ONNX Runtime has no backward) or dtype."""


# ---------------------------------------------------------------- arguments


def parse_shape(text: str) -> tuple[int, int]:
    """``"4096x1024"`` -> ``(4096, 1024)``: rows x hidden size, both >= 1."""
    parts = text.strip().lower().split("x")
    try:
        if len(parts) != 2:
            raise ValueError
        rows, cols = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"shape must be ROWSxCOLS like 4096x1024, got {text!r}"
        ) from None
    if rows < 1 or cols < 1:
        raise argparse.ArgumentTypeError(f"shape sizes must be >= 1, got {text!r}")
    return rows, cols


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """A comma-separated list of shapes: ``"1x768,4096x1024"``."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("--shapes needs at least one ROWSxCOLS")
    return [parse_shape(t) for t in items]


def parse_ops(text: str) -> list[str]:
    """A comma-separated subset of :data:`ALL_OPS`, in the order given; ``all`` stands
    for every op."""
    ops = []
    for t in (t.strip() for t in text.split(",")):
        if t:
            ops += list(ALL_OPS) if t == "all" else [t]
    bad = [op for op in ops if op not in ALL_OPS]
    if bad or not ops:
        raise argparse.ArgumentTypeError(
            f"--ops must be a comma-separated subset of {','.join(ALL_OPS)} (or all), got {text!r}"
        )
    return list(dict.fromkeys(ops))


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shapes",
        type=parse_shapes,
        default=list(DEFAULT_SHAPES),
        metavar="RxC,...",
        help="rows x hidden size, comma-separated (default: "
        + ",".join(shape_name(s) for s in DEFAULT_SHAPES)
        + ")",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="(default: float32; bfloat16 is ml_dtypes')",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="threads for lnrs and the peers (default: lnrs.get_num_threads())",
    )
    parser.add_argument(
        "--ops",
        type=parse_ops,
        default=list(OPS),
        metavar="OP,...",
        help="comma-separated, among: "
        + ", ".join(ALL_OPS)
        + "; or all (default: "
        + ",".join(OPS)
        + ")",
    )
    parser.add_argument("--json", metavar="FILE", help="write machine facts and every row")
    parser.add_argument(
        "--plot", metavar="FILE.png", help="draw GB/s per shape and op (needs matplotlib)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="few repeats: a smoke test, not a measurement"
    )


# ---------------------------------------------------------------- timing


def measure(fn: Callable[[], Any], quick: bool = False) -> tuple[float, Any]:
    """Seconds per call of ``fn`` (best of several samples) and its first result.

    The first call warms up (page faults, caches, lazy set-up) and its result is
    kept for checking; the second sizes the loop so each sample lasts long enough
    for the timer; then samples run until the time budget is spent.
    """
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        result = fn()
        start = time.perf_counter()
        fn()
        one = time.perf_counter() - start
        number = max(1, int(SAMPLE_S[quick] / max(one, 1e-9)))
        deadline = time.perf_counter() + BUDGET_S[quick]
        best = math.inf
        samples = 0
        while samples < MIN_SAMPLES[quick] or (
            samples < MAX_SAMPLES and time.perf_counter() < deadline
        ):
            start = time.perf_counter()
            for _ in range(number):
                fn()
            best = min(best, (time.perf_counter() - start) / number)
            samples += 1
        return best, result
    finally:
        if gc_enabled:
            gc.enable()


# ---------------------------------------------------------------- the cases


class _Expected(dict):
    """lnrs's results per op, computed on first use."""

    def __init__(self, case: Case):
        super().__init__()
        self.case = case

    def __missing__(self, op: str):
        value = self[op] = self.case._expected(op)
        return value


class Case:
    """One shape and dtype: the inputs, output buffers and lnrs's own results
    (``expected[op]``, computed when first asked for)."""

    def __init__(self, rows: int, cols: int, dtype: str, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.rows, self.cols = rows, cols
        self.dtype = resolve_dtype(dtype) if isinstance(dtype, str) else np.dtype(dtype)

        def normal(*shape):
            return rng.standard_normal(shape, dtype=np.float32).astype(self.dtype)

        self.x = normal(rows, cols)
        self.w = normal(cols)
        self.b = normal(cols)
        self.dy = normal(rows, cols)
        self.y = np.empty_like(self.x)
        self.expected = _Expected(self)
        self._mean = self._rstd = self._rms_rstd = None
        self._residual = None

    @property
    def nbytes(self) -> int:
        return self.x.nbytes

    @property
    def mean(self):
        if self._mean is None:
            _, self._mean, self._rstd = lnrs.layer_norm_forward(
                self.x, self.cols, self.w, self.b, EPS
            )
        return self._mean

    @property
    def rstd(self):
        self.mean  # noqa: B018 - computes mean and rstd together
        return self._rstd

    @property
    def rms_rstd(self):
        if self._rms_rstd is None:
            _, self._rms_rstd = lnrs.rms_norm_forward(self.x, self.cols, self.w, EPS)
        return self._rms_rstd

    @property
    def residual(self):
        """The residual stream the fused ops start from (kept: the in-place calls
        update a copy of it)."""
        if self._residual is None:
            rng = np.random.default_rng([1, self.rows, self.cols])
            r = rng.standard_normal((self.rows, self.cols), dtype=np.float32)
            self._residual = r.astype(self.dtype)
        return self._residual

    def _expected(self, op: str) -> tuple:
        x, w, b, cols = self.x, self.w, self.b, self.cols
        if op in ("forward", "forward_out"):
            return (lnrs.layer_norm(x, cols, w, b, EPS),)
        if op == "backward":
            return tuple(lnrs.layer_norm_backward(self.dy, x, self.mean, self.rstd, cols, self.w))
        if op in ("rms_forward", "rms_forward_out"):
            return (lnrs.rms_norm(x, cols, w, EPS),)
        if op == "rms_backward":
            return tuple(lnrs.rms_norm_backward(self.dy, x, self.rms_rstd, cols, w))
        if op == "add_forward_out":
            return tuple(lnrs.add_layer_norm(x, self.residual, cols, w, b, EPS))
        if op == "add_rms_forward_out":
            return tuple(lnrs.add_rms_norm(x, self.residual, cols, w, EPS))
        raise KeyError(op)

    def limit_arrays(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Arrays for the triad and the ufunc floor, and the factor that scales their
        times to x's bytes: x and y themselves, or for the half types (which the
        triad does not take) float32 arrays of the same bytes, rows kept."""
        if not _checks.is_half(self.dtype):
            return self.x, self.y, 1.0
        cols = -(-self.cols * self.dtype.itemsize // 4)
        a = np.random.default_rng(2).standard_normal((self.rows, cols), dtype=np.float32)
        return a, np.empty_like(a), self.x.nbytes / a.nbytes


# A peer's set-up returns, for each op, ``(fn, fetch)``: ``fn()`` runs one call and
# ``fetch(result)`` turns its result into NumPy arrays to compare with lnrs. Where
# a peer has no way to write into an existing array, its "forward_out" entry is
# its "forward" entry, the same object, and is timed once.
PeerOps = dict  # op -> (fn, fetch) | NotApplicable


def numpy_forward(x, w, b, eps):
    """LayerNorm as one would write it in NumPy, in the input dtype."""
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b


def numpy_backward(dy, x, mean, rstd, w):
    """The gradients of :func:`numpy_forward` for 2-D ``x``, by the standard formula."""
    mean, rstd = mean[:, None], rstd[:, None]
    xhat = (x - mean) * rstd
    g = dy * w
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    return dx, (dy * xhat).sum(0), dy.sum(0)


def numpy_rms_forward(x, w, eps):
    """RMSNorm as one would write it in NumPy: ``x / sqrt(mean(x²) + eps) * w``."""
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def numpy_rms_backward(dy, x, rstd, w):
    """The gradients of :func:`numpy_rms_forward` for 2-D ``x``: ``(dx, dweight)``."""
    rstd = rstd[:, None]
    g = dy * w
    dx = rstd * (g - x * (rstd * rstd) * (g * x).mean(-1, keepdims=True))
    return dx, (dy * x * rstd).sum(0)


def numpy_add_forward(x, r, w, b, eps):
    """``s = x + r`` and LayerNorm of ``s``: ``(y, s)``."""
    s = x + r
    return numpy_forward(s, w, b, eps), s


def numpy_add_rms_forward(x, r, w, eps):
    """``s = x + r`` and RMSNorm of ``s``: ``(y, s)``."""
    s = x + r
    return numpy_rms_forward(s, w, eps), s


def _same(r):
    return r if isinstance(r, tuple) else (r,)


def _in_float32(fn, dtype):
    """``fn`` on float32 copies of its array arguments, its results cast to ``dtype``:
    how one computes in NumPy with half-precision storage."""

    def wrapped(*args):
        wide = [a.astype(np.float32) if isinstance(a, np.ndarray) else a for a in args]
        out = _same(fn(*wide))
        return tuple(a.astype(dtype) if a.shape == wide[0].shape else a for a in out)

    return wrapped


def numpy_ops(case: Case, threads: int, ops=OPS) -> PeerOps:
    half = _checks.is_half(case.dtype)

    def call(fn, *args):
        return (partial(_in_float32(fn, case.dtype) if half else fn, *args), _same)

    result: PeerOps = {}
    if "forward" in ops or "forward_out" in ops:
        result["forward"] = result["forward_out"] = call(numpy_forward, case.x, case.w, case.b, EPS)
    if "backward" in ops:
        result["backward"] = call(numpy_backward, case.dy, case.x, case.mean, case.rstd, case.w)
    if "rms_forward" in ops or "rms_forward_out" in ops:
        result["rms_forward"] = result["rms_forward_out"] = call(
            numpy_rms_forward, case.x, case.w, EPS
        )
    if "rms_backward" in ops:
        result["rms_backward"] = call(numpy_rms_backward, case.dy, case.x, case.rms_rstd, case.w)
    if "add_forward_out" in ops:
        result["add_forward_out"] = call(
            numpy_add_forward, case.x, case.residual, case.w, case.b, EPS
        )
    if "add_rms_forward_out" in ops:
        result["add_rms_forward_out"] = call(
            numpy_add_rms_forward, case.x, case.residual, case.w, EPS
        )
    return result


def _ort_session(onnxruntime, helper, nodes, inputs, outputs, initializers, opsets, threads):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=opsets)
    if max(o.version for o in opsets if o.domain == "") <= 17:
        model.ir_version = 8  # the IR of opset 17; newer onnx writes one older runtimes refuse
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _ort_bound(session, feeds: dict, outputs: dict):
    """A call running ``session`` on ``feeds`` into the existing arrays ``outputs``
    (ONNX Runtime's out=, an IOBinding). The binding holds raw pointers: the call
    keeps the arrays alive as long as it lives."""
    binding = session.io_binding()
    for name, a in feeds.items():
        binding.bind_cpu_input(name, a)
    for name, a in outputs.items():
        binding.bind_output(name, "cpu", 0, a.dtype, a.shape, a.ctypes.data)
    keep = (feeds, outputs)

    def call(keep=keep):
        session.run_with_iobinding(binding)
        return tuple(keep[1].values())

    return call


def onnxruntime_ops(case: Case, threads: int, ops=OPS) -> PeerOps:
    import onnxruntime
    from onnx import helper, numpy_helper

    if case.dtype.name == "bfloat16":
        why = NotApplicable("ONNX Runtime's Python binding takes no bfloat16 arrays")
        return dict.fromkeys(ALL_OPS, why)
    elem = helper.np_dtype_to_tensor_dtype(case.dtype)
    cols = case.cols

    def value(name):
        return helper.make_tensor_value_info(name, elem, [None, cols])

    def params(*names):
        arrays = {"W": case.w, "B": case.b}
        return [numpy_helper.from_array(arrays[n], n) for n in names]

    def session(nodes, inputs, outputs, inits, opset=17, contrib=False):
        opsets = [helper.make_opsetid("", opset)]
        if contrib:
            opsets.append(helper.make_opsetid("com.microsoft", 1))
        return _ort_session(onnxruntime, helper, nodes, inputs, outputs, inits, opsets, threads)

    result: PeerOps = {
        "backward": NotApplicable("ONNX Runtime inference has no LayerNorm backward"),
        "rms_backward": NotApplicable("ONNX Runtime inference has no RMSNorm backward"),
    }
    if "forward" in ops or "forward_out" in ops:
        node = helper.make_node("LayerNormalization", ["X", "W", "B"], ["Y"], axis=-1, epsilon=EPS)
        s = session([node], [value("X")], [value("Y")], params("W", "B"))
        result["forward"] = (partial(s.run, ["Y"], {"X": case.x}), lambda r: (r[0],))
        result["forward_out"] = (_ort_bound(s, {"X": case.x}, {"Y": np.empty_like(case.x)}), _same)
    if "rms_forward" in ops or "rms_forward_out" in ops:
        node = helper.make_node("RMSNormalization", ["X", "W"], ["Y"], axis=-1, epsilon=EPS)
        try:
            s = session([node], [value("X")], [value("Y")], params("W"), opset=23)
        except Exception as e:  # an older runtime: no opset 23
            why = NotApplicable(
                f"ONNX Runtime {onnxruntime.__version__} has no RMSNormalization (opset 23): "
                f"{type(e).__name__}"
            )
            result["rms_forward"] = result["rms_forward_out"] = why
        else:
            result["rms_forward"] = (partial(s.run, ["Y"], {"X": case.x}), lambda r: (r[0],))
            result["rms_forward_out"] = (
                _ort_bound(s, {"X": case.x}, {"Y": np.empty_like(case.x)}),
                _same,
            )
    for op, contrib_op, names in (
        ("add_forward_out", "SkipLayerNormalization", ("W", "B")),
        ("add_rms_forward_out", "SkipSimplifiedLayerNormalization", ("W",)),
    ):
        if op not in ops:
            continue
        # Outputs: y, mean, inv_std_var, input_skip_bias_sum (s); the middle two unused.
        node = helper.make_node(
            contrib_op,
            ["X", "R", *names],
            ["Y", "", "", "S"],
            epsilon=EPS,
            domain="com.microsoft",
        )
        try:
            s = session(
                [node],
                [value("X"), value("R")],
                [value("Y"), value("S")],
                params(*names),
                contrib=True,
            )
        except Exception as e:
            result[op] = NotApplicable(
                f"ONNX Runtime {onnxruntime.__version__} has no {contrib_op} for "
                f"{case.dtype.name}: {type(e).__name__}"
            )
            continue
        outputs = {"Y": np.empty_like(case.x), "S": np.empty_like(case.x)}
        result[op] = (_ort_bound(s, {"X": case.x, "R": case.residual}, outputs), _same)
    return result


def torch_ops(case: Case, threads: int, ops=OPS) -> PeerOps:
    import torch

    torch.set_num_threads(threads)
    functional = torch.nn.functional
    layer_norm = functional.layer_norm
    rms_norm = getattr(functional, "rms_norm", None)
    cols = case.cols

    def t(a):
        return tensor_view(torch, a)

    def fetch(r):
        return tuple(numpy_view(a) for a in _same(r))

    def grads(fn, arrays, params):
        """Backward alone: the graph of one forward pass, kept for repeated gradients."""
        leaves = [t(a.copy()).requires_grad_(True) for a in arrays]
        y = fn(leaves[0], (cols,), *leaves[1:], *params)
        return (
            partial(torch.autograd.grad, y, tuple(leaves), t(case.dy), retain_graph=True),
            fetch,
        )

    x, w, b = t(case.x), t(case.w), t(case.b)
    result: PeerOps = {}
    no_rms = NotApplicable(f"torch {getattr(torch, '__version__', '?')} has no rms_norm")
    if "forward" in ops or "forward_out" in ops:
        result["forward"] = result["forward_out"] = (
            partial(layer_norm, x, (cols,), w, b, EPS),
            fetch,
        )
    if "backward" in ops:
        result["backward"] = grads(layer_norm, (case.x, case.w, case.b), (EPS,))
    if "rms_forward" in ops or "rms_forward_out" in ops:
        result["rms_forward"] = result["rms_forward_out"] = (
            (partial(rms_norm, x, (cols,), w, EPS), fetch) if rms_norm else no_rms
        )
    if "rms_backward" in ops:
        result["rms_backward"] = grads(rms_norm, (case.x, case.w), (EPS,)) if rms_norm else no_rms
    r = t(case.residual)
    if "add_forward_out" in ops:

        def add_forward():
            s = x + r
            return layer_norm(s, (cols,), w, b, EPS), s

        result["add_forward_out"] = (add_forward, fetch)
    if "add_rms_forward_out" in ops:

        def add_rms_forward():
            s = x + r
            return rms_norm(s, (cols,), w, EPS), s

        result["add_rms_forward_out"] = (add_rms_forward, fetch) if rms_norm else no_rms
    return result


PEER_SETUP = {"numpy": numpy_ops, "onnxruntime": onnxruntime_ops, "torch": torch_ops}
PEER_MODULES = {"numpy": ("numpy",), "onnxruntime": ("onnxruntime", "onnx"), "torch": ("torch",)}
# Peers with a thread pool of their own, whose idle workers may spin.
THREADED_PEERS = ("onnxruntime", "torch")


def load_peers() -> tuple[list[str], list[dict]]:
    """The peers that import, and ``{"peer", "reason"}`` for each that does not."""
    present, absent = [], []
    for peer in PEERS:
        try:
            for module in PEER_MODULES[peer]:
                __import__(module)
        except Exception as e:  # a broken install is as absent as a missing one
            absent.append({"peer": peer, "reason": f"{type(e).__name__}: {e}"})
        else:
            present.append(peer)
    return present, absent


def peer_version(peer: str) -> str | None:
    module = sys.modules.get(PEER_MODULES[peer][0])
    return getattr(module, "__version__", None) if module is not None else None


# ---------------------------------------------------------------- the run


def shape_name(shape) -> str:
    return f"{shape[0]}x{shape[1]}"


def columns() -> list[str]:
    """Every key of every row, in order."""
    cols = (
        "shape rows cols dtype op threads bytes lnrs_s lnrs_gbps triad_s triad_gbps triad_dtype"
        " ufunc_s limit_s limit_gbps limit_by fraction copy_s lnrs_over_copy"
    ).split()
    for peer in PEERS:
        cols += [f"{peer}_s", f"{peer}_gbps", f"{peer}_speedup", f"{peer}_status"]
    return cols


def _check(case: Case, op: str, got) -> str | None:
    """Why a peer's result differs from lnrs's, or None when it agrees."""
    expected = case.expected[op]
    if len(got) != len(expected):
        return f"returned {len(got)} arrays, expected {len(expected)}"
    for a, e in zip(got, expected):
        a = np.asarray(a)
        if a.shape != e.shape:
            return f"shape {a.shape}, expected {e.shape}"
        e = e.astype(np.float64)
        scale = max(1.0, float(np.max(np.abs(e))))
        err = float(np.max(np.abs(a.astype(np.float64) - e))) / scale
        if not err <= CHECK_TOL[case.dtype.name]:
            return f"its result and lnrs's differ by {err:.3g} of the result's scale"
    return None


def run_bench(
    shapes=DEFAULT_SHAPES,
    dtype: str = "float32",
    threads: int | None = None,
    ops=OPS,
    quick: bool = False,
    *,
    peers: list[str] | None = None,
    notes: list[dict] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[dict]:
    """One row per (shape, op), each with every key of :func:`columns`.

    ``peers`` defaults to those :func:`load_peers` finds. Problems with a peer on
    one row (no such op, a failure, a result that differs from lnrs) are appended
    to ``notes`` as ``{"peer", "shape", "op", "status", "reason"}``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    resolve_dtype(dtype)  # bfloat16 without ml_dtypes: ImportError before any work
    bad = [op for op in ops if op not in ALL_OPS]
    if bad:
        raise ValueError(f"ops must be among {ALL_OPS}, got {bad}")
    if peers is None:
        peers = load_peers()[0]
    if notes is None:
        notes = []
    before = lnrs.get_num_threads()
    threads = before if threads is None else threads
    torch_before = sys.modules["torch"].get_num_threads() if "torch" in peers else None
    lnrs.set_num_threads(threads)
    rows: list[dict] = []
    total = len(shapes) * len(ops)
    try:
        for shape_index, shape in enumerate(shapes):
            name, first = shape_name(shape), shape_index * len(ops)

            def tell(op_index: int, what: str, name=name, first=first) -> None:
                if progress is not None:
                    progress(first + op_index + 1, total, f"{name} {what}")

            tell(0, f"{ops[0]}: limit")
            case = Case(shape[0], shape[1], dtype)
            a, out, scale = case.limit_arrays()
            triad_s = measure(partial(_lnrs.triad, a, out, 2.0, 1.0), quick)[0] * scale
            ufunc_s = measure(partial(np.add, a, 1, out=out), quick)[0] * scale
            del a, out
            copy_s = measure(case.x.copy, quick)[0] if "forward" in ops else None

            setups: dict[str, Any] = {}
            for peer in peers:
                try:
                    setups[peer] = PEER_SETUP[peer](case, threads, ops)
                except Exception as e:
                    setups[peer] = e
            timed: dict[int, tuple[float | None, str]] = {}

            for op_index, op in enumerate(ops):
                tell(op_index, f"{op}: lnrs")
                lnrs_s = measure(_lnrs_call(case, op), quick)[0]
                nbytes = ARRAYS_MOVED[op] * case.nbytes
                limit_triad = triad_s * ARRAYS_MOVED[op] / 2
                floor_s = ufunc_s if case.nbytes <= FLOOR_MAX_BYTES else 0.0
                limit_s = max(limit_triad, floor_s)
                row = {
                    "shape": name,
                    "rows": shape[0],
                    "cols": shape[1],
                    "dtype": dtype,
                    "op": op,
                    "threads": threads,
                    "bytes": nbytes,
                    "lnrs_s": lnrs_s,
                    "lnrs_gbps": nbytes / lnrs_s / 1e9,
                    "triad_s": triad_s,
                    "triad_gbps": 2 * case.nbytes / triad_s / 1e9,
                    "triad_dtype": "float32" if _checks.is_half(case.dtype) else dtype,
                    "ufunc_s": ufunc_s,
                    "limit_s": limit_s,
                    "limit_gbps": nbytes / limit_s / 1e9,
                    "limit_by": "triad" if limit_triad >= floor_s else "ufunc",
                    "fraction": limit_s / lnrs_s,
                    "copy_s": copy_s if op == "forward" else None,
                    "lnrs_over_copy": lnrs_s / copy_s if op == "forward" else None,
                }
                for peer in PEERS:
                    if peer in peers:
                        tell(op_index, f"{op}: {peer}")
                    seconds, status = _time_peer(peer, peers, setups, timed, case, op, quick)
                    if status not in ("ok", "absent"):
                        reason = status.split(": ", 1)
                        notes.append(
                            {
                                "peer": peer,
                                "shape": name,
                                "op": op,
                                "status": reason[0],
                                "reason": reason[-1],
                            }
                        )
                        status = reason[0]
                    row[f"{peer}_s"] = seconds
                    row[f"{peer}_gbps"] = nbytes / seconds / 1e9 if seconds else None
                    row[f"{peer}_speedup"] = seconds / lnrs_s if seconds else None
                    row[f"{peer}_status"] = status
                rows.append(row)
            del case, setups, timed
    finally:
        lnrs.set_num_threads(before)
        if torch_before is not None:
            sys.modules["torch"].set_num_threads(torch_before)
    return rows


def _alternate(*calls: Callable[[], Any]) -> Callable[[], Any]:
    """A call that makes each of ``calls`` in turn."""
    turn = itertools.cycle(calls).__next__
    return lambda: turn()()


def _lnrs_call(case: Case, op: str) -> Callable[[], Any]:
    x, w, b, cols = case.x, case.w, case.b, case.cols
    if op == "forward_out":
        return partial(lnrs.layer_norm, x, cols, w, b, EPS, out=case.y)
    if op == "forward":
        return partial(lnrs.layer_norm, x, cols, w, b, EPS)
    if op == "backward":
        return partial(lnrs.layer_norm_backward, case.dy, x, case.mean, case.rstd, cols, w)
    if op == "rms_forward_out":
        return partial(lnrs.rms_norm, x, cols, w, EPS, out=case.y)
    if op == "rms_forward":
        return partial(lnrs.rms_norm, x, cols, w, EPS)
    if op == "rms_backward":
        return partial(lnrs.rms_norm_backward, case.dy, x, case.rms_rstd, cols, w)
    if op in ("add_forward_out", "add_rms_forward_out"):
        # In place, as servers keep the residual stream: s over the residual. Adding
        # x and -x in turn keeps the stream bounded however many calls are timed.
        r = case.residual.copy()
        if op == "add_forward_out":
            fn, params = lnrs.add_layer_norm, (w, b, EPS)
        else:
            fn, params = lnrs.add_rms_norm, (w, EPS)
        return _alternate(
            *(partial(fn, v, r, cols, *params, out=case.y, sum_out=r) for v in (x, -x))
        )
    raise ValueError(f"unknown op {op!r}")


def _time_peer(peer, peers, setups, timed, case, op, quick) -> tuple[float | None, str]:
    """Seconds per call and ``"ok"``, or None and a status: ``absent``, ``n/a: why``,
    ``error: why``; a timed result that disagrees with lnrs is ``mismatch: why``."""
    if peer not in peers:
        return None, "absent"
    setup = setups[peer]
    if isinstance(setup, Exception):
        return None, f"error: set-up failed: {type(setup).__name__}: {setup}"
    entry = setup.get(op, NotApplicable(f"no {op}"))
    if isinstance(entry, NotApplicable):
        return None, f"n/a: {entry}"
    if id(entry) not in timed:
        fn, fetch = entry
        try:
            seconds, result = measure(fn, quick)
            why = _check(case, op, fetch(result))
            timed[id(entry)] = (seconds, "ok" if why is None else f"mismatch: {why}")
        except Exception as e:
            timed[id(entry)] = (None, f"error: {type(e).__name__}: {e}")
        if peer in THREADED_PEERS:
            time.sleep(SETTLE_S[quick])
    return timed[id(entry)]


# ---------------------------------------------------------------- reporting


def machine_facts(threads: int | None = None) -> dict:
    facts = {
        "lnrs": lnrs.__version__,
        "simd": lnrs.simd_level(),
        "threads": lnrs.get_num_threads() if threads is None else threads,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
    }
    for peer in PEERS[1:]:
        facts[peer] = peer_version(peer)
    return facts


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def format_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(f"{seconds:.3g}")  # 999.7 ns is 1 us, not "1e+03 ns"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value >= 10**digits - 0.5:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def _peer_cell(row: dict, peer: str) -> str:
    status = row[f"{peer}_status"]
    if row[f"{peer}_s"] is None:
        return {"absent": "-", "n/a": "n/a"}.get(status, status)
    cell = f"{format_time(row[f'{peer}_s'])} {_num(row[f'{peer}_speedup'])}x"
    return cell + ("!" if status != "ok" else "")


def format_table(rows: list[dict], peers=PEERS) -> str:
    """An aligned text table: one line per row."""
    header = ["shape", "op", "lnrs", "GB/s", "limit", "by", "of limit", "/copy"]
    header += [f"{p} (x)" for p in peers]
    lines = [header]
    for row in rows:
        lines.append(
            [
                row["shape"],
                row["op"],
                format_time(row["lnrs_s"]),
                _num(row["lnrs_gbps"]),
                format_time(row["limit_s"]),
                row["limit_by"],
                f"{row['fraction']:.2f}",
                "-" if row["lnrs_over_copy"] is None else f"{row['lnrs_over_copy']:.2f}",
            ]
            + [_peer_cell(row, p) for p in peers]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left = {0, 1, 5}
    out = []
    for line in lines:
        cells = [
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))
        ]
        out.append("  ".join(cells).rstrip())
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


LEGEND = """\
lnrs, limit: seconds per call, best of several runs. GB/s: bytes moved per second, in x's dtype
(arrays of x's size: forward 2, backward 3, add_* 4 - read x and the residual, write y and s).
limit: the triad y = a*x + b in the extension on the same shape, dtype and threads, scaled to the
op's bytes ("triad"); for x up to 256 KiB, one np.add(x, 1, out=y) call when that is slower
("ufunc"). of limit: limit / lnrs, 1.00 = at the limit. /copy: lnrs forward (fresh output) /
NumPy's x.copy(). peer (x): the peer's time, then its time / lnrs's (how many times faster lnrs
is); '-' absent, 'n/a' no such op or dtype, '!' see below. Only ONNX Runtime has an out= (an
IOBinding): NumPy's and PyTorch's *_out figures are their fresh-output calls; lnrs's add_* run in
place (sum_out = the residual), the peers' write s to a separate array."""

HALF_LEGEND = """\
{dtype}: the triad takes float32 and float64 only, so it (and the ufunc floor) ran on a float32
array of the same number of bytes (half the columns) and is scaled by bytes moved. NumPy computes
in float32 and casts back."""


def legend(rows: list[dict]) -> str:
    """:data:`LEGEND`, and a note on the triad where it ran on a stand-in dtype."""
    text = LEGEND
    for dtype in dict.fromkeys(r["dtype"] for r in rows if r["triad_dtype"] != r["dtype"]):
        text += "\n" + HALF_LEGEND.format(dtype=dtype)
    return text


def format_facts(facts: dict) -> str:
    items = [
        ("lnrs", f"{facts['lnrs']} (SIMD {facts['simd']}, {facts['threads']} threads)"),
        ("cpu", f"{facts['cpu'] or 'unknown'} ({facts['cores']} cores)"),
        ("numpy", facts["numpy"]),
    ]
    for peer in PEERS[1:]:
        items.append((peer, facts.get(peer) or "absent"))
    items.append(("python", f"{facts['python']} on {facts['platform']}"))
    width = max(len(k) for k, _ in items)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in items)


def format_report(facts: dict, rows: list[dict], absent: list[dict], notes: list[dict]) -> str:
    parts = [format_facts(facts), "", format_table(rows), "", legend(rows)]
    if absent:
        parts.append("")
        parts += [f"absent: {a['peer']} ({a['reason']})" for a in absent]
    # One line per peer and problem, naming the rows it hit: an op alone where it
    # hit that op at every shape.
    all_shapes = list(dict.fromkeys(r["shape"] for r in rows))
    grouped: dict[tuple, dict[str, list[str]]] = {}
    for n in notes:
        by_op = grouped.setdefault((n["peer"], n["status"], n["reason"]), {})
        by_op.setdefault(n["op"], []).append(n["shape"])
    for (peer, status, reason), by_op in grouped.items():
        where = [
            op if shapes == all_shapes else f"{op} at {', '.join(shapes)}"
            for op, shapes in by_op.items()
        ]
        parts.append(f"{status}: {peer}, {'; '.join(where)}: {reason}")
    return "\n".join(parts)


def to_json(facts: dict, settings: dict, rows: list[dict], absent, notes) -> dict:
    return {
        "machine": facts,
        "settings": settings,
        "columns": columns(),
        "rows": rows,
        "absent": absent,
        "notes": notes,
    }


def plot(rows: list[dict], path: str, title: str = "") -> None:
    """GB/s per shape for each implementation, one panel per op, the limit as a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ops = list(dict.fromkeys(r["op"] for r in rows))
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    ncols = min(len(ops), 4)
    nrows = -(-len(ops) // ncols)
    fig = Figure(figsize=(5.0 * ncols, 4.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for ax in grid.flat[len(ops) :]:
        ax.set_visible(False)
    axes = list(grid.flat[: len(ops)])
    for ax, op in zip(axes, ops):
        by_shape = {r["shape"]: r for r in rows if r["op"] == op}
        xs = list(range(len(shapes)))

        def series(key, by_shape=by_shape):
            return [by_shape[s][key] if s in by_shape else None for s in shapes]

        def nan(values):
            return [math.nan if v is None else v for v in values]

        ax.plot(xs, nan(series("limit_gbps")), "k-", lw=2, label="limit")
        ax.plot(xs, nan(series("triad_gbps")), "k:", lw=1, label="triad alone")
        for name, style, color in (
            ("lnrs", "o-", "C0"),
            ("numpy", "s--", "C1"),
            ("onnxruntime", "^--", "C2"),
            ("torch", "v--", "C3"),
        ):
            values = series(f"{name}_gbps")
            if any(v is not None for v in values):
                ax.plot(xs, nan(values), style, color=color, label=name)
        ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels(shapes, rotation=30, ha="right")
        ax.set_xlabel("rows x hidden size")
        ax.set_title(op)
        ax.grid(True, which="both", alpha=0.3)
    for row_axes in grid:
        row_axes[0].set_ylabel("GB/s moved (higher is better)")
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------- the command


def cpu_seconds() -> tuple[float, float] | None:
    """CPU seconds used so far by the whole machine (from /proc/stat, with time
    stolen by a hypervisor) and by this process; None where /proc is missing."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    own = os.times()
    return busy, own.user + own.system


def other_cores(before, after, elapsed: float) -> float | None:
    """Cores other processes kept busy on average between two :func:`cpu_seconds`."""
    if before is None or after is None or elapsed <= 0:
        return None
    return max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / elapsed


class _Progress:
    """``[ 3/15] 4096x1024 backward: numpy ...`` on stderr, redrawn in place on a terminal;
    one line per step when stderr is not a terminal."""

    def __init__(self, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = 0
        self.step = 0

    def __call__(self, step: int, total: int, text: str) -> None:
        line = f"[{step:>{len(str(total))}}/{total}] {text} ..."
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
        elif step != self.step:  # a log gets one line a step, not every redraw
            self.stream.write(line.split(":")[0] + " ...\n")
        self.step = step
        self.stream.flush()

    def done(self) -> None:
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            parser.error(f"--plot needs matplotlib ({e}): pip install matplotlib")
    try:
        resolve_dtype(args.dtype)
    except ImportError as e:
        parser.error(f"--dtype {args.dtype} needs ml_dtypes ({e}): pip install ml_dtypes")
    threads = args.threads or lnrs.get_num_threads()
    peers, absent = load_peers()
    notes: list[dict] = []
    progress = _Progress()
    cpu_before = cpu_seconds()
    start = time.perf_counter()
    try:
        rows = run_bench(
            args.shapes,
            args.dtype,
            threads,
            args.ops,
            args.quick,
            peers=peers,
            notes=notes,
            progress=progress,
        )
    finally:
        progress.done()
    elapsed = time.perf_counter() - start
    others = other_cores(cpu_before, cpu_seconds(), elapsed)
    facts = machine_facts(threads)
    print(format_report(facts, rows, absent, notes))
    print(
        f"\n{args.dtype}, {threads} threads, {elapsed:.0f} s" + (" (--quick)" if args.quick else "")
    )
    if others is not None and others > 0.25:
        print(
            f"warning: other processes kept {others:.1f} cores busy during the run: "
            "the figures may be low and uneven; run it again on a quiet machine"
        )
    if args.json:
        settings = {
            "dtype": args.dtype,
            "threads": threads,
            "ops": list(args.ops),
            "shapes": [shape_name(s) for s in args.shapes],
            "quick": args.quick,
            "eps": EPS,
            "seconds": elapsed,
            "other_cores_busy": others,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(to_json(facts, settings, rows, absent, notes), f, indent=1)
            f.write("\n")
    if args.plot:
        plot(rows, args.plot, f"lnrs {facts['lnrs']}, {args.dtype}, {threads} threads")
    return 0
