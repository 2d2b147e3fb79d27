"""Argument checks shared by the public functions.

Every failure names the argument, what was expected and what came.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np

from ._dlpack import KDL_CPU, bfloat16_view

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
# Storage dtypes the native kernels take, and the dtype of their mean/rstd
# (and, for the half types, of dweight/dbias). bfloat16 is ml_dtypes' dtype,
# known by name so that lnrs imports ml_dtypes only to read a bfloat16 DLPack tensor.
STAT_DTYPE = {F32: F32, F64: F64, np.dtype(np.float16): F32}
DTYPES = "float16, bfloat16, float32 or float64"


def is_bfloat16(dtype: np.dtype) -> bool:
    return dtype.name == "bfloat16" and dtype.itemsize == 2


def stat_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype of mean/rstd for storage `dtype`."""
    return F32 if is_bfloat16(dtype) else STAT_DTYPE[dtype]


def is_half(dtype: np.dtype) -> bool:
    return dtype == np.float16 or is_bfloat16(dtype)


def resolve_dtype(name: str) -> np.dtype:
    """The dtype named ``name``; bfloat16 is ml_dtypes' (ImportError without it)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def is_storage(dtype: np.dtype) -> bool:
    """Whether the kernels take `dtype` as it is."""
    return dtype in STAT_DTYPE or is_bfloat16(dtype)


def c_aligned(a: np.ndarray) -> np.ndarray:
    """`a` when C-contiguous and aligned (what the kernels read), else a copy that is.
    Not np.ascontiguousarray, which keeps misalignment and turns 0-d into 1-d."""
    if a.flags.c_contiguous and a.flags.aligned:
        return a
    return np.array(a, order="C", copy=True)


def bfloat16_or_error(x, name: str, error: str) -> np.ndarray:
    """`x`, which NumPy failed to read, by lnrs's own DLPack reader when it is a
    bfloat16 tensor (NumPy cannot read those); else TypeError(`error`), NumPy's
    failure told in the caller's words."""
    view = bfloat16_view(x, name) if hasattr(x, "__dlpack__") else None
    if view is None:
        raise TypeError(error)
    return view


def float_array(x, name: str) -> np.ndarray:
    """`x` as an ndarray of a supported float dtype: without copying an ndarray
    or a DLPack or buffer-protocol producer on the CPU (unless its byte order
    is not the machine's). A bfloat16 DLPack tensor, which NumPy cannot read,
    becomes an ml_dtypes.bfloat16 view through lnrs's own reader."""
    if not isinstance(x, np.ndarray):
        if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
            device = x.__dlpack_device__()
            if int(device[0]) != KDL_CPU:
                raise TypeError(
                    f"{name} must be on the CPU (DLPack device type {KDL_CPU}), "
                    f"got device {tuple(device)}"
                )
        try:
            x = np.from_dlpack(x) if hasattr(x, "__dlpack__") else np.asarray(x)
        except (TypeError, ValueError, BufferError, RuntimeError) as e:
            error = f"{name} must be an array of {DTYPES}, got {type(x).__name__}: {e}"
        else:
            error = None
        if error is not None:
            x = bfloat16_or_error(x, name, error)
    if not is_storage(x.dtype):
        native = x.dtype.newbyteorder("=") if x.dtype.kind == "f" else None
        if native is None or not is_storage(native):
            raise TypeError(f"{name} must have dtype {DTYPES}, got {x.dtype}")
        x = x.astype(native)
    return x


def shape_tuple(shape) -> tuple[int, ...]:
    """`normalized_shape` as a tuple of non-negative ints."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        dims = (operator.index(shape),)
    elif isinstance(shape, (Sequence, np.ndarray)) and not isinstance(shape, str):
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
    if any(d < 0 for d in dims):
        raise ValueError(f"normalized_shape must hold sizes >= 0, got {dims}")
    return dims


def normalized_shape(shape, x: np.ndarray) -> tuple[int, ...]:
    """`shape` as a tuple, checked to be the trailing dimensions of `x`."""
    dims = shape_tuple(shape)
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
    try:
        value = float(eps)
    except OverflowError:
        value = math.inf
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return value


def parameter(p, name: str, dims: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """A weight or bias as a C-contiguous array of shape `dims`, or None: in the
    input's `dtype`, or for half-precision input in float32 unless it already
    is in that half type (the kernels take both, and a float32 weight should
    not lose bits to float16)."""
    if p is None:
        return None
    if not isinstance(p, np.ndarray):
        try:
            p = np.asarray(p)
        except (TypeError, ValueError) as e:
            error = f"{name} must be an array of real numbers: {e}"
        else:
            error = None
        if error is not None:  # as a torch bfloat16 tensor is
            p = bfloat16_or_error(p, name, error)
    if p.dtype.kind not in "biuf" and not is_bfloat16(p.dtype):
        raise TypeError(f"{name} must hold real numbers, got dtype {p.dtype}")
    if p.shape != dims:
        raise ValueError(f"{name} must have shape {dims} (normalized_shape), got {p.shape}")
    if is_half(dtype) and p.dtype != dtype:
        dtype = F32
    return c_aligned(p.astype(dtype, copy=False))


def matches_x(a, x, name: str) -> None:
    """Raises unless `a` has x's shape and dtype (NumPy or CuPy arrays)."""
    if a.shape != x.shape:
        raise ValueError(f"{name} must have shape {x.shape} (that of x), got {a.shape}")
    if a.dtype != x.dtype:
        raise ValueError(f"{name} must have dtype {x.dtype} (that of x), got {a.dtype}")


def output_for(o, x, name: str) -> None:
    """Raises unless the output `o` has x's shape and dtype and is C-contiguous (NumPy or
    CuPy arrays)."""
    matches_x(o, x, name)
    if not o.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


def out_array(out, x: np.ndarray, name: str = "out") -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    output_for(out, x, name)
    if not out.flags.aligned:
        raise ValueError(f"{name} must be aligned to its dtype")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return out


def _host_address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def apart(a, outputs, in_place=None, *, overlap=np.may_share_memory, address=_host_address):
    """`a` as a kernel may read it while it writes `outputs` (C-contiguous
    arrays, None skipped): `a` itself when no output overlaps it; the output
    `in_place` when `a` is exactly its elements (the kernels read each chunk
    before writing it); else a copy. `overlap` and `address` (where an array's
    data starts) are NumPy's by default; lnrs.cuda passes CuPy's."""
    for o in outputs:
        if o is not None and overlap(a, o):
            return o if o is in_place and address(a) == address(o) else a.copy()
    return a


def like_x(a, x: np.ndarray, name: str) -> np.ndarray:
    """An input that must match `x` in shape and dtype (as `dy` does), C-contiguous."""
    a = float_array(a, name)
    matches_x(a, x, name)
    return c_aligned(a)


def row_stat(
    a, name: str, lead: tuple[int, ...], x: np.ndarray, producer: str = "layer_norm_forward"
) -> np.ndarray:
    """A per-row statistic as `producer` returns it for `x`."""
    dtype = stat_dtype(x.dtype)
    if not isinstance(a, np.ndarray):
        try:
            a = np.asarray(a)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be an array as {producer} returns: {e}") from None
    stat_matches(a, name, lead, dtype, x, producer)
    return c_aligned(a)


def stat_matches(a, name: str, lead, dtype, x, producer: str) -> None:
    """Raises unless the per-row statistic `a` has shape `lead` and dtype `dtype`, as
    `producer` returns them for `x` (NumPy or CuPy arrays)."""
    if a.shape != lead or a.dtype != dtype:
        raise ValueError(
            f"{name} must have shape {lead} and dtype {dtype}, as {producer} returns "
            f"for x of shape {x.shape} and dtype {x.dtype}; got shape {a.shape} and dtype {a.dtype}"
        )


def cuda_backend(x):
    """`lnrs.cuda` when `x` is a CuPy array (CuPy is imported only then), else None.
    Asked only after the native fast path declined `x`, so NumPy calls never pay."""
    if type(x).__module__.split(".", 1)[0] == "cupy":
        from . import cuda

        return cuda
    return None
