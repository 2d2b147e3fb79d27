"""`lnrs.torch`: drop-in `LayerNorm` and `RMSNorm` modules for PyTorch CPU tensors.

Forward and backward run on lnrs kernels through an `autograd.Function`; the
modules hold `weight` and `bias` as `torch.nn.Parameter`s under the same names as
`torch.nn.LayerNorm` / `torch.nn.RMSNorm`, so their state dicts load either way.
Tensors lnrs cannot take as they are (on a GPU, or of another dtype) go to
PyTorch's own functions. Importing `lnrs` never imports torch; importing this
module needs it.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from . import _functional, _rms_norm
from ._torch_views import numpy_view, tensor_view

__all__ = ["LayerNorm", "RMSNorm", "layer_norm", "rms_norm"]

_DIRECT = (torch.float16, torch.float32, torch.float64)


def _supported(x: torch.Tensor, *params) -> bool:
    if x.device.type != "cpu" or not (x.dtype in _DIRECT or _bf16_ok(x.dtype)):
        return False
    return all(
        p is None or (p.device.type == "cpu" and p.dtype in _DIRECT + (torch.bfloat16,))
        for p in params
    )


def _bf16_ok(dtype) -> bool:
    if dtype != torch.bfloat16:
        return False
    try:
        import ml_dtypes  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def _param(p):
    return None if p is None else numpy_view(p)


def _grad(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A parameter's gradient, in the parameter's dtype and shape."""
    return torch.from_numpy(np.ascontiguousarray(a)).to(like.dtype).reshape(like.shape)


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, normalized_shape, eps):
        xn = numpy_view(x.contiguous())
        y, mean, rstd = _functional.layer_norm_forward(
            xn, normalized_shape, _param(weight), _param(bias), eps
        )
        ctx.save_for_backward(x, weight, bias)
        ctx.stats = (mean, rstd, eps)
        ctx.normalized_shape = normalized_shape
        return tensor_view(torch, y)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        mean, rstd, eps = ctx.stats
        dx, dw, db = _functional.layer_norm_backward(
            numpy_view(dy.contiguous().to(x.dtype)),
            numpy_view(x.contiguous()),
            mean,
            rstd,
            ctx.normalized_shape,
            _param(weight),
            eps=eps,
        )
        gx = tensor_view(torch, dx) if ctx.needs_input_grad[0] else None
        gw = _grad(dw, weight) if weight is not None and ctx.needs_input_grad[1] else None
        gb = _grad(db, bias) if bias is not None and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, normalized_shape, eps):
        xn = numpy_view(x.contiguous())
        y, rstd = _rms_norm.rms_norm_forward(xn, normalized_shape, _param(weight), eps)
        ctx.save_for_backward(x, weight)
        ctx.rstd = rstd
        ctx.eps = eps
        ctx.normalized_shape = normalized_shape
        return tensor_view(torch, y)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dx, dw = _rms_norm.rms_norm_backward(
            numpy_view(dy.contiguous().to(x.dtype)),
            numpy_view(x.contiguous()),
            ctx.rstd,
            ctx.normalized_shape,
            _param(weight),
            eps=ctx.eps,
        )
        gx = tensor_view(torch, dx) if ctx.needs_input_grad[0] else None
        gw = _grad(dw, weight) if weight is not None and ctx.needs_input_grad[1] else None
        return gx, gw, None, None


def _shape(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(int(d) for d in normalized_shape)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """`torch.nn.functional.layer_norm` on lnrs kernels for CPU tensors (with autograd)."""
    shape = _shape(normalized_shape)
    if not _supported(x, weight, bias):
        return torch.nn.functional.layer_norm(x, shape, weight, bias, eps)
    return _LayerNorm.apply(x, weight, bias, shape, float(eps))


def rms_norm(x, normalized_shape, weight=None, eps=None):
    """`torch.nn.functional.rms_norm` on lnrs kernels for CPU tensors (with autograd)."""
    shape = _shape(normalized_shape)
    if not _supported(x, weight):
        return torch.nn.functional.rms_norm(x, shape, weight, eps)
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    return _RMSNorm.apply(x, weight, shape, float(eps))


class LayerNorm(torch.nn.Module):
    """`torch.nn.LayerNorm` with the same arguments, parameters and state dict."""

    def __init__(
        self,
        normalized_shape,
        eps=1e-5,
        elementwise_affine=True,
        bias=True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.normalized_shape = _shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        kw = {"device": device, "dtype": dtype}
        if elementwise_affine:
            self.weight = torch.nn.Parameter(torch.ones(self.normalized_shape, **kw))
            if bias:
                self.bias = torch.nn.Parameter(torch.zeros(self.normalized_shape, **kw))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x):
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class RMSNorm(torch.nn.Module):
    """`torch.nn.RMSNorm` with the same arguments, parameter and state dict."""

    def __init__(
        self, normalized_shape, eps=None, elementwise_affine=True, device=None, dtype=None
    ):
        super().__init__()
        self.normalized_shape = _shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = torch.nn.Parameter(
                torch.ones(self.normalized_shape, device=device, dtype=dtype)
            )
        else:
            self.register_parameter("weight", None)

    def forward(self, x):
        return rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self):
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )
