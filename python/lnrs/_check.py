"""`python -m lnrs check`: lnrs and its peers against the exact reference on adversarial inputs.

For each dtype asked for, up to three tables (--ops):

layer_norm: every case of `lnrs.testing.adversarial_inputs` for the dtype through
`lnrs.layer_norm_forward` and each installed peer (NumPy's naive two-pass
LayerNorm in the input dtype, ONNX Runtime's LayerNormalization, PyTorch's
layer_norm), with the largest error of the output in ulps
(`lnrs.testing.ulp_error`: units of the output dtype's spacing at the exact value,
floored at 2**-10) against the correctly rounded exact result.

rms_norm: the same cases through `lnrs.rms_norm_forward` (their bias unused) and the
peers' RMSNorm (NumPy's naive one, ONNX Runtime's RMSNormalization of opset 23,
PyTorch's rms_norm), against `lnrs.testing.reference_rms_norm`.

fused: `lnrs.add_layer_norm` and `lnrs.add_rms_norm` on the same cases with a
residual of 0.5·N(0,1): `s` must be `x + residual` (NumPy's sum, correctly rounded)
and `y` the unfused `layer_norm(s)` / `rms_norm(s)`, bit for bit (NaN payloads
aside), with fresh outputs and in place (`out=`, `sum_out=residual`).

Cases tagged `unfloored` (the half types' output_subnormal, whose outputs are
tiny on purpose) are measured without the 2**-10 floor. Errors below 0.01 ulp
(a few subnormal units, measured in ulps of the floor) are printed as `<0.01`.

A `!` marks NaN/Inf where the exact result is finite; `*` marks an lnrs result
that misses its goal; `n/a` a peer without that dtype or operation.

lnrs's goal: float32 <= 2 ulp, float64 <= 16 ulp, float16 and bfloat16 <= 1 ulp
(of the half type, against the exact result rounded once to it); constant and
one-element rows of layer_norm exactly `bias` (0 ulp); NaN/Inf only in the rows
that hold them; `mean`/`rstd` within 1 ulp (relative, no floor) on finite rows;
the fused ops bit for bit as above. The exit status is 1 when lnrs misses it,
0 when it meets it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from typing import Callable

import numpy as np

from . import testing
from ._checks import resolve_dtype
from ._functional import layer_norm_forward as _lnrs_forward
from ._fused import add_layer_norm as _lnrs_add_layer_norm
from ._fused import add_rms_norm as _lnrs_add_rms_norm
from ._rms_norm import rms_norm_forward as _lnrs_rms_forward

PEER_NAMES = tuple(testing.PEERS)
DTYPES = ("float32", "float64", "float16", "bfloat16")
OPS = ("layer_norm", "rms_norm", "fused")
INSTALL = {"numpy": "numpy", "onnxruntime": "onnx onnxruntime", "torch": "torch"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `check` options, on a parser or subparser."""
    parser.add_argument(
        "--against",
        nargs="*",
        choices=PEER_NAMES,
        default=list(PEER_NAMES),
        metavar="PEER",
        help=f"peers to measure too, among {', '.join(PEER_NAMES)} (default: all; "
        "absent ones are reported as absent)",
    )
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=DTYPES,
        default=["float32"],
        metavar="DTYPE",
        help="input dtypes to check, among " + ", ".join(DTYPES) + " (default: float32; "
        "bfloat16 is ml_dtypes')",
    )
    parser.add_argument(
        "--ops",
        nargs="+",
        choices=OPS,
        default=list(OPS),
        metavar="OP",
        help="tables to print, among " + ", ".join(OPS) + " (default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller cases (rows of 2**12 and 2**14 instead of 2**16 and 2**20)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random cases")
    parser.add_argument(
        "--case",
        action="append",
        metavar="TEXT",
        help="only cases whose name contains TEXT (repeatable)",
    )


def _cell(value: float, flag: str = "") -> str:
    """An ulp count for the table: 3 digits below 100, 2 above; "<0.01" below 0.01 (an
    error of a few subnormal units, tiny in ulps of the floor, not as 2.28e-305)."""
    if math.isnan(value):
        text = "nan"
    elif math.isinf(value):
        text = "inf"
    elif value == 0:
        text = "0"
    elif value < 0.01:
        text = "<0.01"
    elif value < 100:
        text = f"{value:.3g}"
    else:
        text = f"{value:.2g}"
    return text + flag


def _goal(case: testing.Case, dtype: np.dtype) -> float:
    return 0.0 if "exact" in case.tags else testing.goal_ulp(dtype)


def _stats_error(got, ref) -> float:
    """Worst ulp error of a statistic over the rows where the reference is finite."""
    got, ref = np.asarray(got).reshape(-1), np.asarray(ref).reshape(-1)
    keep = np.isfinite(ref)
    if not keep.any():
        return 0.0
    return testing.ulp_error(got[keep], ref[keep], floor=0.0)


def _cases(dtype: np.dtype, seed: int, quick: bool, only) -> dict:
    cases = testing.adversarial_inputs(dtype, seed, quick=quick)
    if only:
        cases = {k: c for k, c in cases.items() if any(t in k for t in only)}
    return cases


def _print_table(header: list[str], table: list[list[str]], out) -> None:
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    for r in [header, *table]:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(r[2:], widths[2:])]
        print("  ".join(cells).rstrip(), file=out)


def _peer_cell(result: testing.CaseResult) -> str:
    if result.error is not None:
        return "n/a" if result.unsupported else "error"
    return _cell(result.max_ulp, "!" if result.nonfinite else "")


def _norm_table(
    kind: str,
    dtype: np.dtype,
    cases: dict,
    peers: dict[str, Callable | None],
    forward: Callable,
    out,
) -> list[str]:
    """One ulp table, for LayerNorm (``kind="layer_norm"``) or RMSNorm (``"rms_norm"``);
    lnrs's misses (empty: goal met)."""
    rms = kind == "rms_norm"
    stats_name = "rstd" if rms else "mean/rstd"
    present = [name for name, fn in peers.items() if fn is not None]
    header = ["case", "shape", "goal", "lnrs", stats_name, *present]
    table, misses, worst, worst_stats = [], [], 0.0, 0.0
    peer_worst = {name: (0.0, 0, 0) for name in present}
    for name, case in cases.items():
        if rms:
            ref_y, ref_rstd = case.rms_reference()
            ref_stats = (ref_rstd,)
            goal = testing.goal_ulp(dtype)
        else:
            ref_y, ref_mean, ref_rstd = case.reference()
            ref_stats = (ref_mean, ref_rstd)
            goal = _goal(case, dtype)
        try:
            with np.errstate(all="ignore"):
                result = forward(*(case.rms_args if rms else case.args))
            y, stats = np.asarray(result[0]), result[1:]
            if y.shape != ref_y.shape:
                raise ValueError(f"y has shape {y.shape}, expected {ref_y.shape}")
            if y.dtype != ref_y.dtype:
                raise ValueError(f"y has dtype {y.dtype}, expected {ref_y.dtype}")
            if len(stats) != len(ref_stats):
                raise ValueError(f"returned {len(result)} arrays, expected {1 + len(ref_stats)}")
            err, nonfinite = testing._measure(y, ref_y, case)
            stats_err = max(_stats_error(g, r) for g, r in zip(stats, ref_stats))
            failure = None
        except Exception as exc:  # noqa: BLE001 - a crash is a miss, reported
            err, nonfinite, stats_err, failure = math.inf, False, math.inf, exc
        missed = err > goal or stats_err > 1.0
        if failure is not None:
            misses.append(f"{name}: {type(failure).__name__}: {failure}")
        elif missed:
            misses.append(
                f"{name}: {_cell(err)} ulp (goal {_cell(goal)})"
                + (", NaN/Inf outside the non-finite rows" if nonfinite else "")
                + (f", {stats_name} {_cell(stats_err)} ulp (goal 1)" if stats_err > 1.0 else "")
            )
        worst, worst_stats = max(worst, err), max(worst_stats, stats_err)
        row = [
            name,
            "x".join(str(d) for d in case.x.shape),
            _cell(goal),
            _cell(err, ("!" if nonfinite else "") + ("*" if err > goal else "")),
            _cell(stats_err, "*" if stats_err > 1.0 else ""),
        ]
        for peer in present:
            result = testing.compare(peers[peer], [case], norm="rms" if rms else "layer")[name]
            row.append(_peer_cell(result))
            w, bad, na = peer_worst[peer]
            unsupported = result.unsupported
            peer_worst[peer] = (
                w if unsupported else max(w, result.max_ulp),
                bad + ((result.nonfinite or bool(result.error)) and not unsupported),
                na + unsupported,
            )
        table.append(row)

    goal = testing.goal_ulp(dtype)
    label = f"{dtype.name} {kind}"
    exact = "" if rms else "; exact rows 0"
    print(
        f"{label}: ulps of y against the exact, correctly rounded reference "
        f"(lnrs goal <= {goal:g}{exact}; {stats_name} <= 1)",
        file=out,
    )
    _print_table(header, table, out)
    n = len(table)
    if misses:
        print(
            f"lnrs {label}: MISSED its goal on {len(misses)} of {n} cases: " + "; ".join(misses),
            file=out,
        )
    else:
        print(
            f"lnrs {label}: goal met on all {n} cases "
            f"(max {_cell(worst)} ulp, {stats_name} max {_cell(worst_stats)} ulp)",
            file=out,
        )
    for peer in present:
        w, bad, na = peer_worst[peer]
        if na == n and n:
            print(f"  {peer}: n/a for {dtype.name}", file=out)
            continue
        extra = f", NaN/Inf or errors in {bad} cases" if bad else ""
        extra += f", n/a in {na} cases" if na else ""
        print(f"  {peer}: max {_cell(w)} ulp{extra}", file=out)
    for name, fn in peers.items():
        if fn is None:
            print(f"  {name}: absent (pip install {INSTALL.get(name, name)})", file=out)
    return misses


def check_dtype(
    dtype: np.dtype,
    peers: dict[str, Callable | None],
    *,
    quick: bool = False,
    seed: int = 0,
    only: list[str] | None = None,
    forward: Callable = _lnrs_forward,
    out=None,
) -> list[str]:
    """Print the LayerNorm table for one dtype; return lnrs's misses (empty: goal met).
    ``peers``: name -> ``fn(x, normalized_shape, weight, bias, eps) -> y`` or None (absent)."""
    dtype = np.dtype(dtype)
    return _norm_table(
        "layer_norm", dtype, _cases(dtype, seed, quick, only), peers, forward, out or sys.stdout
    )


def check_rms(
    dtype: np.dtype,
    peers: dict[str, Callable | None],
    *,
    quick: bool = False,
    seed: int = 0,
    only: list[str] | None = None,
    forward: Callable = _lnrs_rms_forward,
    out=None,
) -> list[str]:
    """Print the RMSNorm table for one dtype; return lnrs's misses. ``peers``: name ->
    ``fn(x, normalized_shape, weight, eps) -> y`` or None; ``forward`` returns ``(y, rstd)``."""
    dtype = np.dtype(dtype)
    return _norm_table(
        "rms_norm", dtype, _cases(dtype, seed, quick, only), peers, forward, out or sys.stdout
    )


def residual_for(case: testing.Case, seed: int = 0) -> np.ndarray:
    """The residual the fused check adds to ``case.x``: 0.5·N(0,1) in x's dtype,
    the same for the same case name and seed."""
    rng = np.random.default_rng([seed, zlib.crc32(case.name.encode())])
    return (0.5 * rng.standard_normal(case.x.shape)).astype(case.x.dtype)


def bit_differences(a, b) -> int:
    """Elements of ``a`` and ``b`` whose bits differ, NaN against NaN counting as equal."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return max(a.size, b.size, 1)
    uint = np.dtype(f"u{a.dtype.itemsize}")
    same = a.view(uint) == b.view(uint)
    with np.errstate(invalid="ignore"):
        same |= np.isnan(a.astype(np.float64)) & np.isnan(b.astype(np.float64))
    return int(a.size - np.count_nonzero(same))


def _fused_case(case, residual, fused, unfused, params) -> tuple[list[str], list[str]]:
    """Cells (s, y, in place) and miss descriptions for one fused op on one case."""
    x = case.x
    with np.errstate(all="ignore"):
        s_want = np.add(x, residual)
        y_want = np.asarray(unfused(s_want, case.normalized_shape, *params))
        y, s = fused(x, residual.copy(), case.normalized_shape, *params)
        r_in = residual.copy()
        y_out = np.empty_like(x)
        y2, s2 = fused(x, r_in, case.normalized_shape, *params, out=y_out, sum_out=r_in)
    cells, why = [], []
    for label, got, want in (("s", s, s_want), ("y", y, y_want)):
        diff = bit_differences(got, want)
        cells.append("=" if diff == 0 else f"{diff}*")
        if diff:
            why.append(f"{label} differs in {diff} elements")
    diff = bit_differences(y2, y) + bit_differences(s2, s)
    if y2 is not y_out or s2 is not r_in:
        why.append("in place: the outputs are not out and sum_out")
        diff = max(diff, 1)
    elif diff:
        why.append(f"in place differs in {diff} elements")
    cells.append("=" if diff == 0 else f"{diff}*")
    return cells, why


def check_fused(
    dtype: np.dtype,
    *,
    quick: bool = False,
    seed: int = 0,
    only: list[str] | None = None,
    add_layer_norm: Callable = _lnrs_add_layer_norm,
    add_rms_norm: Callable = _lnrs_add_rms_norm,
    out=None,
) -> list[str]:
    """Print the fused-op table for one dtype; return lnrs's misses (empty: bit for bit)."""
    import lnrs

    out = out or sys.stdout
    dtype = np.dtype(dtype)
    cases = _cases(dtype, seed, quick, only)
    header = ["case", "shape", "ln s", "ln y", "ln in place", "rms s", "rms y", "rms in place"]
    table, misses = [], []
    for name, case in cases.items():
        residual = residual_for(case, seed)
        row = [name, "x".join(str(d) for d in case.x.shape)]
        for op, fused, unfused, params in (
            ("add_layer_norm", add_layer_norm, lnrs.layer_norm, (case.weight, case.bias, case.eps)),
            ("add_rms_norm", add_rms_norm, lnrs.rms_norm, (case.weight, case.eps)),
        ):
            try:
                cells, why = _fused_case(case, residual, fused, unfused, params)
            except Exception as exc:  # noqa: BLE001 - a crash is a miss, reported
                cells, why = ["error*"] * 3, [f"{type(exc).__name__}: {exc}"]
            row += cells
            if why:
                misses.append(f"{name} {op}: {', '.join(why)}")
        table.append(row)
    print(
        f"{dtype.name} fused: add_layer_norm (ln) and add_rms_norm (rms) against x + residual "
        "and the unfused norm of it, bit for bit ('=' same bits, else the elements that "
        "differ; in place: out=, sum_out=residual)",
        file=out,
    )
    _print_table(header, table, out)
    n = len(table)
    if misses:
        print(
            f"lnrs {dtype.name} fused: MISSED its goal on {len(misses)} of {2 * n} case-ops: "
            + "; ".join(misses),
            file=out,
        )
    else:
        print(f"lnrs {dtype.name} fused: bit for bit on all {n} cases, both ops", file=out)
    return misses


def run(
    args: argparse.Namespace,
    *,
    forward: Callable | None = None,
    rms_forward: Callable | None = None,
    add_layer_norm: Callable | None = None,
    add_rms_norm: Callable | None = None,
    out=None,
) -> int:
    """Run the check the parsed `args` ask for. `forward` replaces
    `lnrs.layer_norm_forward` (returning `(y, mean, rstd)`), `rms_forward`
    `lnrs.rms_norm_forward` (`(y, rstd)`), `add_layer_norm` / `add_rms_norm` the
    fused ops, for testing the check."""
    out = out or sys.stdout
    names = list(dict.fromkeys(args.against))
    ops = list(dict.fromkeys(getattr(args, "ops", None) or OPS))
    peers = {name: testing.peer_fn(name) for name in names}
    rms_peers = {name: testing.peer_fn(name, "rms") for name in names}
    started = time.perf_counter()
    missed, printed = 0, False
    for dtype_name in dict.fromkeys(args.dtype):
        try:
            dtype = resolve_dtype(dtype_name)
        except ImportError as e:
            if printed:
                print(file=out)
            print(
                f"{dtype_name}: skipped, ml_dtypes is needed ({e}): pip install ml_dtypes", file=out
            )
            printed = True
            continue
        common = {"quick": args.quick, "seed": args.seed, "only": args.case, "out": out}
        for op in ops:
            if printed:
                print(file=out)
            printed = True
            if op == "layer_norm":
                misses = check_dtype(dtype, peers, forward=forward or _lnrs_forward, **common)
            elif op == "rms_norm":
                misses = check_rms(
                    dtype, rms_peers, forward=rms_forward or _lnrs_rms_forward, **common
                )
            else:
                misses = check_fused(
                    dtype,
                    add_layer_norm=add_layer_norm or _lnrs_add_layer_norm,
                    add_rms_norm=add_rms_norm or _lnrs_add_rms_norm,
                    **common,
                )
            missed += len(misses)
    verdict = f"lnrs missed its goal on {missed} cases" if missed else "lnrs met its goal"
    print(f"{verdict} ({time.perf_counter() - started:.1f} s)", file=out)
    return 1 if missed else 0


def main(
    argv: list[str] | None = None,
    *,
    forward: Callable | None = None,
    rms_forward: Callable | None = None,
    add_layer_norm: Callable | None = None,
    add_rms_norm: Callable | None = None,
    out=None,
) -> int:
    """`python -m lnrs check [options]` as a function: the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m lnrs check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(
        parser.parse_args(argv),
        forward=forward,
        rms_forward=rms_forward,
        add_layer_norm=add_layer_norm,
        add_rms_norm=add_rms_norm,
        out=out,
    )


if __name__ == "__main__":
    sys.exit(main())
