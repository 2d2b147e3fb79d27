"""lnrs.cuda: the CuPy path.

Runs in three tiers: without CuPy everything here skips; with CuPy and NVRTC but no GPU,
compile_all (every kernel variant through NVRTC) and the argument checks run; with a GPU, each
function is compared against a float64 NumPy reference.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
lcuda = pytest.importorskip("lnrs.cuda")


def _gpu_count() -> int:
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # CUDARuntimeError without a driver or a device
        return 0


needs_gpu = pytest.mark.skipif(_gpu_count() < 1, reason="no CUDA device")

WIDTHS = [64, 768, 1000, 1024, 4096, 8192, 16384, 20000]
# Absolute tolerance on outputs of size ~1, relative to the largest reference value.
TOL = {"float32": 2e-5, "float64": 1e-12, "float16": 2e-3, "bfloat16": 1.6e-2}


def test_import_lnrs_does_not_import_cupy():
    code = "import sys, lnrs; sys.exit('cupy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_compile_all_without_gpu():
    try:
        version = lcuda.nvrtc_version()
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"NVRTC not available: {e}")
    names = lcuda.compile_all("sm_90")
    assert len(names) == len(set(names)) == 74, version
    assert all(n.startswith("_Z") for n in names)


def test_numpy_input_is_a_type_error():
    with pytest.raises(TypeError, match="cupy.ndarray"):
        lcuda.layer_norm(np.zeros((2, 4), np.float32), 4)


def _dtype(name):
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(name)


def _dev(a):
    try:
        return cupy.asarray(a)
    except Exception as e:  # CuPy without bfloat16
        pytest.skip(f"CuPy cannot hold {a.dtype}: {e}")


def _host(a):
    return cupy.asnumpy(a).astype(np.float64)


def _rows(n):
    return max(3, min(67, 400_000 // n))


def _ref_forward(x, w, b, eps, rms):
    if rms:
        mean = np.zeros(x.shape[0])
        rstd = 1.0 / np.sqrt((x * x).mean(axis=1) + eps)
    else:
        mean = x.mean(axis=1)
        rstd = 1.0 / np.sqrt(((x - mean[:, None]) ** 2).mean(axis=1) + eps)
    y = (x - mean[:, None]) * rstd[:, None] * w + (0 if b is None else b)
    return y, mean, rstd


def _ref_backward(dy, x, mean, rstd, w, rms):
    n = x.shape[1]
    xhat = (x - mean[:, None]) * rstd[:, None]
    g = dy * w
    c1 = (g * xhat).sum(axis=1, keepdims=True) / n
    c2 = 0 if rms else g.sum(axis=1, keepdims=True) / n
    dx = rstd[:, None] * (g - c2 - xhat * c1)
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


def _close(got, ref, dtype_name, what, scale=None):
    got = _host(got)
    scale = max(1.0, float(np.abs(ref).max())) if scale is None else scale
    err = float(np.abs(got - ref).max()) / scale
    assert err <= TOL[dtype_name], f"{what}: error {err:.3g} > {TOL[dtype_name]}"


def _data(dtype_name, n, seed=0):
    dt = _dtype(dtype_name)
    rng = np.random.default_rng(seed + n)
    m = _rows(n)
    x = (rng.standard_normal((m, n)) * 2 + 3).astype(dt)
    r = rng.standard_normal((m, n)).astype(dt)
    dy = rng.standard_normal((m, n)).astype(dt)
    w = rng.uniform(0.5, 1.5, n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    return x, r, dy, w, b


DTYPES = ["float32", "float16", "bfloat16", "float64"]


@needs_gpu
@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rms_norm"])
@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_forward_and_backward(dtype_name, n, rms):
    x, _, dy, w, b = _data(dtype_name, n)
    xd, dyd, wd, bd = _dev(x), _dev(dy), cupy.asarray(w), cupy.asarray(b)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    eps = 1e-5
    y_ref, mean_ref, rstd_ref = _ref_forward(x64, w, None if rms else b, eps, rms)
    if rms:
        y, rstd = lcuda.rms_norm_forward(xd, n, wd, eps)
        y2 = lcuda.rms_norm(xd, (n,), wd, eps)
    else:
        y, mean, rstd = lcuda.layer_norm_forward(xd, n, wd, bd, eps)
        y2 = lcuda.layer_norm(xd, (n,), wd, bd, eps)
        _close(mean, mean_ref, dtype_name, "mean")
    assert isinstance(y, cupy.ndarray) and y.dtype == xd.dtype and y.shape == x.shape
    assert cupy.array_equal(y, y2)
    _close(y, y_ref, dtype_name, "y")
    _close(rstd, rstd_ref, dtype_name, "rstd", scale=float(rstd_ref.max()))

    dx_ref, dw_ref, db_ref = _ref_backward(dy64, x64, mean_ref, rstd_ref, w, rms)
    for eps_arg in (None, eps):
        if rms:
            dx, dw = lcuda.rms_norm_backward(dyd, xd, rstd, n, wd, eps=eps_arg)
        else:
            dx, dw, db = lcuda.layer_norm_backward(dyd, xd, mean, rstd, n, wd, eps=eps_arg)
            _close(db, db_ref, dtype_name, "dbias", scale=float(np.abs(dy64).sum(axis=0).max()))
        assert dx.dtype == xd.dtype
        _close(dx, dx_ref, dtype_name, "dx")
        scale = float(np.abs(dy64 * (x64 - mean_ref[:, None]) * rstd_ref[:, None]).sum(0).max())
        _close(dw, dw_ref, dtype_name, "dweight", scale=scale)


@needs_gpu
@pytest.mark.parametrize("rms", [False, True], ids=["add_layer_norm", "add_rms_norm"])
@pytest.mark.parametrize("n", [64, 1000, 4096, 20000])
@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
def test_add_norm(dtype_name, n, rms):
    x, r, _, w, b = _data(dtype_name, n, seed=1)
    xd, rd = _dev(x), _dev(r)
    if rms:
        y, s = lcuda.add_rms_norm(xd, rd, n, cupy.asarray(w), 1e-5)
    else:
        y, s = lcuda.add_layer_norm(xd, rd, n, cupy.asarray(w), cupy.asarray(b), 1e-5)
    s_ref = (x.astype(np.float32) + r.astype(np.float32)).astype(x.dtype)
    np.testing.assert_array_equal(_host(s), s_ref.astype(np.float64))
    y_ref, _, _ = _ref_forward(s_ref.astype(np.float64), w, None if rms else b, 1e-5, rms)
    _close(y, y_ref, dtype_name, "y")


@needs_gpu
@pytest.mark.parametrize("n", [768, 4096, 20000])
def test_dweight_is_deterministic(n):
    x, _, dy, w, _ = _data("float32", n, seed=2)
    x = np.concatenate([x] * 20)
    dy = np.concatenate([dy] * 20)
    xd, dyd, wd = cupy.asarray(x), cupy.asarray(dy), cupy.asarray(w)
    _, mean, rstd = lcuda.layer_norm_forward(xd, n, wd)
    first = lcuda.layer_norm_backward(dyd, xd, mean, rstd, n, wd)
    for _ in range(3):
        again = lcuda.layer_norm_backward(dyd, xd, mean, rstd, n, wd)
        for a, b in zip(first, again):
            assert cupy.array_equal(a, b)


@needs_gpu
def test_out_in_place_and_unaligned():
    x, _, _, w, b = _data("float32", 1024)
    xd = cupy.asarray(x)
    ref = lcuda.layer_norm(xd, 1024, cupy.asarray(w), cupy.asarray(b))
    inplace = xd.copy()
    got = lcuda.layer_norm(inplace, 1024, cupy.asarray(w), cupy.asarray(b), out=inplace)
    assert got is inplace and cupy.array_equal(got, ref)
    # An odd offset into a buffer: scalar loads.
    flat = cupy.empty(x.size + 1, np.float32)
    flat[1:] = xd.ravel()
    shifted = flat[1:].reshape(x.shape)
    assert cupy.array_equal(lcuda.layer_norm(shifted, 1024, cupy.asarray(w), cupy.asarray(b)), ref)


@needs_gpu
def test_errors_name_the_argument():
    x = cupy.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="normalized_shape"):
        lcuda.layer_norm(x, 7)
    with pytest.raises(ValueError, match="weight"):
        lcuda.layer_norm(x, 8, cupy.ones(7, np.float32))
    with pytest.raises(TypeError, match="x must have dtype"):
        lcuda.layer_norm(cupy.zeros((4, 8), np.int32), 8)
    with pytest.raises(ValueError, match="dy"):
        _, mean, rstd = lcuda.layer_norm_forward(x, 8)
        lcuda.layer_norm_backward(cupy.zeros((4, 9), np.float32), x, mean, rstd, 8)
