"""`python -m lnrs info`: what this build runs with."""

from __future__ import annotations

import argparse
import platform
import sys

import numpy as np

import lnrs
from lnrs import _lnrs


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
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    return 2


if __name__ == "__main__":
    sys.exit(main())
