"""`LayerNorm`: a layer holding its own weight and bias."""

from __future__ import annotations

import numpy as np

from . import _checks
from ._functional import layer_norm


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
    """

    def __init__(
        self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=np.float32
    ):
        dtype = np.dtype(dtype)
        if dtype not in _checks.STAT_DTYPE:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        probe = np.empty(_shape_tuple(normalized_shape), dtype=dtype)
        self.normalized_shape = _checks.normalized_shape(normalized_shape, probe)
        self.eps = _checks.eps_value(eps)
        self.elementwise_affine = bool(elementwise_affine)
        self.weight = np.ones(self.normalized_shape, dtype) if self.elementwise_affine else None
        self.bias = (
            np.zeros(self.normalized_shape, dtype) if self.elementwise_affine and bias else None
        )

    def __call__(self, x, *, out=None):
        """Normalise ``x``; see :func:`lnrs.layer_norm`."""
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, out=out)

    def __repr__(self):
        return (
            f"LayerNorm({self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None})"
        )


def _shape_tuple(shape):
    """Enough of `normalized_shape` to build a probe array; full checks follow."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(
            f"normalized_shape must be an int or a sequence of ints, got {shape!r}"
        ) from None
    if any(d < 0 for d in dims):
        raise ValueError(f"normalized_shape must hold sizes >= 0, got {dims}")
    return dims
