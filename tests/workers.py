"""Fresh interpreters, for what lnrs reads at import (LNRS_NUM_THREADS, LNRS_SIMD) and for
bits compared across those settings: each sees only the LNRS_* variables it is given."""

from __future__ import annotations

import os
import subprocess
import sys

# The start of a worker script: its imports and digest(*arrays), a hash of the arrays'
# dtypes, shapes and bytes that a worker prints for the test to compare.
PRELUDE = r"""
import hashlib, json, sys
import numpy as np
import lnrs

def digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
"""


def env(**settings) -> dict[str, str]:
    """This process's environment without LNRS_*, plus `settings`."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("LNRS_")}
    out.update({k: str(v) for k, v in settings.items()})
    return out


def python(*args: str, timeout: float = 60, **settings) -> subprocess.CompletedProcess:
    """`python *args` (e.g. "-c", code) with `settings` as its only LNRS_* variables."""
    return subprocess.run(
        [sys.executable, *args],
        env=env(**settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
