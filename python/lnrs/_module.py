"""`LayerNorm`: a layer holding its own weight and bias."""

from __future__ import annotations

import numpy as np

from . import _checks
from ._functional import layer_norm_backward, layer_norm_forward


class LayerNorm:
    """Layer normalisation over the trailing ``normalized_shape`` axes, with
    learnable ``weight`` (initially ones) and ``bias`` (initially zeros), as
    ``torch.nn.LayerNorm``.

    Parameters
    ----------
    normalized_shape : int or sequence of int
    eps : float, default 1e-5
    elementwise_affine : bool, default True
        Hold ``weight`` and ``bias``; without, both are None.
    bias : bool, default True
        Hold ``bias`` (when ``elementwise_affine``).
    dtype : float32 or float64, default float32
        The dtype of ``weight`` and ``bias``.

    Training
    --------
    ``forward(x)`` (also ``layer(x)``) keeps ``x`` and the row statistics;
    ``backward(dy)`` returns ``dx`` and adds the parameter gradients into
    ``weight_grad`` and ``bias_grad`` (None until the first backward, as
    ``torch``'s ``.grad``); ``zero_grad()`` resets them to None. Each forward
    allows one backward, and ``x`` must not be modified in between.
    """

    def __init__(
        self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=np.float32
    ):
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            dtype = None
        if dtype not in _checks.STAT_DTYPE:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
        dims = _checks.shape_tuple(normalized_shape)
        self.normalized_shape = _checks.normalized_shape(dims, np.empty(dims, dtype))
        self.eps = _checks.eps_value(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.weight = np.ones(self.normalized_shape, dtype) if self.elementwise_affine else None
        self.bias = (
            np.zeros(self.normalized_shape, dtype) if self.elementwise_affine and bias else None
        )
        self.weight_grad = None
        self.bias_grad = None
        self._saved = None

    def forward(self, x, *, out=None):
        """Normalise ``x`` (see :func:`lnrs.layer_norm`) and keep what backward needs."""
        x = _checks.float_array(x, "x")
        if out is not None and np.may_share_memory(x, out):
            raise ValueError(
                "out must not overlap x in LayerNorm.forward, which keeps x for backward; "
                "use lnrs.layer_norm for in-place inference"
            )
        y, mean, rstd = layer_norm_forward(
            x, self.normalized_shape, self.weight, self.bias, self.eps, out=out
        )
        self._saved = (x, mean, rstd)
        return y

    __call__ = forward

    def backward(self, dy):
        """``dx`` for the last forward's input; adds into ``weight_grad``/``bias_grad``."""
        if self._saved is None:
            raise ValueError("backward needs a forward first (each forward allows one backward)")
        x, mean, rstd = self._saved
        dx, dweight, dbias = layer_norm_backward(
            dy, x, mean, rstd, self.normalized_shape, self.weight
        )
        self._saved = None
        if self.weight is not None:
            self.weight_grad = _accumulate(self.weight_grad, dweight, self.weight.dtype)
        if self.bias is not None:
            self.bias_grad = _accumulate(self.bias_grad, dbias, self.bias.dtype)
        return dx

    def zero_grad(self):
        """Forget the accumulated parameter gradients."""
        self.weight_grad = None
        self.bias_grad = None

    def __repr__(self):
        return (
            f"LayerNorm({self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None})"
        )


def _accumulate(total, grad, dtype):
    grad = grad.astype(dtype, copy=False)  # fresh from backward: ours to keep
    return grad if total is None else total + grad
