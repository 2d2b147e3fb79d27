"""LayerNorm / RMSNorm on CuPy arrays, with CUDA kernels compiled by NVRTC on first use.

Importing this module imports CuPy (``import lnrs`` never does). The functions mirror
:mod:`lnrs`'s (same arguments and results) on ``cupy.ndarray`` inputs of float32, float64,
float16 or bfloat16, and return CuPy arrays on the input's device, launched on the current
stream. mean/rstd (and, for the half types, dweight/dbias) are float32; float64 for float64.

Numerics: fp32 accumulation (fp64 for float64) with two-pass statistics on a row held in
registers; results are deterministic for a given device and shape, whatever the alignment
(dweight/dbias are per-CTA partials added in a fixed order, no atomics). Kernels are compiled
by NVRTC on first use and cached on disk (see ``_compile``).

:func:`compile_all` compiles every kernel variant with NVRTC and needs no GPU.
"""

from __future__ import annotations

import numpy as np

try:
    import cupy
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"lnrs.cuda needs CuPy (pip install 'lnrs[cuda12]'): {e}") from e

from ._compile import compile_all, nvrtc_version
from ._launch import backward, forward

__all__ = [
    "add_layer_norm",
    "add_rms_norm",
    "compile_all",
    "is_cupy_array",
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_forward",
    "nvrtc_version",
    "rms_norm",
    "rms_norm_backward",
    "rms_norm_forward",
]


def is_cupy_array(a) -> bool:
    return isinstance(a, cupy.ndarray)


def _rms_eps(x, eps):
    if eps is not None:
        return eps
    dt = getattr(x, "dtype", None)
    if dt is not None and np.dtype(dt).name == "bfloat16":
        return 2.0**-7
    if dt is not None and np.dtype(dt).kind == "f":
        return float(np.finfo(dt).eps)
    return None


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None):
    """:func:`lnrs.layer_norm` on a CuPy array."""
    y, *_ = forward(x, None, normalized_shape, weight, bias, eps, out, None, rms=False, stats=False)
    return y


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None):
    """:func:`lnrs.layer_norm_forward` on a CuPy array: ``(y, mean, rstd)``."""
    y, mean, rstd, _ = forward(
        x, None, normalized_shape, weight, bias, eps, out, None, rms=False, stats=True
    )
    return y, mean, rstd


def rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None):
    """:func:`lnrs.rms_norm` on a CuPy array (default eps: the machine epsilon of x's dtype)."""
    eps = _rms_eps(x, eps)
    y, *_ = forward(x, None, normalized_shape, weight, None, eps, out, None, rms=True, stats=False)
    return y


def rms_norm_forward(x, normalized_shape, weight=None, eps=None, *, out=None):
    """:func:`lnrs.rms_norm_forward` on a CuPy array: ``(y, rstd)``."""
    eps = _rms_eps(x, eps)
    y, _, rstd, _ = forward(
        x, None, normalized_shape, weight, None, eps, out, None, rms=True, stats=True
    )
    return y, rstd


def add_layer_norm(
    x, residual, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None, sum_out=None
):
    """:func:`lnrs.add_layer_norm` on CuPy arrays: ``(y, x + residual)``."""
    y, _, _, s = forward(
        x, residual, normalized_shape, weight, bias, eps, out, sum_out, rms=False, stats=False
    )
    return y, s


def add_rms_norm(x, residual, normalized_shape, weight=None, eps=None, *, out=None, sum_out=None):
    """:func:`lnrs.add_rms_norm` on CuPy arrays: ``(y, x + residual)``."""
    eps = _rms_eps(x, eps)
    y, _, _, s = forward(
        x, residual, normalized_shape, weight, None, eps, out, sum_out, rms=True, stats=False
    )
    return y, s


def layer_norm_backward(dy, x, mean, rstd, normalized_shape, weight=None, *, eps=None):
    """:func:`lnrs.layer_norm_backward` on CuPy arrays: ``(dx, dweight, dbias)``.

    With ``eps`` each row's mean and rstd are recomputed from ``x`` (in fp32, or fp64 for float64)
    and the given ones only checked; without it they are used as given (as PyTorch does).
    """
    if mean is None:
        raise ValueError("mean must be the array layer_norm_forward returned, got None")
    return backward(dy, x, mean, rstd, normalized_shape, weight, eps, rms=False)


def rms_norm_backward(dy, x, rstd, normalized_shape, weight=None, *, eps=None):
    """:func:`lnrs.rms_norm_backward` on CuPy arrays: ``(dx, dweight)``."""
    dx, dweight, _ = backward(dy, x, None, rstd, normalized_shape, weight, eps, rms=True)
    return dx, dweight
