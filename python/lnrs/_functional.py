"""LayerNorm as functions on NumPy arrays (the native kernels do the work)."""

from __future__ import annotations

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
    y = _lnrs.layer_norm_forward(x, normalized_shape, weight, bias, eps, out, False)
    if y is None:
        cuda = _checks.cuda_backend(x)
        if cuda is not None:
            return cuda.layer_norm(x, normalized_shape, weight, bias, eps, out=out)
        y = forward_checked(_layer_norm_native, x, normalized_shape, weight, bias, eps, out, False)
    return y


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
    result = _lnrs.layer_norm_forward(x, normalized_shape, weight, bias, eps, out, True)
    if result is None:
        cuda = _checks.cuda_backend(x)
        if cuda is not None:
            return cuda.layer_norm_forward(x, normalized_shape, weight, bias, eps, out=out)
        result = forward_checked(
            _layer_norm_native, x, normalized_shape, weight, bias, eps, out, True
        )
    return result


def layer_norm_backward(dy, x, mean, rstd, normalized_shape, weight=None, *, eps=None):
    """Gradients of :func:`layer_norm` with respect to ``x``, ``weight`` and ``bias``.

    Parameters
    ----------
    dy : array_like
        The gradient of the loss with respect to the output; ``x``'s shape and dtype.
    x : array_like of float32 or float64
        The forward pass's input.
    mean, rstd : ndarray
        As :func:`layer_norm_forward` returned them for ``x``.
    normalized_shape : int or sequence of int
    weight : array_like, optional
        The forward pass's weight, of shape ``normalized_shape``.
    eps : float, optional
        The forward pass's eps. Given, each row's ``rstd`` is recomputed from
        ``x`` in the wide type (``rstd`` is then only checked), so ``dx`` and
        ``dweight`` are those of the exact function: the ``rstd`` that
        :func:`layer_norm_forward` returns is rounded to float32 for float32
        input, and the gradient magnifies that rounding where the variance is
        small next to ``eps``. Without it, ``rstd`` is used as given, as
        PyTorch does.

    Returns
    -------
    dx : ndarray
        ``x``'s shape and dtype.
    dweight, dbias : ndarray
        Of shape ``normalized_shape`` and ``x``'s dtype; always returned. Without a
        weight, ``dweight`` is what a weight of ones would get: ``Σ dy·xhat``.

    Notes
    -----
    Matches autograd through ``torch.nn.functional.layer_norm``. One pass per row
    reads ``x`` and ``dy`` and writes ``dx``; sums accumulate in float64 (compensated
    for float64 input). ``mean`` serves as a shift that the kernel corrects by
    ``Σ(x − mean)/n`` in the wide type, recovering the digits lost when the mean
    was rounded to float32. ``dweight`` and ``dbias`` add the rows in fixed blocks
    in a fixed order: bitwise the same for any thread count.
    """
    # The native call reads a missing mean as RMSNorm's: LayerNorm's must have one.
    result = (
        None
        if mean is None
        else _lnrs.norm_backward(dy, x, mean, rstd, normalized_shape, weight, eps)
    )
    if result is None:
        cuda = _checks.cuda_backend(x)
        if cuda is not None:
            return cuda.layer_norm_backward(dy, x, mean, rstd, normalized_shape, weight, eps=eps)
        result = backward_checked(dy, x, mean, rstd, normalized_shape, weight, eps, centred=True)
    return result


def backward_checked(dy, x, mean, rstd, normalized_shape, weight, eps, *, centred):
    """Check and convert the arguments of a backward call, then run it: LayerNorm's
    (`centred`), or RMSNorm's (no mean, no dbias)."""
    x = _checks.float_array(x, "x")
    dims = _checks.normalized_shape(normalized_shape, x)
    dy = _checks.like_x(dy, x, "dy")
    lead = x.shape[: x.ndim - len(dims)]
    mean = _checks.row_stat(mean, "mean", lead, x) if centred else None
    producer = "layer_norm_forward" if centred else "rms_norm_forward"
    rstd = _checks.row_stat(rstd, "rstd", lead, x, producer)
    weight = _checks.parameter(weight, "weight", dims, x.dtype)
    eps = None if eps is None else _checks.eps_value(eps)
    result = _lnrs.norm_backward(dy, _checks.c_aligned(x), mean, rstd, dims, weight, eps)
    if result is None:
        raise AssertionError("lnrs: the native fast path declined checked arguments")
    return result


def _layer_norm_native(x, dims, weight, bias, eps, out, stats):
    return _lnrs.layer_norm_forward(x, dims, weight, bias, eps, out, stats)


def forward_checked(native, x, normalized_shape, weight, bias, eps, out, stats):
    """The general path: check and convert every argument into the form the
    native fast path `native` takes, then call it (it declined them as given)."""
    x = _checks.float_array(x, "x")
    dims = _checks.normalized_shape(normalized_shape, x)
    eps = _checks.eps_value(eps)
    weight = _checks.parameter(weight, "weight", dims, x.dtype)
    bias = _checks.parameter(bias, "bias", dims, x.dtype)
    if out is not None:
        out = _checks.out_array(out, x)
    # Parameters are read for every row: kept out of the way of the output.
    weight = None if weight is None else _checks.apart(weight, [out])
    bias = None if bias is None else _checks.apart(bias, [out])
    src = _checks.apart(_checks.c_aligned(x), [out], in_place=out)
    result = native(src, dims, weight, bias, eps, out, stats)
    if result is None:
        raise AssertionError("lnrs: the native fast path declined checked arguments")
    return result
