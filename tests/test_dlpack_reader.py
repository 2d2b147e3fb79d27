"""lnrs's own DLPack reader (issue 6): bfloat16 tensors, which NumPy's
from_dlpack refuses, are viewed as ml_dtypes.bfloat16 without a copy.

Producers: `CtypesProducer` (tests/dlpack_producer.py), which needs no torch and
can describe any layout, capsule kind and flag; and torch CPU tensors when
torch is importable. What is checked: the view shares the producer's memory,
lnrs gives the bits it gives for the same values as an ml_dtypes array, a
capsule lnrs takes has its deleter run exactly once (when the last view goes)
while one it refuses stays the producer's, strided layouts and byte offsets
are read right, read-only tensors give read-only views, and errors name the
argument.
"""

from __future__ import annotations

import gc
import sys

import lnrs
import numpy as np
import pytest
from dlpack_producer import KDL_BFLOAT, KDL_CPU, KDL_CUDA, KDL_FLOAT, CtypesProducer, stray_deletes
from lnrs._checks import float_array
from reference import same_bits

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)


def _bf16(rng, shape):
    return np.asarray(rng.standard_normal(shape) * 2 + 3).astype(BF16)


def _released(*producers):
    """lnrs took a capsule of each producer (renamed it "used_..."), and every
    capsule taken has had its deleter called exactly once."""
    gc.collect()
    assert not stray_deletes
    return all(p.taken() > 0 and p.deleted == p.taken() for p in producers)


def _left_alone(*producers):
    """No capsule of these producers was taken and no deleter called: lnrs
    left them to their producers."""
    gc.collect()
    return all(p.capsules and p.taken() == 0 and p.deleted == 0 for p in producers)


@pytest.mark.parametrize("versioned", [True, False], ids=["versioned", "legacy"])
def test_bfloat16_producer_gives_the_ndarray_results(rng, versioned):
    n = 40
    a, r, dy = _bf16(rng, (3, 5, n)), _bf16(rng, (3, 5, n)), _bf16(rng, (3, 5, n))
    w, b = _bf16(rng, n), _bf16(rng, n)
    x = CtypesProducer(a, versioned=versioned)
    assert same_bits(lnrs.layer_norm(x, n, w, b), lnrs.layer_norm(a, n, w, b))
    assert same_bits(lnrs.rms_norm(x, n, w), lnrs.rms_norm(a, n, w))
    expected = lnrs.layer_norm_forward(a, n, w, b)
    assert all(same_bits(g, e) for g, e in zip(lnrs.layer_norm_forward(x, n, w, b), expected))
    _, mean, rstd = expected
    expected = lnrs.layer_norm_backward(dy, a, mean, rstd, n, w)
    d = CtypesProducer(dy, versioned=versioned)
    got = lnrs.layer_norm_backward(d, x, mean, rstd, n, w)
    assert all(same_bits(g, e) for g, e in zip(got, expected))
    res = CtypesProducer(r, versioned=versioned)
    for fused in (lnrs.add_layer_norm, lnrs.add_rms_norm):
        expected = fused(a, r, n, w, eps=1e-6)
        assert all(same_bits(g, e) for g, e in zip(fused(x, res, n, w, eps=1e-6), expected))
    assert _released(x, d, res)


def test_the_view_shares_the_producers_memory(rng):
    a = _bf16(rng, (8, 64))
    x = CtypesProducer(a)
    view = float_array(x, "x")
    assert view.dtype == BF16 and view.shape == a.shape and view.flags.writeable
    assert np.shares_memory(view, a)
    assert x.taken() == 1 and x.deleted == 0
    expected = lnrs.layer_norm(a.copy(), 64)
    assert lnrs.layer_norm(x, 64, out=view) is view  # in place, through the view
    assert same_bits(a, expected)
    del view
    assert _released(x)


def test_the_deleter_runs_once_when_the_last_view_goes(rng):
    a = _bf16(rng, (4, 16))
    x = CtypesProducer(a)
    view = float_array(x, "x")
    part = view[1:, ::2]  # a view of the view holds the tensor too
    del view
    gc.collect()
    assert x.taken() == 1 and x.deleted == 0
    assert same_bits(part, a[1:, ::2])
    del part
    assert _released(x)


@pytest.mark.parametrize(
    "layout",
    ["transposed", "stepped", "reversed", "reversed_rows", "broadcast", "null_strides", "offset"],
)
def test_strided_layouts_are_read_right(rng, layout):
    base = _bf16(rng, (24, 30))
    kwargs = {}
    if layout == "transposed":
        a = base.T
    elif layout == "stepped":
        a = base[1::2, 2::3]
    elif layout == "reversed":
        a = base[::-1, ::-1]
    elif layout == "reversed_rows":
        a = base[:, ::-1]
    elif layout == "broadcast":
        a = np.broadcast_to(base[0], (5, 30))
    elif layout == "null_strides":
        a, kwargs = base, {"null_strides": True}
    else:
        a, kwargs = base[3:], {"byte_offset": 3 * 30 * 2}
    x = CtypesProducer(a, **kwargs)
    view = float_array(x, "x")
    assert view.shape == a.shape and np.shares_memory(view, base)
    assert same_bits(view, a)
    n = a.shape[-1]
    assert same_bits(lnrs.layer_norm(x, n), lnrs.layer_norm(np.ascontiguousarray(a), n))
    del view
    assert _released(x)


def test_empty_and_0d_tensors(rng):
    x = CtypesProducer(np.empty((0, 8), BF16))
    assert lnrs.layer_norm(x, 8).shape == (0, 8)
    scalar = CtypesProducer(_bf16(rng, ()))
    assert float_array(scalar, "x").shape == ()
    assert _released(x, scalar)


def test_a_read_only_versioned_tensor_gives_a_read_only_view(rng):
    a = _bf16(rng, (6, 32))
    x = CtypesProducer(a, read_only=True)
    view = float_array(x, "x")
    assert not view.flags.writeable
    with pytest.raises(ValueError, match="assignment destination is read-only"):
        view[0, 0] = 1
    assert same_bits(lnrs.layer_norm(x, 32), lnrs.layer_norm(a, 32))
    with pytest.raises(ValueError, match=r"\bout\b.*writeable"):
        lnrs.layer_norm(a, 32, out=view)
    del view
    assert _released(x)


@pytest.mark.parametrize("versioned", [True, False], ids=["versioned", "legacy"])
def test_other_dtypes_are_left_to_numpy(rng, versioned):
    """A float16 tensor (code 2) from the same producer is NumPy's to read, so
    the producer's structs are checked against NumPy's reader, not only lnrs's."""
    a = rng.standard_normal((4, 24)).astype(np.float16)
    x = CtypesProducer(a, versioned=versioned, dtype=(KDL_FLOAT, 16, 1))
    view = float_array(x, "x")
    assert view.dtype == np.float16 and np.shares_memory(view, a) and same_bits(view, a)
    del view
    assert _released(x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": (KDL_BFLOAT, 16, 2)}, r"x must be bfloat16 with one lane.*\(4, 16, 2\)"),
        ({"dtype": (KDL_BFLOAT, 32, 1)}, r"x must be bfloat16 with one lane.*\(4, 32, 1\)"),
        (
            {"device": (KDL_CUDA, 0), "reported_device": (KDL_CPU, 0)},
            r"x must be on the CPU.*\(2, 0\)",
        ),
        ({"version": (2, 0)}, r"x: DLPack version 2\.0 is not supported"),
    ],
    ids=["lanes", "bits", "device", "version"],
)
def test_unreadable_tensors_are_refused_naming_the_argument(rng, kwargs, message):
    a = _bf16(rng, (4, 8))
    x = CtypesProducer(a, **kwargs)
    with pytest.raises(TypeError, match=message):
        lnrs.layer_norm(x, 8)
    r = CtypesProducer(a, **kwargs)
    with pytest.raises(TypeError, match=r"\bresidual\b"):
        lnrs.add_layer_norm(a, r, 8)
    _, mean, rstd = lnrs.layer_norm_forward(a, 8)
    dy = CtypesProducer(a, **kwargs)
    with pytest.raises(TypeError, match=r"\bdy\b"):
        lnrs.layer_norm_backward(dy, a, mean, rstd, 8)
    assert _left_alone(x, r, dy)


def test_a_dtype_neither_numpy_nor_lnrs_reads_keeps_numpys_error(rng):
    a = np.zeros((4, 8), np.uint16)
    x = CtypesProducer(a, dtype=(KDL_FLOAT, 16, 4))  # float16 in 4 lanes
    with pytest.raises(TypeError, match=r"^x must be an array of .*CtypesProducer"):
        lnrs.layer_norm(x, 8)
    assert len(x.capsules) == 2  # NumPy's and lnrs's look at the dtype
    assert _left_alone(x)


def test_a_producer_that_gives_no_capsule_is_refused_naming_the_argument():
    class NoCapsule:
        def __dlpack__(self, **kwargs):
            return object()

        def __dlpack_device__(self):
            return (KDL_CPU, 0)

    with pytest.raises(TypeError, match=r"x\.__dlpack__\(\) must return an unused DLPack capsule"):
        lnrs.layer_norm(NoCapsule(), 8)


def test_without_ml_dtypes_bfloat16_asks_for_it(rng, monkeypatch):
    a = _bf16(rng, (4, 8))
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes fails
    x = CtypesProducer(a)
    with pytest.raises(TypeError, match=r"^x is a bfloat16 tensor.*pip install ml_dtypes"):
        lnrs.layer_norm(x, 8)
    assert _left_alone(x)


# ------------------------------------------------------------------------ torch


def _torch_bf16(shape, seed):
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 2 + 3).to(torch.bfloat16)


def _values(t):
    """A bfloat16 tensor's values as an ml_dtypes array of its own (a copy)."""
    import torch

    return t.contiguous().view(torch.int16).numpy().view(BF16).copy()


def test_torch_bfloat16_tensor_is_viewed_and_written_in_place():
    t = _torch_bf16((32, 96), 1)
    view = float_array(t, "x")
    assert view.dtype == BF16 and view.shape == (32, 96)
    assert view.ctypes.data == t.data_ptr()
    t[0, 0] = 7.0
    assert float(view[0, 0]) == 7.0  # written through the tensor, seen in the view
    expected = lnrs.layer_norm(_values(t), 96)
    assert same_bits(lnrs.layer_norm(t, 96), expected)
    w, b = _torch_bf16((96,), 5), _torch_bf16((96,), 6)  # bfloat16 parameters too
    got = lnrs.layer_norm(t, 96, w, b)
    assert same_bits(got, lnrs.layer_norm(_values(t), 96, _values(w), _values(b)))
    lnrs.layer_norm(t, 96, out=view)
    assert same_bits(_values(t), expected)


def test_torch_tensor_is_released_when_the_view_goes():
    t = _torch_bf16((8, 16), 2)
    assert t._use_count() == 1
    view = float_array(t, "x")
    assert t._use_count() == 2  # the export holds the tensor
    del view
    gc.collect()
    assert t._use_count() == 1
    lnrs.layer_norm(t, 16)
    lnrs.rms_norm_forward(t, 16)
    gc.collect()
    assert t._use_count() == 1


def test_strided_torch_bfloat16_tensors():
    t = _torch_bf16((48, 40), 3)
    for strided in (t.T, t[1::2, 3::2], t[:, 5:], t.expand(2, 48, 40)):
        view = float_array(strided, "x")
        assert view.ctypes.data == strided.data_ptr()
        n = strided.shape[-1]
        assert same_bits(lnrs.layer_norm(strided, n), lnrs.layer_norm(_values(strided), n))


def test_torch_bfloat16_tensor_requiring_grad_keeps_torchs_error():
    t = _torch_bf16((4, 8), 4).requires_grad_()
    with pytest.raises(TypeError, match=r"^x must be an array of .*detach"):
        lnrs.layer_norm(t, 8)
