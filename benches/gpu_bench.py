"""GPU benchmark of lnrs.cuda (run on a machine with an NVIDIA GPU; not a pytest module).

    python benches/gpu_bench.py [--quick] [--dry-run]

First checks every kernel against a float64 NumPy reference, then times forward and backward of
LayerNorm and RMSNorm at M = 16384 rows, N in {1024, 4096, 8192, 16384}, float32 and bfloat16:
CUDA events around each call, L2 flushed before it, next to torch.nn.functional.layer_norm /
rms_norm (when torch is importable) and the device copy bandwidth measured in the same run.
Bytes counted: forward 2 arrays (x read, y written), backward 3 (x, dy read, dx written).
Finishes in well under 5 minutes.
"""

from __future__ import annotations

import argparse
import time

import cupy
import lnrs.cuda as lc
import numpy as np

try:
    import torch
except ImportError:  # torch is optional
    torch = None

M = 16384
WIDTHS = (1024, 4096, 8192, 16384)
COPY_ELEMENTS = 2**29  # float32: 2 GiB copied for the bandwidth reference
FLUSH_ELEMENTS = 2**26  # float32: 256 MiB written before each timed call, five times the L2
REPS = 20


_flush = None


def timed(fn, warmup=3) -> float:
    """Mean seconds per call: CUDA events around each call, L2 flushed before each one."""
    global _flush
    if _flush is None:
        _flush = cupy.empty(FLUSH_ELEMENTS, np.float32)
    for _ in range(warmup):
        fn()
    events = [(cupy.cuda.Event(), cupy.cuda.Event()) for _ in range(REPS)]
    for start, stop in events:
        _flush.fill(0)
        start.record()
        fn()
        stop.record()
    events[-1][1].synchronize()
    return sum(cupy.cuda.get_elapsed_time(a, b) for a, b in events) / 1e3 / REPS


def copy_bandwidth() -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    src = cupy.ones(COPY_ELEMENTS, np.float32)
    dst = cupy.empty_like(src)
    t = timed(lambda: cupy.copyto(dst, src))
    return 2 * src.nbytes / t


def bf16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def check() -> None:
    """Every op against float64 NumPy at a few widths (one per kernel class)."""
    rng = np.random.default_rng(0)
    print("check vs float64 reference (max abs error / max |ref|):")
    for dt in (np.dtype(np.float32), bf16()):
        for n in (768, 1000, 4096, 16384, 20000):
            m = min(M, 64)
            x = (rng.standard_normal((m, n)) + 2).astype(dt)
            dy = rng.standard_normal((m, n)).astype(dt)
            w = rng.uniform(0.5, 1.5, n).astype(np.float32)
            b = rng.standard_normal(n).astype(np.float32)
            x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
            xd, dyd, wd, bd = cupy.asarray(x), cupy.asarray(dy), cupy.asarray(w), cupy.asarray(b)
            errs = []
            for rms in (False, True):
                mean = np.zeros(m) if rms else x64.mean(1)
                var = (x64 * x64).mean(1) if rms else ((x64 - mean[:, None]) ** 2).mean(1)
                rstd = 1 / np.sqrt(var + 1e-5)
                xhat = (x64 - mean[:, None]) * rstd[:, None]
                y_ref = xhat * w + (0 if rms else b)
                g = dy64 * w
                c2 = 0 if rms else g.mean(1, keepdims=True)
                dx_ref = rstd[:, None] * (g - c2 - xhat * (g * xhat).mean(1, keepdims=True))
                dw_ref = (dy64 * xhat).sum(0)
                if rms:
                    y, r = lc.rms_norm_forward(xd, n, wd, 1e-5)
                    dx, dw = lc.rms_norm_backward(dyd, xd, r, n, wd)
                else:
                    y, mu, r = lc.layer_norm_forward(xd, n, wd, bd, 1e-5)
                    dx, dw, _ = lc.layer_norm_backward(dyd, xd, mu, r, n, wd)
                for got, ref in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
                    got = cupy.asnumpy(got).astype(np.float64)
                    errs.append(np.abs(got - ref).max() / max(1.0, np.abs(ref).max()))
            print(f"  {dt.name:9s} N={n:6d}  " + " ".join(f"{e:.1e}" for e in errs))


def bench(quick: bool) -> None:
    bw = copy_bandwidth()
    print(f"\ndevice copy bandwidth: {bw / 1e12:.2f} TB/s")
    head = f"{'op':14s} {'dtype':9s} {'N':>6s} {'lnrs ms':>8s} {'TB/s':>6s} {'of copy':>7s}"
    print(head + f" {'torch ms':>9s} {'speedup':>7s}")
    widths = WIDTHS[:2] if quick else WIDTHS
    for dt in (np.dtype(np.float32), bf16()):
        for n in widths:
            bench_one(dt, n, bw)
            cupy.get_default_memory_pool().free_all_blocks()


def bench_one(dt, n, bw) -> None:
    x = cupy.random.standard_normal((M, n), dtype=np.float32).astype(dt)
    dy = cupy.random.standard_normal((M, n), dtype=np.float32).astype(dt)
    w = cupy.ones(n, np.float32)
    b = cupy.zeros(n, np.float32)
    _, mu, r = lc.layer_norm_forward(x, n, w, b)
    _, rr = lc.rms_norm_forward(x, n, w)
    ops = {
        "ln fwd": (2, lambda: lc.layer_norm(x, n, w, b)),
        "rms fwd": (2, lambda: lc.rms_norm(x, n, w)),
        "ln bwd": (3, lambda: lc.layer_norm_backward(dy, x, mu, r, n, w)),
        "rms bwd": (3, lambda: lc.rms_norm_backward(dy, x, rr, n, w)),
    }
    theirs = {}
    if torch is not None:
        try:
            theirs = torch_ops(x, dy, n)
        except Exception as e:  # noqa: BLE001 - lnrs's figures still come out, with the reason
            print(f"torch not compared for {dt.name} N={n}: {type(e).__name__}: {e}")
    for name, (arrays, fn) in ops.items():
        t = timed(fn)
        rate = arrays * x.nbytes / t
        line = f"{name:14s} {dt.name:9s} {n:6d} {t * 1e3:8.3f} {rate / 1e12:6.2f}"
        line += f" {rate / bw:7.2f}"
        if name in theirs:
            tt = timed(theirs[name])
            line += f" {tt * 1e3:9.3f} {tt / t:7.2f}"
        print(line, flush=True)


def torch_ops(x, dy, n):
    """PyTorch's kernels on the same memory (DLPack views)."""
    tx = torch.from_dlpack(x).requires_grad_(True)
    tdy = torch.from_dlpack(dy)
    tw = torch.ones(n, device=tx.device, dtype=tx.dtype, requires_grad=True)
    tb = torch.zeros(n, device=tx.device, dtype=tx.dtype, requires_grad=True)
    F = torch.nn.functional
    ops = {}
    with torch.no_grad():
        ops["ln fwd"] = lambda: F.layer_norm(tx, (n,), tw, tb)
        if hasattr(F, "rms_norm"):
            ops["rms fwd"] = lambda: F.rms_norm(tx, (n,), tw)
    y = F.layer_norm(tx, (n,), tw, tb)
    ops["ln bwd"] = lambda: torch.autograd.grad(y, (tx, tw, tb), tdy, retain_graph=True)
    if hasattr(F, "rms_norm"):
        yr = F.rms_norm(tx, (n,), tw)
        ops["rms bwd"] = lambda: torch.autograd.grad(yr, (tx, tw), tdy, retain_graph=True)

    # torch and CuPy both launch on the legacy default stream here, so CuPy's events
    # bracket torch's kernels too.
    return ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two widths only")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny sizes, two repetitions: the script end to end (the tests run it on the CPU "
        "emulator), no meaningful times",
    )
    args = parser.parse_args()
    if args.dry_run:
        global M, COPY_ELEMENTS, FLUSH_ELEMENTS, REPS
        M, COPY_ELEMENTS, FLUSH_ELEMENTS, REPS = 4, 2**12, 2**12, 2
    t0 = time.perf_counter()
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    print(f"device: {props['name'].decode()}")
    try:
        print(f"NVRTC {lc.nvrtc_version()}")
        t = time.perf_counter()
        lc.compile_all()
        print(f"compile_all: {time.perf_counter() - t:.1f} s")
    except (ImportError, RuntimeError) as e:  # no NVRTC bindings (the emulator)
        print(f"compile_all: not run ({e})")
    check()
    bench(args.quick)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
