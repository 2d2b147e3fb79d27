"""The kernel variants, their compilation by NVRTC, and the modules loaded from it.

Variants are C++ template instantiations of ``norm.cu`` named through NVRTC name expressions:
per storage type (float32, float64, float16, bfloat16) and per row-width class (elements held per
thread ``E``, 16-byte vector loads or element-wise ones, a warp or a CTA per row), plus the
"stream" kernels for rows wider than the register classes and the fixed-order reduction of
backward's partials.

lnrs runs NVRTC itself, through CuPy's bindings (``cupy_backends.cuda.libs.nvrtc``:
createProgram, addNameExpression, compileProgram, getCUBIN/getPTX, getLoweredName), rather than
through ``cupy.RawModule(code=...)``, for three reasons: the options are its own (CuPy appends
``-ftz=true``, which would flush float32 subnormals to zero; lnrs keeps them); CuPy's compile
path wants the CUDA runtime headers installed, although ``norm.cu`` includes none; and the
bindings need no GPU, so :func:`compile_all` checks every variant on any machine with NVRTC.

* :func:`compile_all` compiles every variant to PTX for one architecture (no GPU needed).
* :func:`get_module` compiles one storage type's variants for a device (a cubin for its
  architecture, or PTX for the newest one this NVRTC knows below it, which the driver
  finishes), keeps the image in a disk cache (``LNRS_CUDA_CACHE``, default
  ``~/.cache/lnrs/cuda``) keyed by source, options, NVRTC version and target, and loads it with
  ``cupy.RawModule(path=...)``.

Finding NVRTC: CuPy 14 finds ``libnvrtc`` in the ``nvidia-cuda-nvrtc-cu12`` (or CUDA 13's
``nvidia-cuda-nvrtc``) wheel by itself; CuPy 13 looks only in a CUDA toolkit. Where the bindings
cannot load it, :func:`_preload_nvrtc` loads the wheel's ``libnvrtc.so.*`` with ``ctypes``
(RTLD_GLOBAL), so that the bindings' own ``dlopen`` finds the already loaded library.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import tempfile
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
# The backward's CTA per row holds x and dy: 8 elements per thread up to 8192 (no register
# spills under the 64 registers that 1024 threads allow), 16 beyond (float32 spills ~100 bytes).
BWD_BLOCK_E = (8, BLOCK_E)
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
    names += [bwd_name(dtype, e, a, True) for e in BWD_BLOCK_E for a in both]
    names += [fwd_stream_name(dtype), bwd_stream_name(dtype), reduce_name(TYPES[dtype][2])]
    return names


def options(arch: str) -> tuple[str, ...]:
    """NVRTC options for ``arch`` (``sm_XX``: a cubin; ``compute_XX``: PTX). IEEE float32:
    subnormals kept (-ftz=false), divisions and square roots correctly rounded."""
    return (
        "-std=c++14",
        "-ftz=false",
        "-prec-div=true",
        "-prec-sqrt=true",
        f"--gpu-architecture={arch}",
    )


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


def compile_image(names: list[str], arch: str) -> tuple[bytes, dict[str, str]]:
    """Compiles the name expressions ``names`` of ``norm.cu`` for ``arch``: a cubin for
    ``sm_XX``, PTX for ``compute_XX``. Returns the image and each name's lowered (mangled) name.
    Raises RuntimeError with NVRTC's log when it does not compile."""
    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(source(), SOURCE_FILE.name, [], [])
    try:
        for n in names:
            nvrtc.addNameExpression(prog, n)
        try:
            nvrtc.compileProgram(prog, list(options(arch)))
        except Exception as e:
            raise RuntimeError(
                f"lnrs.cuda: NVRTC failed for {arch}: {e}\n{nvrtc.getProgramLog(prog)}"
            ) from e
        image = nvrtc.getCUBIN(prog) if arch.startswith("sm_") else nvrtc.getPTX(prog)
        if not image:
            raise RuntimeError(f"lnrs.cuda: NVRTC produced no image for {arch}")
        image = image.encode() if isinstance(image, str) else bytes(image)
        return image, {n: nvrtc.getLoweredName(prog, n) for n in names}
    finally:
        nvrtc.destroyProgram(prog)


def compile_all(arch: str = "sm_90") -> list[str]:
    """Compile every kernel variant to PTX with NVRTC and return their lowered (mangled) names.

    Needs CuPy and NVRTC but no GPU. ``arch`` is ``sm_XX`` or ``compute_XX``; PTX is made for
    ``compute_XX``. Raises RuntimeError with NVRTC's log when a variant does not compile.
    """
    names = list(dict.fromkeys(n for d in TYPES for n in name_expressions(d)))
    _, lowered = compile_image(names, "compute_" + arch.split("_", 1)[-1])
    return [lowered[n] for n in names]


def target(capability: int) -> str:
    """What to compile for a device of compute capability ``capability`` (e.g. 90): its own
    cubin when this NVRTC knows it, else PTX for the newest architecture below it."""
    archs = sorted(int(a) for a in _nvrtc().getSupportedArchs())
    if capability in archs:
        return f"sm_{capability}"
    older = [a for a in archs if a <= capability]
    if not older:
        raise RuntimeError(
            f"lnrs.cuda: NVRTC {nvrtc_version()} cannot compile for compute capability "
            f"{capability} (it knows {archs})"
        )
    return f"compute_{older[-1]}"


def _cache_dir() -> Path:
    env = os.environ.get("LNRS_CUDA_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lnrs" / "cuda"


def _cached_image(dtype: str, arch: str) -> tuple[Path, dict[str, str]]:
    """The image file of ``dtype``'s variants for ``arch`` and their lowered names, compiled
    on a cache miss. Where the cache folder is not writable, the image goes to a temporary one."""
    names = name_expressions(dtype)
    parts = [source(), *options(arch), str(nvrtc_version()), *names]
    stem = f"{dtype}_" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
    suffix = ".cubin" if arch.startswith("sm_") else ".ptx"
    folder = _cache_dir()
    try:
        lowered = json.loads((folder / f"{stem}.json").read_text())
        if (folder / f"{stem}{suffix}").exists():
            return folder / f"{stem}{suffix}", lowered
    except (OSError, ValueError):
        pass
    image, lowered = compile_image(names, arch)
    try:
        _write(folder, stem, suffix, image, lowered)
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="lnrs_cuda_"))
        _write(folder, stem, suffix, image, lowered)
    return folder / f"{stem}{suffix}", lowered


def _write(folder: Path, stem: str, suffix: str, image: bytes, lowered: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in ((stem + suffix, image), (stem + ".json", json.dumps(lowered).encode())):
        tmp = folder / f"{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, folder / name)  # atomic: a concurrent reader sees all or nothing


class Module:
    """One storage type's kernels on one device: ``get(name_expression)`` gives the function."""

    def __init__(self, raw_module, lowered: dict[str, str]):
        self._raw = raw_module
        self._lowered = lowered
        self._functions: dict = {}

    def get(self, name: str):
        f = self._functions.get(name)
        if f is None:  # a race makes two equal functions, and one is kept
            f = self._functions.setdefault(name, self._raw.get_function(self._lowered[name]))
        return f


def get_module(dtype: str, device_id: int) -> Module:
    """``dtype``'s kernels on one device (compiled, or read from the disk cache, on first use)."""
    key = (dtype, device_id)
    mod = _modules.get(key)
    if mod is None:
        import cupy

        with _lock:
            mod = _modules.get(key)
            if mod is None:
                capability = int(cupy.cuda.Device(device_id).compute_capability)
                path, lowered = _cached_image(dtype, target(capability))
                with cupy.cuda.Device(device_id):
                    mod = Module(cupy.RawModule(path=str(path)), lowered)
                _modules[key] = mod
    return mod
