"""Argument checks shared by the public functions.

Every failure names the argument, what was expected and what came.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np

# Storage dtypes the native kernels take, and the dtype of their mean/rstd.
STAT_DTYPE = {np.dtype(np.float32): np.dtype(np.float32), np.dtype(np.float64): np.dtype(np.float64)}


def float_array(x, name: str) -> np.ndarray:
    """`x` as an ndarray of a supported float dtype, without copying an ndarray."""
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be an array of float32 or float64, got {type(x).__name__}: {e}") from None
    if x.dtype not in STAT_DTYPE:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    return x


def normalized_shape(shape, x: np.ndarray) -> tuple[int, ...]:
    """`shape` as a tuple, checked to be the trailing dimensions of `x`."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        dims = (operator.index(shape),)
    elif isinstance(shape, Sequence) or isinstance(shape, np.ndarray):
        try:
            dims = tuple(operator.index(d) for d in shape)
        except TypeError:
            raise TypeError(
                f"normalized_shape must be an int or a sequence of ints, got {shape!r}"
            ) from None
    else:
        raise TypeError(
            f"normalized_shape must be an int or a sequence of ints, got {type(shape).__name__}"
        )
    if not dims:
        raise ValueError("normalized_shape must name at least one dimension, got ()")
    if len(dims) > x.ndim or x.shape[x.ndim - len(dims) :] != dims:
        raise ValueError(
            f"normalized_shape {dims} must equal the trailing dimensions of x, "
            f"but x has shape {x.shape}"
        )
    return dims


def eps_value(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    value = float(eps)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return value


def parameter(p, name: str, dims: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """A weight or bias as a flat C-contiguous array of `dtype`, or None."""
    if p is None:
        return None
    if not isinstance(p, np.ndarray):
        p = np.asarray(p)
    if p.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {p.dtype}")
    if p.shape != dims:
        raise ValueError(f"{name} must have shape {dims} (normalized_shape), got {p.shape}")
    return np.ascontiguousarray(p, dtype=dtype).reshape(-1)


def out_array(out, x: np.ndarray, name: str = "out") -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"{name} must have shape {x.shape} (that of x), got {out.shape}")
    if out.dtype != x.dtype:
        raise ValueError(f"{name} must have dtype {x.dtype} (that of x), got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return out
