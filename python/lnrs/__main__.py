"""`python -m lnrs info`: what this build runs with; `bench`: how fast; `check`: how exact."""

from __future__ import annotations

import argparse
import platform
import sys

import numpy as np

import lnrs
from lnrs import _bench, _check, _lnrs


def info() -> int:
    rows = [
        ("lnrs", lnrs.__version__),
        ("simd level", lnrs.simd_level()),
        ("simd supported", ", ".join(_lnrs.supported_simd_levels())),
        ("threads", str(lnrs.get_num_threads())),
        ("numpy", np.__version__),
        ("python", platform.python_version()),
        ("machine", f"{platform.machine()} {platform.system()}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lnrs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, SIMD level and thread count")
    bench = sub.add_parser(
        "bench",
        help="time lnrs against the memory-bandwidth limit, NumPy, ONNX Runtime and PyTorch",
        description=_bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _bench.add_arguments(bench)
    check = sub.add_parser(
        "check",
        help="ulp errors of lnrs and its peers against the exact reference",
        description=_check.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _check.add_arguments(check)
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    if args.command == "bench":
        return _bench.main(args, bench)
    if args.command == "check":
        return _check.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
