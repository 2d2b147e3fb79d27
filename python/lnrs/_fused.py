"""Residual add fused with the norm, as transformer blocks call it."""

from __future__ import annotations

import numpy as np

from . import _checks, _lnrs
from ._rms_norm import _eps


def add_layer_norm(
    x, residual, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None, sum_out=None
):
    """``s = x + residual`` and ``y = layer_norm(s, ...)`` in one pass over memory.

    ONNX Runtime's SkipLayerNormalization. ``s`` is rounded to the input dtype, as
    ``x + residual`` in NumPy, and ``y`` is bit for bit ``layer_norm(s, ...)``.

    Parameters
    ----------
    x, residual : array_like of float32 or float64
        Of one shape and dtype.
    normalized_shape, weight, bias, eps :
        As :func:`lnrs.layer_norm`.
    out : ndarray, optional
        Where ``y`` goes; may be ``x`` itself.
    sum_out : ndarray, optional
        Where ``s`` goes; may be ``residual`` itself (the residual stream updated
        in place, as inference servers keep it).

    Returns
    -------
    y, s : ndarray
    """
    result = _lnrs.add_norm_forward(
        False, x, residual, normalized_shape, weight, bias, eps, out, sum_out
    )
    if result is None:
        cuda = _checks.cuda_backend(x)
        if cuda is not None:
            return cuda.add_layer_norm(
                x, residual, normalized_shape, weight, bias, eps, out=out, sum_out=sum_out
            )
        result = _add_checked(False, x, residual, normalized_shape, weight, bias, eps, out, sum_out)
    return result


def add_rms_norm(x, residual, normalized_shape, weight=None, eps=None, *, out=None, sum_out=None):
    """``s = x + residual`` and ``y = rms_norm(s, ...)`` in one pass over memory
    (vLLM's ``fused_add_rms_norm``); arguments as :func:`add_layer_norm`, ``eps``
    as :func:`lnrs.rms_norm`.

    Returns
    -------
    y, s : ndarray
    """
    result = _lnrs.add_norm_forward(
        True, x, residual, normalized_shape, weight, None, _eps(x, eps), out, sum_out
    )
    if result is None:
        cuda = _checks.cuda_backend(x)
        if cuda is not None:
            return cuda.add_rms_norm(
                x, residual, normalized_shape, weight, _eps(x, eps), out=out, sum_out=sum_out
            )
        x = _checks.float_array(x, "x")  # once, and the default eps from its dtype
        result = _add_checked(
            True, x, residual, normalized_shape, weight, None, _eps(x, eps), out, sum_out
        )
    return result


def _add_checked(rms, x, residual, normalized_shape, weight, bias, eps, out, sum_out):
    """Check and convert the arguments into what the native fast path takes."""
    x = _checks.float_array(x, "x")
    dims = _checks.normalized_shape(normalized_shape, x)
    residual = _checks.like_x(residual, x, "residual")
    eps = _checks.eps_value(eps)
    weight = _checks.parameter(weight, "weight", dims, x.dtype)
    bias = _checks.parameter(bias, "bias", dims, x.dtype)
    if out is not None:
        out = _checks.out_array(out, x, "out")
    if sum_out is not None:
        sum_out = _checks.out_array(sum_out, x, "sum_out")
    if out is not None and sum_out is not None and np.may_share_memory(out, sum_out):
        raise ValueError("out and sum_out must not overlap")
    outputs = [out, sum_out]
    weight = None if weight is None else _checks.apart(weight, outputs)
    bias = None if bias is None else _checks.apart(bias, outputs)
    x = _checks.apart(_checks.c_aligned(x), outputs, in_place=out)
    residual = _checks.apart(residual, outputs, in_place=sum_out)
    result = _lnrs.add_norm_forward(rms, x, residual, dims, weight, bias, eps, out, sum_out)
    if result is None:
        raise AssertionError("lnrs: the native fast path declined checked arguments")
    return result
