"""`LayerNorm` and `RMSNorm`: layers holding their own parameters, with training."""

from __future__ import annotations

import numpy as np

from . import _checks
from ._functional import layer_norm_backward, layer_norm_forward
from ._rms_norm import _eps, rms_norm_backward, rms_norm_forward


class _Norm:
    """What both layers share: shape and dtype checks, the saved forward state and
    gradient accumulation. Subclasses say how to run forward and backward."""

    _name = ""

    def __init__(self, normalized_shape, eps, elementwise_affine, bias, dtype):
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            dtype = None
        if dtype is None or not _checks.is_storage(dtype):
            raise TypeError(f"dtype must be {_checks.DTYPES}, got {dtype!r}")
        dims = _checks.shape_tuple(normalized_shape)
        self.normalized_shape = _checks.normalized_shape(dims, np.empty(dims, dtype))
        self.eps = None if eps is None else _checks.eps_value(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.weight = np.ones(self.normalized_shape, dtype) if self.elementwise_affine else None
        self.bias = (
            np.zeros(self.normalized_shape, dtype) if self.elementwise_affine and bias else None
        )
        self.weight_grad = None
        self.bias_grad = None
        self._saved = None

    def forward(self, x, *, out=None):
        """Normalise ``x`` and keep what backward needs."""
        x = _checks.float_array(x, "x")
        if out is not None and np.may_share_memory(x, out):
            raise ValueError(
                f"out must not overlap x in {self._name}.forward, which keeps x for "
                "backward; use the function form for in-place inference"
            )
        y, *stats = self._forward(x, out)
        self._saved = (x, stats)
        return y

    def __call__(self, x, *, out=None):
        return self.forward(x, out=out)

    def backward(self, dy):
        """``dx`` for the last forward's input; adds into ``weight_grad``/``bias_grad``."""
        if self._saved is None:
            raise ValueError("backward needs a forward first (each forward allows one backward)")
        x, stats = self._saved
        dx, dweight, *dbias = self._backward(dy, x, stats)
        self._saved = None
        if self.weight is not None:
            self.weight_grad = _accumulate(self.weight_grad, dweight, self.weight.dtype)
        if self.bias is not None:
            self.bias_grad = _accumulate(self.bias_grad, dbias[0], self.bias.dtype)
        return dx

    def zero_grad(self):
        """Forget the accumulated parameter gradients."""
        self.weight_grad = None
        self.bias_grad = None


class LayerNorm(_Norm):
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
    dtype : float32, float64, float16 or bfloat16, default float32
        The dtype of ``weight`` and ``bias``.

    Training
    --------
    ``forward(x)`` (also ``layer(x)``) keeps ``x`` and the row statistics;
    backward recomputes rstd from ``x`` with ``eps`` (exact gradients);
    ``backward(dy)`` returns ``dx`` and adds the parameter gradients into
    ``weight_grad`` and ``bias_grad`` (None until the first backward, as
    ``torch``'s ``.grad``); ``zero_grad()`` resets them to None. Each forward
    allows one backward, and ``x`` must not be modified in between.
    """

    _name = "LayerNorm"

    def __init__(
        self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=np.float32
    ):
        super().__init__(normalized_shape, eps, elementwise_affine, bias, dtype)

    def _forward(self, x, out):
        return layer_norm_forward(
            x, self.normalized_shape, self.weight, self.bias, self.eps, out=out
        )

    def _backward(self, dy, x, stats):
        mean, rstd = stats
        return layer_norm_backward(
            dy, x, mean, rstd, self.normalized_shape, self.weight, eps=self.eps
        )

    def __repr__(self):
        return (
            f"LayerNorm({self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None})"
        )


class RMSNorm(_Norm):
    """Root-mean-square normalisation over the trailing ``normalized_shape`` axes,
    with a learnable ``weight`` (initially ones), as ``torch.nn.RMSNorm``.

    Parameters
    ----------
    normalized_shape : int or sequence of int
    eps : float, optional
        Default ``np.finfo(x.dtype).eps`` of each input, as PyTorch.
    elementwise_affine : bool, default True
        Hold ``weight``; without, it is None.
    dtype : float32, float64, float16 or bfloat16, default float32
        The dtype of ``weight``.

    Training as :class:`LayerNorm`: ``forward``, ``backward`` (into
    ``weight_grad``), ``zero_grad``.
    """

    _name = "RMSNorm"

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, dtype=np.float32):
        super().__init__(normalized_shape, eps, elementwise_affine, False, dtype)

    def _forward(self, x, out):
        eps = _eps(x, self.eps)
        y, rstd = rms_norm_forward(x, self.normalized_shape, self.weight, eps, out=out)
        return y, rstd, eps

    def _backward(self, dy, x, stats):
        rstd, eps = stats
        return rms_norm_backward(dy, x, rstd, self.normalized_shape, self.weight, eps=eps)

    def __repr__(self):
        return (
            f"RMSNorm({self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine})"
        )


def _accumulate(total, grad, dtype):
    grad = grad.astype(dtype, copy=False)  # fresh from backward: ours to keep
    return grad if total is None else total + grad
