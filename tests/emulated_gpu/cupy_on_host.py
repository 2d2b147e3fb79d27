"""A stand-in for the part of CuPy (and of its NVRTC bindings) that lnrs.cuda and the GPU
tests use, on the host.

"Device" arrays hold host NumPy arrays in guarded allocations, in a class named
``cupy.ndarray`` (so lnrs's dispatch takes them for CuPy's) that refuses implicit conversion to
NumPy as CuPy's does. The NVRTC stand-in checks what lnrs.cuda compiles (source, variants,
options) and ``RawModule(path=...)`` loads its "image": the kernels then run in the emulator
(build.py, cuda_host.h, launch.h). Like the driver, a launch rejects more than 48 KiB of dynamic
shared memory unless the function's ``max_dynamic_shared_size_bytes`` allows it; unlike it,
every launch checks its arguments' kinds against the kernel's parameters and, after it ran,
the guard bytes around every live allocation.

``installed()`` puts the stand-ins in ``sys.modules`` for a while; ``SM_COUNT`` sets the
device's multiprocessor count (small, so that CTAs own several rows); ``SCHEDULE`` picks the
order in which a CTA's threads take turns between barriers (one of ``SCHEDULES``, as launch.h's
``Schedule``: thread by thread or warp by warp, ascending or descending; descending ones run
the grid's CTAs in descending order too).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import sys
import tempfile
import time
import types
import weakref
from pathlib import Path

import numpy as np

from . import build

SM_COUNT = 2
SMEM_OPTIN = 227 * 1024  # shared memory a CTA may opt into (H100/H200); 99 KiB on sm_86/89
SCHEDULES = (
    "round robin, ascending",
    "round robin, descending",
    "by warps, ascending",
    "by warps, descending",
)
SCHEDULE = 0
LAUNCHED: set[str] = set()  # the kernel variants launched (their name expressions)
_ALIGN = 256  # CuPy's allocations are at least 256-byte aligned
_GUARD = 256
_POISON = 0xFF  # NaN in every float type
_live: list[tuple[weakref.ref, int]] = []
_lib = None


class CUDARuntimeError(RuntimeError):
    pass


class _Pointer:
    def __init__(self, a: np.ndarray):
        self.ptr = a.__array_interface__["data"][0]


class ndarray:
    """A device array (device 0) held as a host NumPy array in a guarded allocation.

    Like CuPy's, it refuses implicit conversion to NumPy (``np.asarray(a)``): host data
    comes back through :func:`asnumpy` or ``.get()`` only.
    """

    __module__ = "cupy"

    def __init__(self, host: np.ndarray):
        self._a = host

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)
    data = property(lambda self: _Pointer(self._a))
    device = property(lambda self: Device(0))
    T = property(lambda self: ndarray(self._a.T))

    def __dlpack__(self, **kwargs):  # "device" memory is host memory: DLPack's CPU device
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed (cupy stand-in)")

    def __repr__(self):
        return f"cupy_on_host.ndarray({self._a!r})"

    def get(self) -> np.ndarray:
        return self._a.copy()

    def __getitem__(self, key):
        return ndarray(self._a[key])

    def __setitem__(self, key, value):
        self._a[key] = value._a if isinstance(value, ndarray) else value

    def reshape(self, *shape):
        return ndarray(self._a.reshape(*shape))

    def ravel(self):
        return ndarray(self._a.reshape(-1)) if self.flags.c_contiguous else self.copy().ravel()

    def fill(self, value) -> None:
        self._a.fill(value)

    def copy(self):
        out = empty(self.shape, self.dtype)
        out._a[...] = self._a
        return out

    def astype(self, dtype, copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        out = empty(self.shape, dtype)
        out._a[...] = self._a
        return out


def _allocate(shape, dtype) -> ndarray:
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    raw = np.full(nbytes + 2 * _GUARD + _ALIGN, _POISON, np.uint8)
    start = -raw.ctypes.data % _ALIGN + _GUARD
    _live.append((weakref.ref(raw), start, nbytes))
    return ndarray(raw[start : start + nbytes].view(dtype).reshape(shape))


def check_guards() -> None:
    """Raises when a kernel wrote outside an allocation (into its guard bytes)."""
    alive = []
    for ref, start, nbytes in _live:
        raw = ref()
        if raw is None:
            continue
        alive.append((ref, start, nbytes))
        before, after = raw[start - _GUARD : start], raw[start + nbytes : start + nbytes + _GUARD]
        if (before != _POISON).any() or (after != _POISON).any():
            raise AssertionError(f"a kernel wrote outside an allocation of {nbytes} bytes")
    _live[:] = alive


def empty(shape, dtype=np.float64) -> ndarray:
    return _allocate(shape if isinstance(shape, tuple) else (shape,), dtype)


def empty_like(a) -> ndarray:
    return empty(a.shape, a.dtype)


def zeros(shape, dtype=np.float64) -> ndarray:
    a = empty(shape, dtype)
    a[...] = 0
    return a


def ones(shape, dtype=np.float64) -> ndarray:
    a = empty(shape, dtype)
    a[...] = 1
    return a


def broadcast_to(a: ndarray, shape) -> ndarray:
    return ndarray(np.broadcast_to(a._a, shape))


def asarray(a, dtype=None) -> ndarray:
    if isinstance(a, ndarray):
        return a if dtype is None else a.astype(dtype, copy=False)
    host = np.asarray(a, dtype)
    out = empty(host.shape, host.dtype)
    out._a[...] = host
    return out


def ascontiguousarray(a: ndarray) -> ndarray:
    return a if a.flags.c_contiguous else a.copy()


def asnumpy(a) -> np.ndarray:
    return a.get() if isinstance(a, ndarray) else np.array(a)


def array_equal(a: ndarray, b: ndarray) -> bool:
    return np.array_equal(a._a, b._a)


class Device:
    def __init__(self, device_id=0):
        if device_id != 0:
            raise CUDARuntimeError(f"invalid device ordinal {device_id}")
        self.id = 0
        self.compute_capability = "90"
        self.attributes = {
            "MultiProcessorCount": SM_COUNT,
            "MaxSharedMemoryPerBlockOptin": SMEM_OPTIN,
            "MaxSharedMemoryPerMultiprocessor": SMEM_OPTIN + 1024,
            "MaxThreadsPerMultiProcessor": 2048,
            "MaxRegistersPerMultiprocessor": 65536,
            "MaxBlocksPerMultiprocessor": 32,
        }

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _get_device_count() -> int:
    return 1


class Function:
    # What a real function reports after compilation; fixed values here (the launch
    # configuration reads them, the emulator runs whatever it is given).
    num_regs = 64
    shared_size_bytes = 1536

    def __init__(self, name: str):
        self.name = name
        self._max_dynamic_smem = 0

    @property
    def max_dynamic_shared_size_bytes(self) -> int:
        return self._max_dynamic_smem

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, nbytes: int) -> None:
        # The driver refuses more than the device's opt-in limit less the static shared memory
        # (norm.cu's kernels: at most 1.5 KiB).
        if nbytes > SMEM_OPTIN - 1536:
            raise CUDARuntimeError(
                f"{self.name}: cuFuncSetAttribute({nbytes}) over the device's "
                f"{SMEM_OPTIN} bytes (CUDA_ERROR_INVALID_VALUE)"
            )
        self._max_dynamic_smem = nbytes

    def __call__(self, grid, block, args, shared_mem=0):
        if len(grid) != 1 or len(block) != 1:
            raise NotImplementedError("the emulator runs 1-D grids and blocks")
        if shared_mem > max(48 * 1024, self._max_dynamic_smem):
            raise CUDARuntimeError(
                f"{self.name}: {shared_mem} bytes of dynamic shared memory without raising "
                "max_dynamic_shared_size_bytes (CUDA_ERROR_INVALID_VALUE)"
            )
        kinds, slots = _pack(args)
        err = ctypes.create_string_buffer(1024)
        status = _lib.lnrs_emu_launch(
            self.name.encode(),
            int(grid[0]),
            int(block[0]),
            int(shared_mem),
            SCHEDULE,
            kinds.encode(),
            (ctypes.c_ulonglong * len(slots))(*slots),
            err,
            len(err),
        )
        LAUNCHED.add(self.name)
        if status:
            raise CUDARuntimeError(f"{self.name}: {err.value.decode()}")
        check_guards()


def _pack(args) -> tuple[str, list[int]]:
    kinds, slots = "", []
    for a in args:
        if isinstance(a, ndarray):
            kinds, value = kinds + "p", a.data.ptr
        elif isinstance(a, np.uint64):
            kinds, value = kinds + "Q", int(a)
        elif isinstance(a, np.int32):
            kinds, value = kinds + "i", int(a) & (2**64 - 1)
        elif isinstance(a, np.int64):
            kinds, value = kinds + "q", int(a) & (2**64 - 1)
        elif isinstance(a, np.float64):
            kinds, value = kinds + "d", int(np.array(a).view(np.uint64))
        else:
            raise TypeError(f"kernel argument of type {type(a).__name__} (pass NumPy scalars)")
        slots.append(value)
    return kinds, slots


_IMAGE_MAGIC = b"lnrs emulated image\n"
_LOWERED = "emulated::"


class _Program:
    def __init__(self, src: str):
        self.src, self.names, self.options = src, [], None


class _Nvrtc(types.ModuleType):
    """NVRTC's bindings as lnrs.cuda calls them: the "image" is the list of compiled name
    expressions, each of which must be a variant the emulator built; compileProgram checks
    the source and that the options keep IEEE float32 (no flush to zero)."""

    def __init__(self):
        super().__init__("cupy_backends.cuda.libs.nvrtc")

    @staticmethod
    def getVersion():
        return (0, 0)

    @staticmethod
    def getSupportedArchs():
        return (75, 80, 86, 89, 90, 100, 120)

    @staticmethod
    def createProgram(src, name, headers, include_names):
        return _Program(src)

    @staticmethod
    def addNameExpression(prog, name):
        prog.names.append(name)

    @staticmethod
    def compileProgram(prog, options):
        if prog.src != build.NORM_CU.read_text():
            raise RuntimeError("the emulator compiles python/lnrs/cuda/norm.cu only")
        missing = set(prog.names) - set(build.name_expressions())
        if missing:
            raise RuntimeError(f"no such kernel variants: {sorted(missing)}")
        for needed in ("-ftz=false", "-prec-div=true", "-prec-sqrt=true"):
            if needed not in options:
                raise RuntimeError(f"lnrs.cuda compiles without {needed}: {options}")
        prog.options = list(options)

    @staticmethod
    def getCUBIN(prog):
        return _IMAGE_MAGIC + "\n".join(prog.names).encode()

    getPTX = getCUBIN

    @staticmethod
    def getLoweredName(prog, name):
        return _LOWERED + name

    @staticmethod
    def getProgramLog(prog):
        return ""

    @staticmethod
    def destroyProgram(prog):
        pass


class RawModule:
    """Loads an image made by the NVRTC stand-in: its kernels run in the emulator."""

    def __init__(self, code=None, *, path=None, options=(), name_expressions=None):
        if code is not None or path is None:
            raise ValueError("lnrs.cuda loads compiled images: RawModule(path=...)")
        image = Path(path).read_bytes()
        if not image.startswith(_IMAGE_MAGIC):
            raise ValueError(f"{path} is not an image of the emulator's NVRTC stand-in")
        self.names = set(image[len(_IMAGE_MAGIC) :].decode().split("\n"))

    def get_function(self, lowered: str) -> Function:
        name = lowered.removeprefix(_LOWERED)
        if name not in self.names:
            raise KeyError(f"{lowered} is not in the module")
        return Function(name)


class Event:
    """Host time at record(); get_elapsed_time gives milliseconds between two."""

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


def _elapsed_ms(start: Event, stop: Event) -> float:
    return (stop.t - start.t) * 1e3


cuda = types.SimpleNamespace(
    Device=Device,
    Event=Event,
    get_elapsed_time=_elapsed_ms,
    runtime=types.SimpleNamespace(
        getDeviceCount=_get_device_count,
        getDeviceProperties=lambda device_id: {"name": b"lnrs CPU emulator"},
    ),
)
random = types.SimpleNamespace(
    standard_normal=lambda shape, dtype=np.float64: asarray(
        np.random.default_rng(0).standard_normal(shape).astype(dtype)
    )
)


def copyto(dst: ndarray, src: ndarray) -> None:
    dst._a[...] = src._a


def get_default_memory_pool():
    return types.SimpleNamespace(free_all_blocks=lambda: None)


@contextlib.contextmanager
def installed():
    """Within: ``import cupy`` gives this module, and lnrs.cuda is imported afresh on it.

    Yields lnrs.cuda; afterwards sys.modules (and the ``lnrs.cuda`` attribute) are as before.
    """
    global _lib
    _lib = build.library()
    import lnrs

    names = ("cupy", "cupy_backends", "lnrs.cuda")
    nvrtc = _Nvrtc()
    stand_ins = {"cupy": sys.modules[__name__], "cupy_backends.cuda.libs.nvrtc": nvrtc}
    for parent in ("cupy_backends", "cupy_backends.cuda", "cupy_backends.cuda.libs"):
        stand_ins[parent] = types.ModuleType(parent)
    stand_ins["cupy_backends.cuda.libs"].nvrtc = nvrtc
    cache = tempfile.TemporaryDirectory(prefix="lnrs_emulated_cache_")
    old_cache = os.environ.get("LNRS_CUDA_CACHE")
    os.environ["LNRS_CUDA_CACHE"] = cache.name
    saved = {
        k: v
        for k, v in sys.modules.items()
        if k.split(".")[0] in names[:2] or k == names[2] or k.startswith(names[2] + ".")
    }
    saved_attr = lnrs.__dict__.get("cuda")
    for k in saved:
        del sys.modules[k]
    sys.modules.update(stand_ins)
    try:
        yield importlib.import_module("lnrs.cuda")
    finally:
        for k in [k for k in sys.modules if k.split(".")[0] in names[:2] or k.startswith(names[2])]:
            del sys.modules[k]
        if old_cache is None:
            del os.environ["LNRS_CUDA_CACHE"]
        else:
            os.environ["LNRS_CUDA_CACHE"] = old_cache
        cache.cleanup()
        sys.modules.update(saved)
        if saved_attr is None:
            lnrs.__dict__.pop("cuda", None)
        else:
            lnrs.cuda = saved_attr
