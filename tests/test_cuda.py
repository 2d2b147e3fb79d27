"""lnrs.cuda: the CuPy path.

The numerical tests run twice: on a GPU through CuPy (skipped without one), and on the CPU
emulator in tests/emulated_gpu (norm.cu compiled with g++, CTAs as fibers, a host stand-in
for CuPy; skipped without a C++ compiler). compile_all (every kernel variant through NVRTC)
needs CuPy and NVRTC but no GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from emulated_gpu import build, cupy_on_host


def _gpu_count(cupy) -> int:
    try:
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # CUDARuntimeError without a driver or a device
        return 0


@pytest.fixture(scope="module", params=["emulator", "gpu"])
def gpu(request):
    """(cupy, lnrs.cuda): CuPy on a CUDA device, or the emulator's stand-in on this CPU."""
    if request.param == "gpu":
        cupy = pytest.importorskip("cupy")
        if _gpu_count(cupy) < 1:
            pytest.skip("no CUDA device")
        import lnrs.cuda

        yield cupy, lnrs.cuda
    else:
        if build.compiler() is None:
            pytest.skip("no C++ compiler for the GPU emulator")
        with cupy_on_host.installed() as lc:
            yield cupy_on_host, lc


WIDTHS = [64, 768, 1000, 1024, 4096, 8192, 16384, 20000]
# Absolute tolerance on outputs of size ~1, relative to the largest reference value.
TOL = {"float32": 2e-5, "float64": 1e-12, "float16": 2e-3, "bfloat16": 1.6e-2}


def test_import_lnrs_does_not_import_cupy():
    code = "import sys, lnrs; sys.exit('cupy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_compile_all_without_gpu():
    pytest.importorskip("cupy")
    lcuda = pytest.importorskip("lnrs.cuda")
    try:
        version = lcuda.nvrtc_version()
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"NVRTC not available: {e}")
    names = lcuda.compile_all("sm_90")
    assert len(names) == len(set(names)) == 82, version
    assert all(n.startswith("_Z") for n in names)


def test_numpy_input_is_a_type_error(gpu):
    _, lc = gpu
    with pytest.raises(TypeError, match="cupy.ndarray"):
        lc.layer_norm(np.zeros((2, 4), np.float32), 4)


def _dtype(name):
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(name)


def _dev(cupy, a):
    try:
        return cupy.asarray(a)
    except Exception as e:  # CuPy without bfloat16
        pytest.skip(f"CuPy cannot hold {a.dtype}: {e}")


def _host(cupy, a):
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


def _close(cupy, got, ref, dtype_name, what, scale=None):
    got = _host(cupy, got)
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


@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rms_norm"])
@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_forward_and_backward(dtype_name, n, rms, gpu):
    cupy, lcuda = gpu
    x, _, dy, w, b = _data(dtype_name, n)
    xd, dyd, wd, bd = _dev(cupy, x), _dev(cupy, dy), cupy.asarray(w), cupy.asarray(b)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    eps = 1e-5
    y_ref, mean_ref, rstd_ref = _ref_forward(x64, w, None if rms else b, eps, rms)
    if rms:
        y, rstd = lcuda.rms_norm_forward(xd, n, wd, eps)
        y2 = lcuda.rms_norm(xd, (n,), wd, eps)
    else:
        y, mean, rstd = lcuda.layer_norm_forward(xd, n, wd, bd, eps)
        y2 = lcuda.layer_norm(xd, (n,), wd, bd, eps)
        _close(cupy, mean, mean_ref, dtype_name, "mean")
    assert isinstance(y, cupy.ndarray) and y.dtype == xd.dtype and y.shape == x.shape
    assert cupy.array_equal(y, y2)
    _close(cupy, y, y_ref, dtype_name, "y")
    _close(cupy, rstd, rstd_ref, dtype_name, "rstd", scale=float(rstd_ref.max()))

    dx_ref, dw_ref, db_ref = _ref_backward(dy64, x64, mean_ref, rstd_ref, w, rms)
    for eps_arg in (None, eps):
        if rms:
            dx, dw = lcuda.rms_norm_backward(dyd, xd, rstd, n, wd, eps=eps_arg)
        else:
            dx, dw, db = lcuda.layer_norm_backward(dyd, xd, mean, rstd, n, wd, eps=eps_arg)
            _close(
                cupy, db, db_ref, dtype_name, "dbias", scale=float(np.abs(dy64).sum(axis=0).max())
            )
        assert dx.dtype == xd.dtype
        _close(cupy, dx, dx_ref, dtype_name, "dx")
        scale = float(np.abs(dy64 * (x64 - mean_ref[:, None]) * rstd_ref[:, None]).sum(0).max())
        _close(cupy, dw, dw_ref, dtype_name, "dweight", scale=scale)


@pytest.mark.parametrize("rms", [False, True], ids=["add_layer_norm", "add_rms_norm"])
@pytest.mark.parametrize("n", [64, 1000, 4096, 20000])
@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
def test_add_norm(dtype_name, n, rms, gpu):
    cupy, lcuda = gpu
    x, r, _, w, b = _data(dtype_name, n, seed=1)
    xd, rd = _dev(cupy, x), _dev(cupy, r)
    if rms:
        y, s = lcuda.add_rms_norm(xd, rd, n, cupy.asarray(w), 1e-5)
    else:
        y, s = lcuda.add_layer_norm(xd, rd, n, cupy.asarray(w), cupy.asarray(b), 1e-5)
    s_ref = (x.astype(np.float32) + r.astype(np.float32)).astype(x.dtype)
    np.testing.assert_array_equal(_host(cupy, s), s_ref.astype(np.float64))
    y_ref, _, _ = _ref_forward(s_ref.astype(np.float64), w, None if rms else b, 1e-5, rms)
    _close(cupy, y, y_ref, dtype_name, "y")


@pytest.mark.parametrize("n", [768, 4096, 20000])
def test_dweight_is_deterministic(n, gpu):
    cupy, lcuda = gpu
    if cupy is cupy_on_host:
        pytest.skip(
            "the emulator runs in one order: see test_thread_and_cta_order_do_not_change_bits"
        )
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


def _every_op(cupy, lcuda, dtype_name, n, rows, seed=3):
    """Each function once on one input; checks against float64 and returns the results."""
    rng = np.random.default_rng(seed + n)
    dt = _dtype(dtype_name)
    x, r, dy = ((rng.standard_normal((rows, n)) * 2 + 1).astype(dt) for _ in range(3))
    w = rng.uniform(0.5, 1.5, n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    xd, rd, dyd = _dev(cupy, x), _dev(cupy, r), _dev(cupy, dy)
    wd, bd = cupy.asarray(w), cupy.asarray(b)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    wide = np.float64 if dtype_name == "float64" else np.float32  # the kernels' accumulation type
    s64 = (x.astype(wide) + r.astype(wide)).astype(dt).astype(np.float64)
    results = []
    for rms in (False, True):
        y_ref, mean_ref, rstd_ref = _ref_forward(x64, w, None if rms else b, 1e-5, rms)
        dx_ref, dw_ref, _ = _ref_backward(dy64, x64, mean_ref, rstd_ref, w, rms)
        ys_ref = _ref_forward(s64, w, None if rms else b, 1e-5, rms)[0]
        if rms:
            y, rstd = lcuda.rms_norm_forward(xd, n, wd, 1e-5)
            ys, s = lcuda.add_rms_norm(xd, rd, n, wd, 1e-5)
            grads = [lcuda.rms_norm_backward(dyd, xd, rstd, n, wd, eps=e) for e in (None, 1e-5)]
        else:
            y, mean, rstd = lcuda.layer_norm_forward(xd, n, wd, bd, 1e-5)
            ys, s = lcuda.add_layer_norm(xd, rd, n, wd, bd, 1e-5)
            grads = [
                lcuda.layer_norm_backward(dyd, xd, mean, rstd, n, wd, eps=e) for e in (None, 1e-5)
            ]
        _close(cupy, y, y_ref, dtype_name, "y")
        _close(cupy, ys, ys_ref, dtype_name, "y of x + residual")
        np.testing.assert_array_equal(_host(cupy, s), s64)
        scale = float(np.abs(dy64 * (x64 - mean_ref[:, None]) * rstd_ref[:, None]).sum(0).max())
        for g in grads:
            _close(cupy, g[0], dx_ref, dtype_name, "dx")
            _close(cupy, g[1], dw_ref, dtype_name, "dweight", scale=scale)
        results += [y, rstd, ys, s] + [a for g in grads for a in g if a is not None]
    return results


# Row lengths that reach every kernel variant: each warp class (forward 256/512/1024/2048,
# backward 256/512), the CTA classes (backward up to 8192 and beyond), the stream kernels beyond
# 16384, each with a length that is a multiple of every vector width (vector loads) and one that
# is not (element-wise loads).
VARIANT_WIDTHS = [256, 255, 512, 509, 1024, 1021, 2048, 2047, 4096, 4093, 12288, 12285]
VARIANT_WIDTHS += [16392, 16393]


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_every_kernel_variant_runs_and_is_right(dtype_name):
    """On the emulator: each variant compiled from norm.cu runs and gives the reference."""
    if build.compiler() is None:
        pytest.skip("no C++ compiler for the GPU emulator")
    with cupy_on_host.installed() as lcuda:
        from lnrs.cuda import _compile

        cupy_on_host.LAUNCHED.clear()
        for n in VARIANT_WIDTHS:
            _every_op(cupy_on_host, lcuda, dtype_name, n, rows=3)
        names = set(_compile.name_expressions(dtype_name))
        assert names - cupy_on_host.LAUNCHED == set()


# 30000: the stream kernels with the forward's row in shared memory, the backward's not (float32);
# 60000: neither.
@pytest.mark.parametrize("n", [64, 1000, 4096, 16392, 16393, 30000, 60000])
def test_thread_and_cta_order_do_not_change_bits(n):
    """On the emulator, under each schedule (threads or whole warps taking turns between
    barriers, ascending or descending, CTAs too): a missing barrier, shared memory reused too
    early, or a dependence between CTAs would change the results."""
    if build.compiler() is None:
        pytest.skip("no C++ compiler for the GPU emulator")
    with cupy_on_host.installed() as lcuda:
        runs = []
        for schedule in range(len(cupy_on_host.SCHEDULES)):
            cupy_on_host.SCHEDULE = schedule
            try:
                runs.append(_every_op(cupy_on_host, lcuda, "float32", n, rows=9))
            finally:
                cupy_on_host.SCHEDULE = 0
        for other in runs[1:]:
            for a, b in zip(runs[0], other):
                assert cupy_on_host.array_equal(a, b)


@pytest.mark.parametrize("optin_kib", [99, 163])
def test_devices_with_less_shared_memory(optin_kib):
    """On the emulator as an sm_86/89 (99 KiB a CTA) or A100 (163 KiB): the row caches and the
    backward's CTA kernel take what the device has, and the stream kernels do without."""
    if build.compiler() is None:
        pytest.skip("no C++ compiler for the GPU emulator")
    saved = cupy_on_host.SMEM_OPTIN
    cupy_on_host.SMEM_OPTIN = optin_kib * 1024
    try:
        with cupy_on_host.installed() as lcuda:
            for n in (12288, 16392, 30000):
                _every_op(cupy_on_host, lcuda, "float32", n, rows=3)
            _every_op(cupy_on_host, lcuda, "float64", 12288, rows=3)
    finally:
        cupy_on_host.SMEM_OPTIN = saved


def test_out_in_place_and_unaligned(gpu):
    cupy, lcuda = gpu
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


def test_errors_name_the_argument(gpu):
    cupy, lcuda = gpu
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
    with pytest.raises(ValueError, match="rows of at most"):
        lcuda.layer_norm(cupy.broadcast_to(cupy.zeros(1, np.float32), (1, 2**30)), 2**30)


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize(
    "shape, dims", [((5, 1), 1), ((4, 3), 3), ((2, 3, 7), (3, 7)), ((2, 4096), 4096)]
)
def test_shapes_agree_with_the_cpu_path(gpu, dtype_name, shape, dims):
    """The exact CPU kernels are the reference: same shapes and dtypes, values within TOL."""
    import lnrs

    cupy, lcuda = gpu
    rng = np.random.default_rng(7)
    dt = _dtype(dtype_name)
    x, dy = ((rng.standard_normal(shape) * 3 + 1).astype(dt) for _ in range(2))
    nd = np.atleast_1d(dims).size
    w = rng.uniform(0.5, 1.5, shape[-nd:]).astype(np.float32)
    b = rng.standard_normal(shape[-nd:]).astype(np.float32)
    xd, dyd = _dev(cupy, x), _dev(cupy, dy)
    got = lcuda.layer_norm_forward(xd, dims, cupy.asarray(w), cupy.asarray(b))
    ref = lnrs.layer_norm_forward(x, dims, w, b)
    grads = lcuda.layer_norm_backward(dyd, xd, got[1], got[2], dims, cupy.asarray(w))
    grads_ref = lnrs.layer_norm_backward(dy, x, ref[1], ref[2], dims, w)
    for g, r, what in zip(got + grads, ref + grads_ref, ("y", "mean", "rstd", "dx", "dw", "db")):
        assert g.shape == r.shape and g.dtype == r.dtype, what
        r64 = r.astype(np.float64)
        _close(cupy, g, r64, dtype_name, what, scale=max(1.0, float(np.abs(r64).max())))


@pytest.mark.parametrize("n", [64, 4096, 20000])
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_constant_and_non_finite_rows(gpu, dtype_name, n):
    """A constant row gives exactly bias (and dx = 0 for dy = 1); NaN and inf stay in their row."""
    cupy, lcuda = gpu
    dt = _dtype(dtype_name)
    x = np.random.default_rng(8).standard_normal((4, n)).astype(dt)
    x[0] = 3.0
    x[1, n // 2] = np.nan
    x[2, n // 3] = np.inf
    b = np.linspace(-1, 1, n).astype(np.float32)
    xd, bd = _dev(cupy, x), cupy.asarray(b)
    y, mean, rstd = lcuda.layer_norm_forward(xd, n, None, bd)
    y = cupy.asnumpy(y).astype(np.float64)
    np.testing.assert_array_equal(y[0], b.astype(dt).astype(np.float64))
    assert np.isnan(y[1]).all() and np.isnan(y[2]).all() and np.isfinite(y[3]).all()
    dx, _, _ = lcuda.layer_norm_backward(_dev(cupy, np.ones_like(x)), xd, mean, rstd, n)
    dx = cupy.asnumpy(dx).astype(np.float64)
    np.testing.assert_array_equal(dx[0], 0.0)
    assert np.isnan(dx[1]).all() and np.isfinite(dx[3]).all()


def test_non_contiguous_input_and_public_dispatch(gpu):
    """A transposed (strided) array gives the contiguous one's bits; lnrs's own functions hand
    CuPy arrays to lnrs.cuda and return the same bits."""
    import lnrs

    cupy, lcuda = gpu
    x = np.random.default_rng(9).standard_normal((1000, 6)).astype(np.float32)
    xt = cupy.asarray(x).T  # (6, 1000), not C-contiguous
    assert not xt.flags.c_contiguous
    xc = cupy.asarray(np.ascontiguousarray(x.T))
    w = cupy.asarray(np.linspace(0.5, 1.5, 1000).astype(np.float32))
    assert cupy.array_equal(lcuda.layer_norm(xt, 1000, w), lcuda.layer_norm(xc, 1000, w))
    y, mean, rstd = lnrs.layer_norm_forward(xc, 1000, w)
    dy = cupy.asarray(np.ones((6, 1000), np.float32))
    pairs = [
        (y, lcuda.layer_norm(xc, 1000, w)),
        (lnrs.rms_norm(xc, 1000, w), lcuda.rms_norm(xc, 1000, w)),
        (lnrs.add_layer_norm(xc, xc, 1000, w)[0], lcuda.add_layer_norm(xc, xc, 1000, w)[0]),
        (lnrs.add_rms_norm(xc, xc, 1000, w)[0], lcuda.add_rms_norm(xc, xc, 1000, w)[0]),
        (
            lnrs.layer_norm_backward(dy, xc, mean, rstd, 1000, w)[0],
            lcuda.layer_norm_backward(dy, xc, mean, rstd, 1000, w)[0],
        ),
    ]
    _, r = lnrs.rms_norm_forward(xc, 1000, w)
    pairs.append(
        (
            lnrs.rms_norm_backward(dy, xc, r, 1000, w)[0],
            lcuda.rms_norm_backward(dy, xc, r, 1000, w)[0],
        )
    )
    for a, b in pairs:
        assert isinstance(a, cupy.ndarray) and cupy.array_equal(a, b)


def test_gpu_bench_script_runs_end_to_end():
    """benches/gpu_bench.py --dry-run on the emulator: the device run must not fail on a slip."""
    import runpy
    from pathlib import Path

    if build.compiler() is None:
        pytest.skip("no C++ compiler for the GPU emulator")
    script = Path(__file__).resolve().parents[1] / "benches" / "gpu_bench.py"
    argv = sys.argv
    with cupy_on_host.installed():
        sys.argv = [str(script), "--quick", "--dry-run"]
        try:
            runpy.run_path(str(script), run_name="__main__")
        finally:
            sys.argv = argv


def test_cubin_without_gpu():
    """A device's image: a cubin for sm_90 from the real NVRTC, no GPU needed."""
    pytest.importorskip("cupy")
    lcuda = pytest.importorskip("lnrs.cuda")
    from lnrs.cuda import _compile

    try:
        lcuda.nvrtc_version()
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"NVRTC not available: {e}")
    assert _compile.target(90) == "sm_90"
    image, lowered = _compile.compile_image(_compile.name_expressions("float32"), "sm_90")
    assert image[:4] == b"\x7fELF" and all(v.startswith("_Z") for v in lowered.values())


def test_images_are_cached_on_disk(monkeypatch):
    """The second process (here: a cleared in-memory table) loads the image from
    LNRS_CUDA_CACHE without compiling; a corrupt names file is compiled again."""
    if build.compiler() is None:
        pytest.skip("no C++ compiler for the GPU emulator")
    with cupy_on_host.installed() as lcuda:
        from lnrs.cuda import _compile

        x = cupy_on_host.asarray(np.arange(12.0, dtype=np.float32).reshape(3, 4))
        first = lcuda.layer_norm(x, 4)
        cache = Path(os.environ["LNRS_CUDA_CACHE"])
        files = sorted(p.suffix for p in cache.iterdir())
        assert files == [".cubin", ".json"]
        _compile._modules.clear()
        compiled = []
        real = _compile.compile_image
        monkeypatch.setattr(_compile, "compile_image", lambda *a: compiled.append(a) or real(*a))
        assert cupy_on_host.array_equal(lcuda.layer_norm(x, 4), first) and not compiled
        next(cache.glob("*.json")).write_text("{not json")
        _compile._modules.clear()
        assert cupy_on_host.array_equal(lcuda.layer_norm(x, 4), first) and len(compiled) == 1


def test_overlapping_outputs(gpu):
    """As on the CPU: an out= that overlaps x without being x gets x's values as they were;
    out and sum_out must not overlap; sum_out=residual and out=x work in place."""
    cupy, lcuda = gpu
    rng = np.random.default_rng(10)
    m, n = 40, 1000  # rows for several CTAs: one CTA's output lands on another's input
    buf = cupy.asarray(rng.standard_normal((m + 1) * n).astype(np.float32))
    r = cupy.asarray(rng.standard_normal((m, n)).astype(np.float32))
    x = buf[: m * n].reshape(m, n)
    x0 = x.copy()  # x's values before out= overwrites them
    expected = lcuda.layer_norm(x0, n)
    expected_y, expected_s = lcuda.add_layer_norm(x0, r, n)
    shifted = buf[n:].reshape(m, n)  # one row further on: rows overlap x's
    assert cupy.array_equal(lcuda.layer_norm(x, n, out=shifted), expected)
    buf2 = cupy.asarray(np.zeros((m + 1) * n, np.float32))
    with pytest.raises(ValueError, match="out and sum_out must not overlap"):
        lcuda.add_layer_norm(
            x0, r, n, out=buf2[: m * n].reshape(m, n), sum_out=buf2[n:].reshape(m, n)
        )
    xi, ri = x0.copy(), r.copy()
    y, s = lcuda.add_layer_norm(xi, ri, n, out=xi, sum_out=ri)
    assert y is xi and s is ri
    assert cupy.array_equal(y, expected_y) and cupy.array_equal(s, expected_s)
