"""LayerNorm as functions on NumPy arrays (the native kernels do the work)."""

from __future__ import annotations

import numpy as np

from . import _checks, _lnrs


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None):
    """Layer normalisation over the trailing ``normalized_shape`` axes of ``x``.

    For each row (the trailing axes, flattened) computes
    ``(x - mean) / sqrt(var + eps) * weight + bias`` with the biased variance,
    as ``torch.nn.functional.layer_norm`` and ONNX ``LayerNormalization``
    (``axis = x.ndim - len(normalized_shape)``).

    Parameters
    ----------
    x : array_like of float32 or float64
        Any layout; copied only when it is not C-contiguous.
    normalized_shape : int or sequence of int
        The trailing dimensions of ``x`` to normalise over.
    weight, bias : array_like, optional
        Of shape ``normalized_shape``; converted to ``x``'s dtype.
    eps : float, default 1e-5
        Added to the variance; finite and ``>= 0``.
    out : ndarray, optional
        Writeable, C-contiguous, of ``x``'s shape and dtype; may be ``x`` itself.

    Returns
    -------
    ndarray
        ``out`` if given, else a new array of ``x``'s shape and dtype.

    Notes
    -----
    Statistics are exact to the storage type: float32 accumulates in float64 and
    float64 in compensated float64, around a mean corrected in a second pass, so
    offset data loses nothing. A constant row gives exactly ``bias``. Results are
    bitwise the same whatever the thread count or batch.
    """
    return _forward(x, normalized_shape, weight, bias, eps, out, stats=False)[0]


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None):
    """:func:`layer_norm` that also returns the per-row statistics.

    Returns
    -------
    y : ndarray
        As :func:`layer_norm`.
    mean, rstd : ndarray
        Of shape ``x.shape[:x.ndim - len(normalized_shape)]``: each row's mean and
        ``1 / sqrt(var + eps)``; float32 for float32 input, float64 for float64.
        :func:`layer_norm_backward` takes them.
    """
    return _forward(x, normalized_shape, weight, bias, eps, out, stats=True)


def _forward(x, normalized_shape, weight, bias, eps, out, *, stats):
    x = _checks.float_array(x, "x")
    dims = _checks.normalized_shape(normalized_shape, x)
    eps = _checks.eps_value(eps)
    weight = _checks.parameter(weight, "weight", dims, x.dtype)
    bias = _checks.parameter(bias, "bias", dims, x.dtype)
    lead = x.shape[: x.ndim - len(dims)]
    rows = int(np.prod(lead, dtype=np.int64))
    cols = int(np.prod(dims, dtype=np.int64))

    src = np.ascontiguousarray(x)
    if out is None:
        y = np.empty(x.shape, dtype=x.dtype)
    else:
        y = _checks.out_array(out, x)
        if np.may_share_memory(src, y):
            if _same_memory(src, y):
                src = None  # in place: the kernel reads each chunk before writing it
            else:
                src = src.copy()
    stat_dtype = _checks.STAT_DTYPE[x.dtype]
    mean = np.empty(lead, dtype=stat_dtype) if stats else None
    rstd = np.empty(lead, dtype=stat_dtype) if stats else None
    _lnrs.layer_norm_forward(
        None if src is None else src.reshape(rows, cols),
        y.reshape(rows, cols),
        weight,
        bias,
        eps,
        None if mean is None else mean.reshape(-1),
        None if rstd is None else rstd.reshape(-1),
    )
    return y, mean, rstd


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two C-contiguous arrays of one shape and dtype are the same elements."""
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
