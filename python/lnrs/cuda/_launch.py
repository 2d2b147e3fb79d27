"""Argument checks, choice of kernel variant and launch configuration, and the launches."""

from __future__ import annotations

import functools

import cupy
import numpy as np

from .. import _checks
from . import _compile as C

_NULL = np.uint64(0)  # a null pointer argument
_STATIC_SMEM = 2048  # the kernels' static shared memory (at most 1.5 KiB), rounded up
_MAX_N = 2**30  # row length: the kernels index a row with 32-bit ints (2n of them in partials)


def _require_device(x) -> int:
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError and friends: no driver or no device
        raise RuntimeError(f"lnrs.cuda: no usable CUDA device: {e}") from None
    if count < 1:
        raise RuntimeError("lnrs.cuda: no CUDA device")
    return x.device.id


def _array(x, name: str) -> cupy.ndarray:
    if not isinstance(x, cupy.ndarray):
        raise TypeError(f"{name} must be a cupy.ndarray, got {type(x).__name__}")
    if np.dtype(x.dtype).name not in C.TYPES:
        raise TypeError(f"{name} must have dtype {_checks.DTYPES}, got {x.dtype}")
    return x


def _like(a, x, name: str) -> cupy.ndarray:
    a = _array(a, name)
    _checks.matches_x(a, x, name)
    _on_device(a, name, x.device.id)
    return cupy.ascontiguousarray(a)


def _dims(normalized_shape, x) -> tuple[int, ...]:
    # The CPU path's check (it reads only x.shape and x.ndim), and the kernels' row limit.
    dims = _checks.normalized_shape(normalized_shape, x)
    n = int(np.prod(dims))
    if n >= _MAX_N:
        raise ValueError(
            f"normalized_shape: rows of at most {_MAX_N - 1} elements on the GPU, got {n}"
        )
    return dims


def _on_device(a, name: str, dev: int) -> None:
    if isinstance(a, cupy.ndarray) and a.device.id != dev:
        raise ValueError(f"{name} must be on x's device {dev}, got device {a.device.id}")


def _param(p, name, dims, acc, dev):
    """A weight or bias in the accumulation dtype (exact for half-type parameters)."""
    if p is None:
        return None
    _on_device(p, name, dev)
    p = cupy.asarray(p)
    if p.shape != dims:
        raise ValueError(f"{name} must have shape {dims} (normalized_shape), got {p.shape}")
    if np.dtype(p.dtype).kind not in "biuf" and np.dtype(p.dtype).name != "bfloat16":
        raise TypeError(f"{name} must hold real numbers, got dtype {p.dtype}")
    return cupy.ascontiguousarray(p.astype(acc, copy=False)).reshape(-1)


def _out(o, x, name):
    if o is None:
        return cupy.empty(x.shape, x.dtype)
    if not isinstance(o, cupy.ndarray):
        raise TypeError(f"{name} must be a cupy.ndarray, got {type(o).__name__}")
    _on_device(o, name, x.device.id)
    _checks.output_for(o, x, name)
    return o


def _overlap(a, b) -> bool:
    """Whether two C-contiguous arrays (or None) share bytes."""
    if a is None or b is None:
        return False
    return a.data.ptr < b.data.ptr + b.nbytes and b.data.ptr < a.data.ptr + a.nbytes


def _apart(a, outputs, in_place=None):
    """The CPU path's rule (_checks.apart) for a device array or None."""
    if a is None:
        return None
    return _checks.apart(a, outputs, in_place, overlap=_overlap, address=lambda a: a.data.ptr)


def _ptr(a):
    return _NULL if a is None else a


def _aligned(*arrays) -> bool:
    return all(a is None or a.data.ptr % 16 == 0 for a in arrays)


@functools.cache
def _attributes(device_id: int) -> dict:
    """The device's attributes, read once (CuPy queries every one of them on each access)."""
    return dict(cupy.cuda.Device(device_id).attributes)


@functools.lru_cache(maxsize=1024)
def _resident_ctas(kern, threads: int, smem: int, device_id: int) -> int:
    """CTAs the whole device holds at once (the persistent grid's size): per multiprocessor,
    the fewest that its threads, registers (allocated per warp in units of 256), shared memory
    (1 KiB of it reserved per CTA) and CTA slots allow; at least one."""
    a = _attributes(device_id)
    warp_regs = -(-kern.num_regs * 32 // 256) * 256
    per_sm = min(
        a["MaxThreadsPerMultiProcessor"] // threads,
        a.get("MaxRegistersPerMultiprocessor", 65536) // (warp_regs * (threads // 32)),
        a["MaxSharedMemoryPerMultiprocessor"] // (smem + kern.shared_size_bytes + 1024),
        a.get("MaxBlocksPerMultiprocessor", 16),
    )
    return a["MultiProcessorCount"] * max(1, per_sm)


def _grid(rows: int, rows_per_cta_min: int, max_ctas: int) -> tuple[int, int]:
    """(CTAs, rows per CTA): contiguous row ranges, at most max_ctas CTAs."""
    grid = max(1, min(-(-rows // rows_per_cta_min), max_ctas))
    per = -(-rows // grid)
    return -(-rows // per), per


def _smem(device_id: int) -> int:
    """Dynamic shared memory a CTA may opt into on the device, beside the kernels' static
    shared memory: 227 KiB less 2 on an H100 or H200, 163 on an A100, 99 on sm_86/89/120."""
    return _attributes(device_id)["MaxSharedMemoryPerBlockOptin"] - _STATIC_SMEM


def _allow_smem(kern, smem: int, limit: int) -> None:
    """Beyond 48 KiB of dynamic shared memory a function must be allowed it first. It is
    allowed the device's whole limit, the same value whatever the call, so that host threads
    launching it at once cannot lower it under one another."""
    if smem > 48 * 1024:
        kern.max_dynamic_shared_size_bytes = limit


def _row_cache(nbytes: int, limit: int) -> int:
    """Dynamic shared memory for a stream kernel's row cache: nbytes when it fits, else 0."""
    return nbytes if nbytes <= limit else 0


def _round32(k: int) -> int:
    return max(32, -(-k // 32) * 32)


def forward(x, residual, normalized_shape, weight, bias, eps, out, sum_out, *, rms, stats):
    """Returns (y, mean or None, rstd or None, s or None)."""
    x = _array(x, "x")
    dev = _require_device(x)
    dims = _dims(normalized_shape, x)
    eps = _checks.eps_value(eps)
    dt = np.dtype(x.dtype).name
    _, V, acc = C.TYPES[dt]
    lead = x.shape[: x.ndim - len(dims)]
    with cupy.cuda.Device(dev):
        w = _param(weight, "weight", dims, acc, dev)
        b = _param(bias, "bias", dims, acc, dev)
        xc = cupy.ascontiguousarray(x)
        res = None if residual is None else _like(residual, x, "residual")
        y = _out(out, x, "out")
        s = None if residual is None else _out(sum_out, x, "sum_out")
        if _overlap(y, s):
            raise ValueError("out and sum_out must not overlap")
        # As on the CPU: an input that overlaps an output is copied first, unless it is exactly
        # the output it is updated into (each element is read before it is written).
        xc = _apart(xc, (y, s), in_place=y)
        res = _apart(res, (y, s), in_place=s)
        w, b = _apart(w, (y, s)), _apart(b, (y, s))
        mean = cupy.empty(lead, acc) if stats and not rms else None
        rstd = cupy.empty(lead, acc) if stats else None
        n = int(np.prod(dims))
        rows = int(np.prod(lead))
        if rows == 0:
            return y, mean, rstd, s
        if n == 0:
            if mean is not None:
                mean.fill(np.nan)
            if rstd is not None:
                rstd.fill(np.nan)
            return y, mean, rstd, s
        aligned = n % V == 0 and _aligned(xc, res, y, s)
        mod = C.get_module(dt, dev)
        limit = _smem(dev)
        smem, extra, rows_min = 0, (), 1
        if n <= 32 * C.FWD_WARP_E[-1]:
            e = next(e for e in C.FWD_WARP_E if 32 * e >= n)
            kern, threads = mod.get(C.fwd_name(dt, e, aligned, False)), 256
            rows_min = threads // 32  # a row per warp
        elif n <= C.MAX_THREADS * C.BLOCK_E:
            threads = _round32(-(-n // C.BLOCK_E))
            kern = mod.get(C.fwd_name(dt, C.BLOCK_E, aligned, True))
        else:
            kern, threads = mod.get(C.fwd_stream_name(dt)), 1024
            smem = _row_cache(n * x.dtype.itemsize, limit)
            extra = (np.int32(smem > 0),)
        _allow_smem(kern, smem, limit)
        grid, per = _grid(rows, rows_min, _resident_ctas(kern, threads, smem, dev))
        args = (xc, _ptr(res), _ptr(s), y, _ptr(w), _ptr(b), _ptr(mean), _ptr(rstd))
        args += (np.int64(rows), np.int32(n), np.float64(eps), np.int32(rms), np.int64(per))
        kern((grid,), (threads,), args + extra, shared_mem=smem)
    return y, mean, rstd, s


def _stat(a, name, lead, x, acc, producer):
    _on_device(a, name, x.device.id)
    a = _array(a, name) if isinstance(a, cupy.ndarray) else cupy.asarray(a)
    _checks.stat_matches(a, name, lead, np.dtype(acc), x, producer)
    return cupy.ascontiguousarray(a)


def backward(dy, x, mean, rstd, normalized_shape, weight, eps, *, rms):
    """Returns (dx, dweight, dbias); dbias is None for RMSNorm."""
    x = _array(x, "x")
    dev = _require_device(x)
    dims = _dims(normalized_shape, x)
    dt = np.dtype(x.dtype).name
    _, V, acc = C.TYPES[dt]
    lead = x.shape[: x.ndim - len(dims)]
    producer = "rms_norm_forward" if rms else "layer_norm_forward"
    eps_v = None if eps is None else _checks.eps_value(eps)
    with cupy.cuda.Device(dev):
        xc = cupy.ascontiguousarray(x)
        dyc = _like(dy, x, "dy")
        m = None if rms else _stat(mean, "mean", lead, x, acc, producer)
        r = _stat(rstd, "rstd", lead, x, acc, producer)
        w = _param(weight, "weight", dims, acc, dev)
        dx = cupy.empty(x.shape, x.dtype)
        n = int(np.prod(dims))
        rows = int(np.prod(lead))
        if rows == 0 or n == 0:
            dw = cupy.zeros(dims, acc)
            return dx, dw, None if rms else cupy.zeros(dims, acc)
        aligned = n % V == 0 and _aligned(xc, dyc, dx)
        mod = C.get_module(dt, dev)
        limit = _smem(dev)
        smem, extra, rows_min = 2 * n * np.dtype(acc).itemsize, (), 1  # dweight, dbias sums
        if n <= 32 * C.BWD_WARP_E[-1]:
            e = next(e for e in C.BWD_WARP_E if 32 * e >= n)
            kern, threads = mod.get(C.bwd_name(dt, e, aligned, False)), 256
            rows_min = threads // 32  # a row per warp
        elif n <= C.MAX_THREADS * C.BWD_BLOCK_E[-1] and smem <= limit:
            e = next(e for e in C.BWD_BLOCK_E if C.MAX_THREADS * e >= n)
            threads = _round32(-(-n // e))
            kern = mod.get(C.bwd_name(dt, e, aligned, True))
        else:
            kern, threads = mod.get(C.bwd_stream_name(dt)), 1024
            smem = _row_cache(2 * n * x.dtype.itemsize, limit)
            extra = (np.int32(smem > 0),)
        _allow_smem(kern, smem, limit)
        grid, per = _grid(rows, rows_min, _resident_ctas(kern, threads, smem, dev))
        partial = cupy.empty((grid, 2 * n), acc)
        args = (dyc, xc, _ptr(m), r, _ptr(w), dx, partial, np.int64(rows), np.int32(n))
        args += (np.float64(0.0 if eps_v is None else eps_v), np.int32(rms))
        args += (np.int32(eps_v is not None), np.int64(per)) + extra
        kern((grid,), (threads,), args, shared_mem=smem)
        sums = cupy.empty(2 * n, acc)
        red = mod.get(C.reduce_name(acc))
        red((-(-2 * n // 256),), (256,), (partial, np.int32(grid), np.int32(2 * n), sums))
        dw = sums[:n].reshape(dims)
        db = None if rms else sums[n:].reshape(dims)
    return dx, dw, db
