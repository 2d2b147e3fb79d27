"""`python -m lnrs check`: lnrs and its peers against the exact reference on adversarial inputs.

Runs every case of `lnrs.testing.adversarial_inputs` through lnrs and each
installed peer (NumPy's naive two-pass LayerNorm in the input dtype, ONNX
Runtime's LayerNormalization, PyTorch's layer_norm) and prints, per case, the
largest error of the output in ulps (`lnrs.testing.ulp_error`: units of the
output dtype's spacing at the exact value, floored at 2**-10) against the
correctly rounded exact result. A `!` marks NaN/Inf where the exact result is
finite; `*` marks an lnrs result that misses its goal.

lnrs's goal: float32 <= 2 ulp, float64 <= 16 ulp; constant and one-element rows
exactly `bias` (0 ulp); NaN/Inf only in the rows that hold them; the
`mean`/`rstd` of `layer_norm_forward` within 1 ulp (relative, no floor) on
finite rows. The exit status is 1 when lnrs misses it, 0 when it meets it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Callable

import numpy as np

from . import testing

PEER_NAMES = tuple(testing.PEERS)
DTYPES = ("float32", "float64")
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
        help="input dtypes to check (default: float32)",
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


def _lnrs_forward(x, normalized_shape, weight, bias, eps):
    import lnrs

    return lnrs.layer_norm_forward(x, normalized_shape, weight, bias, eps)


def _cell(value: float, flag: str = "") -> str:
    if math.isnan(value):
        text = "nan"
    elif math.isinf(value):
        text = "inf"
    elif value == 0:
        text = "0"
    elif value < 100:
        text = f"{value:.3g}"
    else:
        text = f"{value:.2g}"
    return text + flag


def _goal(case: testing.Case, dtype: np.dtype) -> float:
    return 0.0 if "exact" in case.tags else testing.GOAL_ULP[dtype]


def _stats_error(got, ref) -> float:
    """Worst ulp error of a statistic over the rows where the reference is finite."""
    got, ref = np.asarray(got).reshape(-1), np.asarray(ref).reshape(-1)
    keep = np.isfinite(ref)
    if not keep.any():
        return 0.0
    return testing.ulp_error(got[keep], ref[keep], floor=0.0)


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
    """Print the table for one dtype; return lnrs's misses (empty: goal met)."""
    out = out or sys.stdout
    cases = testing.adversarial_inputs(dtype, seed, quick=quick)
    if only:
        cases = {k: c for k, c in cases.items() if any(t in k for t in only)}
    present = [name for name, fn in peers.items() if fn is not None]
    header = ["case", "shape", "goal", "lnrs", "mean/rstd", *present]
    table, misses, worst, worst_stats = [], [], 0.0, 0.0
    peer_worst = {name: (0.0, 0) for name in present}
    for name, case in cases.items():
        ref_y, ref_mean, ref_rstd = case.reference()
        goal = _goal(case, dtype)
        try:
            with np.errstate(all="ignore"):
                y, mean, rstd = forward(*case.args)
            y = np.asarray(y)
            if y.shape != ref_y.shape:
                raise ValueError(f"y has shape {y.shape}, expected {ref_y.shape}")
            err = testing.ulp_error(y, ref_y)
            nonfinite = bool((~np.isfinite(y) & np.isfinite(ref_y)).any())
            stats = max(_stats_error(mean, ref_mean), _stats_error(rstd, ref_rstd))
            failure = None
        except Exception as exc:  # noqa: BLE001 - a crash is a miss, reported
            err, nonfinite, stats, failure = math.inf, False, math.inf, exc
        missed = err > goal or stats > 1.0
        if failure is not None:
            misses.append(f"{name}: {type(failure).__name__}: {failure}")
        elif missed:
            misses.append(
                f"{name}: {_cell(err)} ulp (goal {_cell(goal)})"
                + (", NaN/Inf outside the non-finite rows" if nonfinite else "")
                + (f", mean/rstd {_cell(stats)} ulp (goal 1)" if stats > 1.0 else "")
            )
        worst, worst_stats = max(worst, err), max(worst_stats, stats)
        row = [
            name,
            "x".join(str(d) for d in case.x.shape),
            _cell(goal),
            _cell(err, ("!" if nonfinite else "") + ("*" if err > goal else "")),
            _cell(stats, "*" if stats > 1.0 else ""),
        ]
        for peer in present:
            result = testing.compare(peers[peer], [case])[name]
            if result.error is not None:
                row.append("error")
            else:
                row.append(_cell(result.max_ulp, "!" if result.nonfinite else ""))
            w, bad = peer_worst[peer]
            peer_worst[peer] = (
                max(w, result.max_ulp),
                bad + (result.nonfinite or bool(result.error)),
            )
        table.append(row)

    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    goal = testing.GOAL_ULP[np.dtype(dtype)]
    print(
        f"{np.dtype(dtype).name}: ulps of the output against the exact, correctly rounded "
        f"reference (lnrs goal <= {goal:g}; exact rows 0; mean/rstd <= 1)",
        file=out,
    )
    for r in [header, *table]:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(r[2:], widths[2:])]
        print("  ".join(cells), file=out)
    n = len(table)
    if misses:
        print(
            f"lnrs {np.dtype(dtype).name}: MISSED its goal on {len(misses)} of {n} cases: "
            + "; ".join(misses),
            file=out,
        )
    else:
        print(
            f"lnrs {np.dtype(dtype).name}: goal met on all {n} cases "
            f"(max {_cell(worst)} ulp, mean/rstd max {_cell(worst_stats)} ulp)",
            file=out,
        )
    for peer in present:
        w, bad = peer_worst[peer]
        extra = f", NaN/Inf or errors in {bad} cases" if bad else ""
        print(f"  {peer}: max {_cell(w)} ulp{extra}", file=out)
    for name, fn in peers.items():
        if fn is None:
            print(f"  {name}: absent (pip install {INSTALL.get(name, name)})", file=out)
    return misses


def run(args: argparse.Namespace, *, forward: Callable | None = None, out=None) -> int:
    """Run the check the parsed `args` ask for. `forward` replaces
    `lnrs.layer_norm_forward` (returning `(y, mean, rstd)`), for testing the check."""
    out = out or sys.stdout
    peers = {name: testing.peer_fn(name) for name in dict.fromkeys(args.against)}
    started = time.perf_counter()
    missed = 0
    for i, dtype in enumerate(dict.fromkeys(args.dtype)):
        if i:
            print(file=out)
        misses = check_dtype(
            np.dtype(dtype),
            peers,
            quick=args.quick,
            seed=args.seed,
            only=args.case,
            forward=forward or _lnrs_forward,
            out=out,
        )
        missed += len(misses)
    verdict = f"lnrs missed its goal on {missed} cases" if missed else "lnrs met its goal"
    print(f"{verdict} ({time.perf_counter() - started:.1f} s)", file=out)
    return 1 if missed else 0


def main(argv: list[str] | None = None, *, forward: Callable | None = None, out=None) -> int:
    """`python -m lnrs check [options]` as a function: the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m lnrs check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv), forward=forward, out=out)


if __name__ == "__main__":
    sys.exit(main())
