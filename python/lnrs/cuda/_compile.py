"""The kernel variants and their compilation.

Variants are C++ template instantiations of ``norm.cu`` named through NVRTC name expressions:
per storage type (float32, float64, float16, bfloat16) and per row-width class (elements held per
thread ``E``, 16-byte vector loads or element-wise ones, a warp or a CTA per row), plus the
"stream" kernels for rows wider than the register classes and the fixed-order reduction of
backward's partials.

Two ways in:

* :func:`compile_all` runs NVRTC directly through ``cupy_backends.cuda.libs.nvrtc`` (createProgram,
  addNameExpression, compileProgram, getPTX, getLoweredName). It needs no GPU and no driver: CuPy's
  high-level ``compile_using_nvrtc`` asks the driver for its version and fails on a machine without
  a GPU, the bindings underneath do not. ``norm.cu`` includes no CUDA header (its 16-bit types are
  its own), so no include path is needed either, under NVRTC 12 or 13.
* :func:`get_module` builds a ``cupy.RawModule`` per storage type and device on first use; CuPy
  compiles it then and keeps the binary in its kernel cache (``~/.cupy/kernel_cache``).

Finding NVRTC: CuPy (13+) loads ``libnvrtc`` from a CUDA toolkit (``CUDA_PATH``) or from the
``nvidia-cuda-nvrtc-cu12`` wheel. Where it cannot, :func:`_preload_nvrtc` loads the wheel's
``libnvrtc.so.*`` with ``ctypes`` (RTLD_GLOBAL) before the bindings are touched, so that the
bindings' own ``dlopen("libnvrtc.so.12")`` finds the already loaded library.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from pathlib import Path

SOURCE_FILE = Path(__file__).with_name("norm.cu")

# Storage dtype name -> (C++ type in norm.cu, elements per 16-byte vector, accumulation dtype name).
# A row takes the vector variants when its length is a multiple of the vector's.
TYPES = {
    "float32": ("float", 4, "float32"),
    "float64": ("double", 2, "float64"),
    "float16": ("lnrs_half", 8, "float32"),
    "bfloat16": ("lnrs_bf16", 8, "float32"),
}
ACC_CTYPE = {"float32": "float", "float64": "double"}

# Elements per thread held in registers: a warp per row up to 32*E elements (forward up to 2048,
# backward, which holds x and dy, up to 512), a CTA of up to 1024 threads per row up to 1024*E.
FWD_WARP_E = (8, 16, 32, 64)
BWD_WARP_E = (8, 16)
BLOCK_E = 16
MAX_THREADS = 1024

_lock = threading.Lock()
_modules: dict = {}


def source() -> str:
    return SOURCE_FILE.read_text()


def _b(flag: bool) -> str:
    return "true" if flag else "false"


def fwd_name(dtype: str, e: int, aligned: bool, block: bool) -> str:
    return f"lnrs_fwd<{TYPES[dtype][0]}, {e}, {_b(aligned)}, {_b(block)}>"


def bwd_name(dtype: str, e: int, aligned: bool, block: bool) -> str:
    return f"lnrs_bwd<{TYPES[dtype][0]}, {e}, {_b(aligned)}, {_b(block)}>"


def fwd_stream_name(dtype: str) -> str:
    return f"lnrs_fwd_stream<{TYPES[dtype][0]}>"


def bwd_stream_name(dtype: str) -> str:
    return f"lnrs_bwd_stream<{TYPES[dtype][0]}>"


def reduce_name(acc_dtype: str) -> str:
    return f"lnrs_reduce_partials<{ACC_CTYPE[acc_dtype]}>"


def name_expressions(dtype: str) -> list[str]:
    """Every kernel one storage type uses (its module)."""
    both = (True, False)
    names = [fwd_name(dtype, e, a, False) for e in FWD_WARP_E for a in both]
    names += [fwd_name(dtype, BLOCK_E, a, True) for a in both]
    names += [bwd_name(dtype, e, a, False) for e in BWD_WARP_E for a in both]
    names += [bwd_name(dtype, BLOCK_E, a, True) for a in both]
    names += [fwd_stream_name(dtype), bwd_stream_name(dtype), reduce_name(TYPES[dtype][2])]
    return names


def options(arch: str | None = None) -> tuple[str, ...]:
    opts = ("-std=c++14",)
    if arch is not None:
        opts += (f"--gpu-architecture={arch}",)
    return opts


def _preload_nvrtc() -> None:
    """Load the ``nvidia-cuda-nvrtc-cu12``/``cu13`` wheel's libnvrtc where CuPy may not look."""
    try:
        import nvidia  # namespace package of the NVIDIA wheels
    except ImportError:
        return
    for root in getattr(nvidia, "__path__", []):
        pattern = os.path.join(root, "*", "lib", "libnvrtc.so.*")
        for lib in sorted(glob.glob(pattern)):
            if "builtins" in lib or ".alt." in lib:
                continue
            try:
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
                return
            except OSError:
                continue


def _nvrtc():
    """CuPy's NVRTC bindings, with a working libnvrtc behind them."""
    try:
        from cupy_backends.cuda.libs import nvrtc
    except ImportError as e:
        raise ImportError(f"lnrs.cuda needs CuPy (pip install cupy-cuda12x): {e}") from e
    try:
        nvrtc.getVersion()
    except Exception:  # the library did not load: try the wheel's
        _preload_nvrtc()
        try:
            nvrtc.getVersion()
        except Exception as e:
            raise RuntimeError(
                "lnrs.cuda: NVRTC (libnvrtc) could not be loaded; install a CUDA toolkit or "
                f"pip install nvidia-cuda-nvrtc-cu12: {e}"
            ) from e
    return nvrtc


def nvrtc_version() -> tuple[int, int]:
    return tuple(_nvrtc().getVersion())


def compile_all(arch: str = "sm_90") -> list[str]:
    """Compile every kernel variant to PTX with NVRTC and return their lowered (mangled) names.

    Needs CuPy and NVRTC but no GPU. ``arch`` is ``sm_XX`` or ``compute_XX``; PTX is made for
    ``compute_XX``. Raises RuntimeError with NVRTC's log when a variant does not compile.
    """
    nvrtc = _nvrtc()
    target = "compute_" + arch.split("_", 1)[-1]
    src = source()
    names = [n for d in TYPES for n in name_expressions(d)]
    names = list(dict.fromkeys(names))  # the float32 reduction is shared by three types
    prog = nvrtc.createProgram(src, SOURCE_FILE.name, [], [])
    try:
        for n in names:
            nvrtc.addNameExpression(prog, n)
        try:
            nvrtc.compileProgram(prog, list(options(target)))
        except Exception as e:
            raise RuntimeError(
                f"lnrs.cuda: NVRTC failed for {target}: {e}\n{nvrtc.getProgramLog(prog)}"
            ) from e
        ptx = nvrtc.getPTX(prog)
        if not ptx:
            raise RuntimeError("lnrs.cuda: NVRTC produced no PTX")
        return [nvrtc.getLoweredName(prog, n) for n in names]
    finally:
        nvrtc.destroyProgram(prog)


def get_module(dtype: str, device_id: int):
    """The ``cupy.RawModule`` for storage type ``dtype`` on one device (compiled on first use)."""
    key = (dtype, device_id)
    mod = _modules.get(key)
    if mod is None:
        import cupy

        with _lock:
            mod = _modules.get(key)
            if mod is None:
                mod = cupy.RawModule(
                    code=source(), options=options(), name_expressions=name_expressions(dtype)
                )
                _modules[key] = mod
    return mod
