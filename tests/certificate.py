"""An independent certificate of correct rounding, for the tests of lnrs.testing.

Every exact value the references round has the form  k·r + b  with k, b rational and
r = sqrt(inv_v) for a rational inv_v > 0 (or r = 1). Its position relative to a rational m is
decided by comparing squares, in exact rationals: no square root, no precision. The half
types' neighbours come from a table of every bit pattern, not from the code under test.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np


def sign_vs(k: Fraction, b: Fraction, inv_v: Fraction | None, m: Fraction) -> int:
    """sign(k·sqrt(inv_v) + b - m) (sqrt(inv_v) = 1 when inv_v is None)."""
    t = m - b
    if inv_v is None:
        v = k - t
        return (v > 0) - (v < 0)
    if k == 0:
        return (-t > 0) - (-t < 0)
    k2r2, t2 = k * k * inv_v, t * t
    if k > 0:
        return 1 if t <= 0 else (k2r2 > t2) - (k2r2 < t2)
    return -1 if t >= 0 else -((k2r2 > t2) - (k2r2 < t2))


@functools.cache
def value_table(dtype: np.dtype):
    """Every finite value of a 2-byte float type, ascending (-0 left out), and its bits."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    with np.errstate(invalid="ignore"):
        values = bits.view(dtype).astype(np.float64)
    keep = np.isfinite(values) & (bits != 0x8000)
    order = np.argsort(values[keep], kind="stable")
    return values[keep][order], bits[keep][order]


def neighbours(value: float, dtype: np.dtype):
    """(below, above, even) of a finite value of `dtype`; None past the ends."""
    if dtype.itemsize == 2:
        values, bits = value_table(dtype)
        i = int(np.searchsorted(values, value))
        assert values[i] == value
        below = values[i - 1] if i > 0 else None
        above = values[i + 1] if i + 1 < values.size else None
        return below, above, int(bits[i]) % 2 == 0
    v = np.asarray(value, dtype)
    below, above = np.nextafter(v, dtype.type(-np.inf)), np.nextafter(v, dtype.type(np.inf))
    even = int(v.view(np.int32 if dtype == np.float32 else np.int64)) % 2 == 0
    return (
        float(below) if np.isfinite(below) else None,
        float(above) if np.isfinite(above) else None,
        even,
    )


def largest(dtype: np.dtype) -> tuple[Fraction, Fraction]:
    """The largest finite value and the overflow threshold (past it: inf)."""
    if dtype.itemsize == 2:
        values = value_table(dtype)[0]
        top, before = Fraction(float(values[-1])), Fraction(float(values[-2]))
    else:
        top = Fraction(float(np.finfo(dtype).max))
        before = Fraction(float(np.nextafter(np.finfo(dtype).max, dtype.type(0))))
    return top, top + (top - before) / 2


def certify(value, dtype, k, b=Fraction(0), inv_v=None) -> None:
    """Assert that `value` (of `dtype`) is k·sqrt(inv_v) + b correctly rounded."""
    dtype = np.dtype(dtype)
    value = float(np.asarray(value).astype(np.float64))
    _, overflow = largest(dtype)
    if math.isinf(value):
        side = sign_vs(k, b, inv_v, overflow if value > 0 else -overflow)
        assert side == 0 or side == (1 if value > 0 else -1), f"{value!r} should be finite"
        return
    assert math.isfinite(value), value
    v = Fraction(value)
    below, above, even = neighbours(value, dtype)
    lo = (v + Fraction(below)) / 2 if below is not None else -overflow
    hi = (v + Fraction(above)) / 2 if above is not None else overflow
    s_lo, s_hi = sign_vs(k, b, inv_v, lo), sign_vs(k, b, inv_v, hi)
    assert s_lo > 0 or (s_lo == 0 and even), f"{value!r} is above the exact value's rounding"
    assert s_hi < 0 or (s_hi == 0 and even), f"{value!r} is below the exact value's rounding"
