"""RMSNorm as functions on NumPy arrays."""

from __future__ import annotations

import numpy as np

from . import _checks, _lnrs
from ._functional import backward_checked, forward_checked

# torch.nn.functional.rms_norm's default eps: the machine epsilon of x's dtype.
_DEFAULT_EPS = {np.dtype(t): float(np.finfo(t).eps) for t in (np.float16, np.float32, np.float64)}


def _eps(x, eps):
    """`eps`, or the default for `x`'s NumPy dtype; None when `x` has none of the
    float dtypes (not yet an array: the checked path reads it, then asks again; or
    not a float one: the argument checks then report `x`)."""
    if eps is not None:
        return eps
    dtype = getattr(x, "dtype", None)
    if dtype in _DEFAULT_EPS:
        return _DEFAULT_EPS[dtype]
    if isinstance(dtype, np.dtype) and dtype.kind == "f":
        return float(np.finfo(dtype).eps)
    if isinstance(dtype, np.dtype) and _checks.is_bfloat16(dtype):
        return 2.0**-7  # bfloat16's machine epsilon (NumPy's finfo does not know it)
    return None


def rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None):
    """Root-mean-square normalisation over the trailing ``normalized_shape`` axes.

    For each row computes ``x / sqrt(mean(x**2) + eps) * weight``, as
    ``torch.nn.functional.rms_norm`` and ONNX ``RMSNormalization``
    (``axis = x.ndim - len(normalized_shape)``).

    Parameters
    ----------
    x : array_like of float32 or float64
    normalized_shape : int or sequence of int
        The trailing dimensions of ``x`` to normalise over.
    weight : array_like, optional
        Of shape ``normalized_shape``; converted to ``x``'s dtype.
    eps : float, optional
        Added to the mean square; default ``np.finfo(x.dtype).eps`` (as PyTorch).
    out : ndarray, optional
        Writeable, C-contiguous, of ``x``'s shape and dtype; may be ``x`` itself.

    Returns
    -------
    ndarray
        ``out`` if given, else a new array.

    Notes
    -----
    The mean square accumulates in float64 (compensated for float64 input, with
    a power-of-two rescale where squares would overflow or underflow), and
    ``1/sqrt`` is refined by a Newton step, so ``rstd`` is within about an ulp.
    """
    y = _lnrs.rms_norm_forward(x, normalized_shape, weight, _eps(x, eps), out, False)
    if y is None:
        cuda = _checks.cuda_backend(x)
        if cuda is not None:
            return cuda.rms_norm(x, normalized_shape, weight, _eps(x, eps), out=out)
        x = _checks.float_array(x, "x")  # once, and the default eps from its dtype
        y = forward_checked(_native, x, normalized_shape, weight, None, _eps(x, eps), out, False)
    return y


def rms_norm_forward(x, normalized_shape, weight=None, eps=None, *, out=None):
    """:func:`rms_norm` that also returns each row's ``rstd = 1/sqrt(mean(x**2) + eps)``
    (float32 for float32 input, float64 for float64), which
    :func:`rms_norm_backward` takes.

    Returns
    -------
    y, rstd : ndarray
    """
    result = _lnrs.rms_norm_forward(x, normalized_shape, weight, _eps(x, eps), out, True)
    if result is None:
        cuda = _checks.cuda_backend(x)
        if cuda is not None:
            return cuda.rms_norm_forward(x, normalized_shape, weight, _eps(x, eps), out=out)
        x = _checks.float_array(x, "x")  # once, and the default eps from its dtype
        result = forward_checked(
            _native, x, normalized_shape, weight, None, _eps(x, eps), out, True
        )
    return result


def rms_norm_backward(dy, x, rstd, normalized_shape, weight=None, *, eps=None):
    """Gradients of :func:`rms_norm` with respect to ``x`` and ``weight``.

    Parameters
    ----------
    dy : array_like
        ``x``'s shape and dtype.
    x : array_like of float32 or float64
    rstd : ndarray
        As :func:`rms_norm_forward` returned it.
    normalized_shape : int or sequence of int
    weight : array_like, optional
    eps : float, optional
        The forward pass's eps (its default is not assumed): given, ``rstd`` is
        recomputed from ``x`` in the wide type, as in :func:`lnrs.layer_norm_backward`.

    Returns
    -------
    dx : ndarray
        ``x``'s shape and dtype: ``rstd·(g − x·rstd²·mean(g·x))`` with ``g = dy·weight``.
    dweight : ndarray
        ``normalized_shape``, ``x``'s dtype: ``Σ_rows dy·x·rstd``, always returned.

    Notes
    -----
    Matches autograd through ``torch.nn.functional.rms_norm``; sums in float64,
    ``dweight`` over fixed blocks of rows in a fixed order (deterministic).
    """
    result = _lnrs.norm_backward(dy, x, None, rstd, normalized_shape, weight, eps)
    if result is None:
        cuda = _checks.cuda_backend(x)
        if cuda is not None:
            return cuda.rms_norm_backward(dy, x, rstd, normalized_shape, weight, eps=eps)
        result = backward_checked(dy, x, None, rstd, normalized_shape, weight, eps, centred=False)
    return result


def _native(x, dims, weight, bias, eps, out, stats):
    return _lnrs.rms_norm_forward(x, dims, weight, eps, out, stats)
