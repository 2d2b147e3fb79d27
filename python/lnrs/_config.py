"""Threads and SIMD level, and the environment variables that set them at import."""

from __future__ import annotations

import operator
import os

from . import _lnrs

# More threads than this is a typo, not a machine.
MAX_THREADS = 1 << 16


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (>= 1) for large inputs from now on.

    Safe while other threads compute: calls already running finish on the old pool.
    Results do not depend on the thread count.
    """
    if isinstance(n, bool):
        raise TypeError("n must be an int, got bool")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be an int, got {type(n).__name__}") from None
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"n must be between 1 and {MAX_THREADS}, got {n}")
    _lnrs.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads large inputs are split over."""
    return _lnrs.get_num_threads()


def simd_level() -> str:
    """The SIMD level the kernels run at: ``avx512``, ``avx2``, ``neon`` or ``scalar``."""
    return _lnrs.simd_level()


def from_environment() -> None:
    """Apply ``LNRS_NUM_THREADS`` and ``LNRS_SIMD``; a bad value is an error, not a guess."""
    threads = os.environ.get("LNRS_NUM_THREADS", "").strip()
    if threads:
        try:
            n = int(threads)
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_THREADS:
            raise ValueError(
                f"LNRS_NUM_THREADS must be an integer between 1 and {MAX_THREADS}, got {threads!r}"
            )
        _lnrs.set_num_threads(n)
    level = os.environ.get("LNRS_SIMD", "").strip().lower()
    if level:
        try:
            _lnrs.set_simd_level(level)
        except ValueError as e:
            raise ValueError(f"LNRS_SIMD: {e}") from None
