"""LayerNorm: the parameters it holds and what calling it computes."""

from __future__ import annotations

import lnrs
import numpy as np
import pytest
from reference import max_ulp, reference_layer_norm, same_bits


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "float32", np.dtype("f8")])
@pytest.mark.parametrize(
    "ns,dims", [(8, (8,)), ((8,), (8,)), ([3, 4], (3, 4)), (np.int64(5), (5,))]
)
def test_parameters_start_as_ones_and_zeros(ns, dims, dtype):
    ln = lnrs.LayerNorm(ns, dtype=dtype)
    assert ln.normalized_shape == dims
    assert isinstance(ln.weight, np.ndarray) and isinstance(ln.bias, np.ndarray)
    assert ln.weight.shape == dims and ln.bias.shape == dims
    assert ln.weight.dtype == np.dtype(dtype) and ln.bias.dtype == np.dtype(dtype)
    assert np.all(ln.weight == 1) and np.all(ln.bias == 0)
    assert ln.weight.flags.writeable and ln.bias.flags.writeable
    assert not np.shares_memory(ln.weight, ln.bias)


def test_default_dtype_and_eps():
    ln = lnrs.LayerNorm(6)
    assert ln.weight.dtype == np.float32 and ln.bias.dtype == np.float32
    assert ln.eps == 1e-5
    assert ln.elementwise_affine is True


def test_without_elementwise_affine():
    ln = lnrs.LayerNorm(6, elementwise_affine=False)
    assert ln.weight is None and ln.bias is None
    ln = lnrs.LayerNorm(6, elementwise_affine=False, bias=False)
    assert ln.weight is None and ln.bias is None


def test_without_bias():
    ln = lnrs.LayerNorm((2, 3), bias=False)
    assert ln.bias is None
    assert ln.weight.shape == (2, 3) and np.all(ln.weight == 1)


def test_instances_do_not_share_parameters():
    a, b = lnrs.LayerNorm(4), lnrs.LayerNorm(4)
    a.weight[:] = 3
    a.bias[:] = 1
    assert np.all(b.weight == 1) and np.all(b.bias == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, True)])
def test_call_matches_layer_norm_and_reference(affine, bias, dtype, rng):
    ns = (4, 16)
    x = (rng.standard_normal((3, 5, 4, 16)) * 2 + 9).astype(dtype)
    ln = lnrs.LayerNorm(ns, eps=1e-3, elementwise_affine=affine, bias=bias, dtype=dtype)
    if ln.weight is not None:
        ln.weight[...] = rng.standard_normal(ns)
    if ln.bias is not None:
        ln.bias[...] = rng.standard_normal(ns)
    y = ln(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert same_bits(y, lnrs.layer_norm(x, ns, ln.weight, ln.bias, 1e-3))
    ref, _, _ = reference_layer_norm(x, ns, ln.weight, ln.bias, 1e-3)
    if dtype == np.float32:
        assert max_ulp(y, ref, np.float32) <= 2
    else:
        np.testing.assert_allclose(y, ref.astype(np.float64), rtol=1e-13, atol=1e-13)


def test_fresh_layer_is_plain_normalisation(rng):
    x = (rng.standard_normal((10, 32)) + 4).astype(np.float32)
    y = lnrs.LayerNorm(32)(x)
    ref, _, _ = reference_layer_norm(x, 32)
    assert max_ulp(y, ref, np.float32) <= 2
    np.testing.assert_allclose(y.mean(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(y.std(axis=1), 1, rtol=1e-4)


def test_mutating_weight_and_bias_changes_output(rng):
    x = rng.standard_normal((5, 8)).astype(np.float32)
    ln = lnrs.LayerNorm(8)
    before = ln(x)
    ln.weight *= 2
    ln.bias += 0.5
    after = ln(x)
    ref, _, _ = reference_layer_norm(x, 8, np.full(8, 2, np.float32), np.full(8, 0.5, np.float32))
    assert max_ulp(after, ref, np.float32) <= 2
    assert not np.array_equal(before, after)
    np.testing.assert_allclose(after, before * 2 + 0.5, rtol=1e-6, atol=1e-6)


def test_replacing_weight_and_bias_changes_output(rng):
    x = rng.standard_normal((5, 8)).astype(np.float32)
    ln = lnrs.LayerNorm(8)
    w = rng.standard_normal(8).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    ln.weight, ln.bias = w, b
    ref, _, _ = reference_layer_norm(x, 8, w, b)
    assert max_ulp(ln(x), ref, np.float32) <= 2


def test_float64_layer_on_float32_input(rng):
    x = rng.standard_normal((4, 12)).astype(np.float32)
    ln = lnrs.LayerNorm(12, dtype=np.float64)
    ln.weight[:] = rng.standard_normal(12)
    y = ln(x)
    assert y.dtype == np.float32
    assert same_bits(
        y, lnrs.layer_norm(x, 12, ln.weight.astype(np.float32), ln.bias.astype(np.float32))
    )


def test_call_with_out(rng):
    x = rng.standard_normal((3, 7)).astype(np.float32)
    ln = lnrs.LayerNorm(7)
    out = np.empty_like(x)
    assert ln(x, out=out) is out
    assert same_bits(out, ln(x))


def test_eps_is_used(rng):
    x = (rng.standard_normal((4, 10)) * 0.01).astype(np.float32)  # variance ~1e-4
    y = lnrs.LayerNorm(10, eps=1.0)(x)
    ref, _, _ = reference_layer_norm(x, 10, eps=1.0)
    assert max_ulp(y, ref, np.float32) <= 2
    assert np.abs(y).max() < 0.1  # eps dominates: nothing is scaled up to unit variance


def test_wrong_input_shape_is_an_error(rng):
    ln = lnrs.LayerNorm((4, 5))
    with pytest.raises(ValueError, match="normalized_shape"):
        ln(rng.standard_normal((3, 5, 4)).astype(np.float32))


def test_repr_names_the_configuration():
    r = repr(lnrs.LayerNorm((2, 3), eps=1e-6, bias=False))
    assert "LayerNorm" in r and "(2, 3)" in r and "1e-06" in r and "bias=False" in r
