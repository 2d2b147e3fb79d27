"""Zero-copy input (issue 6): any CPU producer of ``__dlpack__`` or of the
buffer protocol is viewed, not copied.

Producers used: a wrapper exposing only ``__dlpack__``/``__dlpack_device__`` of a
NumPy array (so it is not an ndarray and has no buffer), memoryviews (writeable
and read-only), ``array.array``, torch CPU tensors when torch is importable, and
DLPack capsules edited with ctypes to describe what NumPy cannot export: a
tensor on a CUDA device, and a bfloat16 tensor (which NumPy cannot read either:
lnrs reads it itself, tested further in test_dlpack_reader.py).

"No copy" is shown two ways: a view of the producer made the same way shares
its memory (and writing through ``out=`` that view changes the producer), and
tracemalloc, which sees every NumPy data allocation, records no allocation of
the input's size while lnrs runs with a preallocated ``out``.
"""

from __future__ import annotations

import array
import ctypes
import tracemalloc

import lnrs
import numpy as np
import pytest
from dlpack_producer import KDL_BFLOAT, KDL_CPU, KDL_CUDA, DLTensor


class DLPackOnly:
    """A DLPack producer that is nothing else: no ndarray, no __array__, no buffer."""

    def __init__(self, array, device=None):
        self._array = array
        self._device = device
        self.exports = 0

    def __dlpack__(self, **kwargs):
        self.exports += 1
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._device if self._device is not None else self._array.__dlpack_device__()


# -------------------------------------------------- DLPack capsules edited with ctypes


_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi)
)


class EditedCapsule:
    """A producer whose (unversioned) capsule is NumPy's export of `array` with
    the device and/or the dtype code overwritten, and `__dlpack_device__` to match."""

    def __init__(self, array, device_type=None, dtype_code=None):
        self._array = array
        self._device_type = device_type
        self._dtype_code = dtype_code

    def __dlpack__(self, **kwargs):
        capsule = self._array.__dlpack__()  # the legacy "dltensor" capsule
        tensor = DLTensor.from_address(_capsule_pointer(capsule, b"dltensor"))
        assert tensor.data == self._array.ctypes.data  # the layout is read right
        if self._device_type is not None:
            tensor.device.device_type = self._device_type
        if self._dtype_code is not None:
            tensor.dtype.code = self._dtype_code
        return capsule

    def __dlpack_device__(self):
        return (self._device_type or KDL_CPU, 0)


# ---------------------------------------------------------------------- helpers


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def peak_allocation(fn) -> int:
    """The largest amount of memory traced (NumPy data included) while `fn` runs."""
    tracemalloc.start()
    try:
        fn()  # once untraced-for-size: caches, imports
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def _data(rng, shape, dtype=np.float32):
    return (rng.standard_normal(shape) * 2 + 3).astype(dtype)


# ----------------------------------------------------------------------- DLPack


def test_the_wrapper_is_only_a_dlpack_producer(rng):
    a = _data(rng, (3, 8))
    w = DLPackOnly(a)
    assert not isinstance(w, np.ndarray) and not hasattr(w, "__array__")
    with pytest.raises(TypeError):
        memoryview(w)
    assert np.shares_memory(np.from_dlpack(w), a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_dlpack_input_gives_the_ndarray_results(rng, dtype):
    n = 48
    a = _data(rng, (6, 4, n), dtype)
    r = _data(rng, (6, 4, n), dtype)
    dy = _data(rng, (6, 4, n), dtype)
    w = rng.standard_normal(n).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    x = DLPackOnly(a)
    assert same_bits(lnrs.layer_norm(x, n, w, b), lnrs.layer_norm(a, n, w, b))
    assert same_bits(lnrs.rms_norm(x, n, w, 1e-6), lnrs.rms_norm(a, n, w, 1e-6))
    expected = lnrs.layer_norm_forward(a, n, w, b)
    got = lnrs.layer_norm_forward(x, n, w, b)
    assert all(same_bits(g, e) for g, e in zip(got, expected))
    _, mean, rstd = expected
    expected = lnrs.layer_norm_backward(dy, a, mean, rstd, n, w)
    got = lnrs.layer_norm_backward(DLPackOnly(dy), x, mean, rstd, n, w)
    assert all(same_bits(g, e) for g, e in zip(got, expected))
    for fused in (lnrs.add_layer_norm, lnrs.add_rms_norm):
        expected = fused(a, r, n, w, eps=1e-6)
        got = fused(x, DLPackOnly(r), n, w, eps=1e-6)
        assert all(same_bits(g, e) for g, e in zip(got, expected))
    assert x.exports > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_rms_norm_default_eps_with_dlpack_input(rng, dtype):
    """eps=None is finfo(x.dtype).eps for a DLPack producer too (which has no
    NumPy dtype to read before it is converted)."""
    a = _data(rng, (5, 24), dtype)
    x = DLPackOnly(a)
    expected = lnrs.rms_norm(a, 24)
    assert same_bits(lnrs.rms_norm(a, 24, None, float(np.finfo(dtype).eps)), expected)
    assert same_bits(lnrs.rms_norm(x, 24), expected)
    assert same_bits(lnrs.rms_norm_forward(x, 24)[0], expected)
    y, _ = lnrs.add_rms_norm(x, DLPackOnly(np.zeros_like(a)), 24)
    assert same_bits(y, expected)


def test_dlpack_input_is_not_copied(rng):
    a = _data(rng, (256, 4096))  # 4 MiB
    x = DLPackOnly(a)
    out = np.empty_like(a)
    assert np.shares_memory(np.from_dlpack(x), a)
    expected = lnrs.layer_norm(a, 4096)
    peak = peak_allocation(lambda: lnrs.layer_norm(x, 4096, out=out))
    assert peak < a.nbytes // 8, f"{peak} bytes allocated for a {a.nbytes}-byte input"
    assert same_bits(out, expected)
    # The check can see a copy: a non-contiguous input must be copied.
    strided = np.asfortranarray(a)
    assert peak_allocation(lambda: lnrs.layer_norm(strided, 4096, out=out)) >= a.nbytes


def test_in_place_through_a_dlpack_view(rng):
    """x given by DLPack and out as the producer's own memory: in place."""
    a = _data(rng, (40, 96))
    r = _data(rng, (40, 96))
    w = rng.standard_normal(96).astype(np.float32)
    expected = lnrs.layer_norm(a, 96, w, w)
    assert lnrs.layer_norm(DLPackOnly(a), 96, w, w, out=a) is a
    assert same_bits(a, expected)
    # The fused op updating the residual stream in place, both given by DLPack.
    a = _data(rng, (40, 96))
    expected_y, expected_s = lnrs.add_rms_norm(a, r, 96, w, 1e-6)
    y, s = lnrs.add_rms_norm(DLPackOnly(a), DLPackOnly(r), 96, w, 1e-6, sum_out=r)
    assert s is r and same_bits(y, expected_y) and same_bits(r, expected_s)
    # Where NumPy's DLPack views are writeable (NumPy 2), out may be one.
    a = _data(rng, (40, 96))
    expected = lnrs.rms_norm(a, 96, w, 1e-6)
    x = DLPackOnly(a)
    view = np.from_dlpack(x)
    if view.flags.writeable:
        assert lnrs.rms_norm(x, 96, w, 1e-6, out=view) is view
        assert same_bits(a, expected), "the producer's memory was not written"


def test_read_only_dlpack_input(rng):
    a = _data(rng, (5, 32))
    expected = lnrs.layer_norm(a, 32)
    a.flags.writeable = False
    x = DLPackOnly(a)
    try:
        np.from_dlpack(x)
    except BufferError:
        pytest.skip("this NumPy does not export read-only arrays by DLPack")
    assert same_bits(lnrs.layer_norm(x, 32), expected)
    assert same_bits(lnrs.rms_norm_forward(x, 32, None, 1e-6)[0], lnrs.rms_norm(a, 32, None, 1e-6))


def test_dlpack_half_input_is_not_copied(rng):
    a = _data(rng, (128, 4096), np.float16)
    out = np.empty_like(a)
    expected = lnrs.layer_norm(a, 4096)
    x = DLPackOnly(a)
    peak = peak_allocation(lambda: lnrs.layer_norm(x, 4096, out=out))
    assert peak < a.nbytes // 8
    assert same_bits(out, expected)


# ------------------------------------------------------------- buffer protocol


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_memoryview_input(rng, dtype):
    a = _data(rng, (7, 3, 16), dtype)
    mv = memoryview(a)
    assert same_bits(lnrs.layer_norm(mv, (3, 16)), lnrs.layer_norm(a, (3, 16)))
    assert same_bits(lnrs.rms_norm(mv, 16), lnrs.rms_norm(a, 16))
    y, s = lnrs.add_layer_norm(mv, memoryview(a), 16)
    assert same_bits(s, a + a) and same_bits(y, lnrs.layer_norm(a + a, 16))


def test_memoryview_input_is_not_copied(rng):
    a = _data(rng, (256, 4096))
    out = np.empty_like(a)
    mv = memoryview(a)
    peak = peak_allocation(lambda: lnrs.layer_norm(mv, 4096, out=out))
    assert peak < a.nbytes // 8
    assert same_bits(out, lnrs.layer_norm(a, 4096))
    # In place: out is a view of the same buffer.
    expected = out.copy()
    assert lnrs.layer_norm(mv, 4096, out=a) is a
    assert same_bits(a, expected)


@pytest.mark.parametrize("code,dtype", [("f", np.float32), ("d", np.float64)])
def test_array_array_input(rng, code, dtype):
    values = rng.standard_normal(300) * 5 + 40
    buf = array.array(code, values.tolist())
    a = np.frombuffer(buf, dtype=dtype)
    assert np.shares_memory(np.asarray(buf), a)
    expected = lnrs.layer_norm(a.copy(), 300)
    assert same_bits(lnrs.layer_norm(buf, 300), expected)
    assert same_bits(lnrs.rms_norm(buf, 300), lnrs.rms_norm(a.copy(), 300))
    assert same_bits(lnrs.layer_norm_forward(buf, 300)[0], expected)
    # In place through the buffer.
    view = np.frombuffer(buf, dtype=dtype)
    assert view.flags.writeable
    lnrs.layer_norm(buf, 300, out=view)
    assert same_bits(np.frombuffer(buf, dtype=dtype), expected)


def test_read_only_buffers(rng):
    a = _data(rng, (6, 20))
    expected = lnrs.layer_norm(a, 20)
    ro_bytes = memoryview(a.tobytes()).cast("f", shape=[6, 20])
    assert ro_bytes.readonly
    assert same_bits(lnrs.layer_norm(ro_bytes, 20), expected)
    ro = a.copy()
    ro.flags.writeable = False
    assert memoryview(ro).readonly
    assert same_bits(lnrs.layer_norm(memoryview(ro), 20), expected)
    assert same_bits(lnrs.layer_norm(ro, 20), expected)
    y, s = lnrs.add_layer_norm(ro, memoryview(ro), 20)
    assert same_bits(s, ro + ro)
    dy = memoryview(a.tobytes()).cast("f", shape=[6, 20])
    _, mean, rstd = lnrs.layer_norm_forward(ro, 20)
    got = lnrs.layer_norm_backward(dy, ro_bytes, mean, rstd, 20)
    assert all(same_bits(g, e) for g, e in zip(got, lnrs.layer_norm_backward(a, a, mean, rstd, 20)))


# ------------------------------------------------------ what is not a CPU array


def test_dlpack_tensor_on_a_cuda_device_is_a_type_error(rng):
    """A producer on a GPU (device type 2 in __dlpack_device__ and in the capsule)."""
    a = _data(rng, (4, 8))
    gpu = EditedCapsule(a, device_type=KDL_CUDA)
    assert gpu.__dlpack_device__() == (KDL_CUDA, 0)
    with pytest.raises(TypeError, match=r"\bx\b"):
        lnrs.layer_norm(gpu, 8)
    with pytest.raises(TypeError, match=r"\bx\b"):
        lnrs.rms_norm(gpu, 8)
    with pytest.raises(TypeError, match=r"\bresidual\b"):
        lnrs.add_layer_norm(a, EditedCapsule(a, device_type=KDL_CUDA), 8)
    _, mean, rstd = lnrs.layer_norm_forward(a, 8)
    with pytest.raises(TypeError, match=r"\bdy\b"):
        lnrs.layer_norm_backward(EditedCapsule(a, device_type=KDL_CUDA), a, mean, rstd, 8)


def test_dlpack_device_is_asked_before_the_data_is_read(rng):
    """A producer whose __dlpack_device__ says CUDA (device type 2) is refused
    with a TypeError naming x, whatever its capsule says: the DLPack protocol
    has consumers ask the device first, and lnrs takes CPU arrays."""
    a = _data(rng, (4, 8))
    with pytest.raises(TypeError, match=r"\bx\b"):
        lnrs.layer_norm(DLPackOnly(a, device=(KDL_CUDA, 0)), 8)


def test_bfloat16_dlpack_input(rng):
    """A CPU bfloat16 tensor by DLPack (as torch and JAX export them) is taken
    as ml_dtypes.bfloat16, which NumPy's own from_dlpack does not know."""
    bf16 = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    a = _data(rng, (6, 32), bf16)
    expected = lnrs.layer_norm(a, 32)
    as_f16_bits = a.view(np.float16)  # the same 16-bit patterns, exported as float16
    x = EditedCapsule(as_f16_bits, dtype_code=KDL_BFLOAT)
    y = lnrs.layer_norm(x, 32)
    assert same_bits(y, expected)


# ------------------------------------------------------------------------ torch


@pytest.mark.parametrize(
    "dtype",
    [
        "float32",
        "float64",
        "float16",
        "bfloat16",
    ],
)
def test_torch_cpu_tensors(dtype):
    torch = pytest.importorskip("torch")
    if dtype == "bfloat16":
        pytest.importorskip("ml_dtypes")
    tdtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(7)
    n = 64
    t = (torch.randn(5, 3, n, generator=gen, dtype=torch.float64) * 2 + 3).to(tdtype)
    w = (torch.randn(n, generator=gen, dtype=torch.float64) / 4 + 1).to(tdtype)
    b = torch.randn(n, generator=gen, dtype=torch.float64).to(tdtype)
    y = lnrs.layer_norm(t, n, w, b)
    ref = torch.nn.functional.layer_norm(t.double(), (n,), w.double(), b.double(), 1e-5)
    tol = {"float32": 1e-5, "float64": 1e-12, "float16": 2e-3, "bfloat16": 1.6e-2}[dtype]
    np.testing.assert_allclose(np.asarray(y).astype(np.float64), ref.numpy(), rtol=tol, atol=tol)
    y = lnrs.rms_norm(t, n, w, 1e-6)
    rms = t.double() * torch.rsqrt(t.double().pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    np.testing.assert_allclose(np.asarray(y).astype(np.float64), rms.numpy(), rtol=tol, atol=tol)


def test_torch_rms_norm_default_eps():
    """eps=None reads the tensor's dtype: float32's machine epsilon for a float32 tensor."""
    torch = pytest.importorskip("torch")
    t = torch.randn(4, 32, generator=torch.Generator().manual_seed(5)) * 1e-4
    a = t.numpy().copy()
    expected = lnrs.rms_norm(a, 32, None, float(np.finfo(np.float32).eps))
    assert same_bits(lnrs.rms_norm(t, 32), expected)
    assert same_bits(lnrs.add_rms_norm(t, torch.zeros_like(t), 32)[0], expected)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_torch_tensors_are_viewed_and_written_in_place(dtype):
    torch = pytest.importorskip("torch")
    t = torch.randn(64, 1024, generator=torch.Generator().manual_seed(3)).to(getattr(torch, dtype))
    view = t.numpy()
    assert np.shares_memory(np.from_dlpack(t), view)
    expected = lnrs.layer_norm(view.copy(), 1024)
    assert same_bits(lnrs.layer_norm(t, 1024), expected)
    out = np.empty_like(view)
    assert peak_allocation(lambda: lnrs.layer_norm(t, 1024, out=out)) < view.nbytes // 8
    lnrs.layer_norm(t, 1024, out=view)
    assert same_bits(t.numpy(), expected)
    # A transposed (non-contiguous) tensor is read right.
    u = torch.randn(96, 40, generator=torch.Generator().manual_seed(4)).to(getattr(torch, dtype))
    assert same_bits(
        lnrs.layer_norm(u.T, 96), lnrs.layer_norm(np.ascontiguousarray(u.numpy().T), 96)
    )
