"""`lnrs.torch`: drop-in modules for PyTorch, checked against PyTorch itself.
Skipped where PyTorch is not installed."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
lnrs_torch = pytest.importorskip("lnrs.torch")


def _pair(cls_lnrs, cls_torch, *args, **kwargs):
    torch.manual_seed(0)
    ours, theirs = cls_lnrs(*args, **kwargs), cls_torch(*args, **kwargs)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p))
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("shape,ns", [((4, 33), 33), ((2, 3, 4, 5), (4, 5))])
def test_layer_norm_module_matches_torch(dtype, tol, shape, ns):
    ours, theirs = _pair(lnrs_torch.LayerNorm, torch.nn.LayerNorm, ns, dtype=dtype)
    x = (torch.randn(shape, dtype=dtype) * 3 + 5).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y, y2 = ours(x), theirs(x2)
    torch.testing.assert_close(y, y2, rtol=tol, atol=tol)
    dy = torch.randn_like(y)
    y.backward(dy)
    y2.backward(dy)
    torch.testing.assert_close(x.grad, x2.grad, rtol=tol * 10, atol=tol * 10)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_rms_norm_module_matches_torch(dtype, tol):
    if not hasattr(torch.nn, "RMSNorm"):
        pytest.skip("this PyTorch has no RMSNorm")
    ours, theirs = _pair(lnrs_torch.RMSNorm, torch.nn.RMSNorm, 48, dtype=dtype)
    x = torch.randn(5, 48, dtype=dtype, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y2 = ours(x), theirs(x2)
    torch.testing.assert_close(y, y2, rtol=tol, atol=tol)
    y.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=tol * 10, atol=tol * 10)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=tol * 10, atol=tol * 10)


def test_gradcheck_float64():
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: lnrs_torch.layer_norm(x, 7, w, b), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: lnrs_torch.rms_norm(x, 7, w), (x, w))


def test_state_dicts_load_both_ways_and_options_match():
    ours = lnrs_torch.LayerNorm(16, elementwise_affine=True, bias=False)
    theirs = torch.nn.LayerNorm(16, bias=False)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    none = lnrs_torch.LayerNorm(16, elementwise_affine=False)
    assert none.weight is None and none.bias is None
    assert list(none.parameters()) == []


def test_non_contiguous_input_and_numpy_agreement():
    x = torch.randn(8, 6, dtype=torch.float32).t()
    y = lnrs_torch.layer_norm(x, 8)
    import lnrs

    np.testing.assert_array_equal(y.numpy(), lnrs.layer_norm(x.numpy(), 8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_tensors_with_float32_parameters(dtype):
    pytest.importorskip("ml_dtypes")
    ours = lnrs_torch.LayerNorm(64)  # float32 parameters, as mixed precision keeps them
    x = (torch.randn(6, 64) * 2 + 3).to(dtype).requires_grad_()
    y = ours(x)
    assert y.dtype == dtype
    want = torch.nn.functional.layer_norm(x.detach().double(), (64,)).to(dtype)
    torch.testing.assert_close(y.detach(), want, rtol=0, atol=float(torch.finfo(dtype).eps) * 8)
    y.float().sum().backward()
    assert x.grad.dtype == dtype and ours.weight.grad.dtype == torch.float32
