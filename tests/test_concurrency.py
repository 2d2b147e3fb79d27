"""Concurrency for servers (issue 6): lnrs releases the GIL, calls from many
Python threads at once give the bits of serial calls, and changing the thread
count while other threads compute is safe.

Sizes are chosen to cover every way a call runs: small calls that keep the GIL
(under 4096 elements), mid-sized ones that release it but run on the calling
thread alone (up to 2**14 elements), calls split over the pool, and long rows
whose blocks the pool's threads share.

One test measures throughput (two Python threads against one). Timing
assertions are normally out of place in unit tests on shared machines, so it
asserts only a loose bound (1.3x, where the issue's target is 1.7x) on the best
of several repetitions, and prints the measured ratio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import lnrs
import numpy as np
import pytest
from reference import same_bits

F32, F64 = np.float32, np.float64

# (shape, dtype): GIL kept; GIL released, inline; split over rows; long rows.
SIZES = [
    ((4, 768), F32),
    ((16, 1000), F64),
    ((256, 512), F32),
    ((96, 700), F64),
    ((2, 70_000), F32),
]
OPS = [
    "layer_norm",
    "layer_norm_out",
    "layer_norm_forward",
    "layer_norm_backward",
    "rms_norm",
    "rms_norm_forward",
    "rms_norm_backward",
    "add_layer_norm",
    "add_layer_norm_in_place",
    "add_rms_norm",
]


def make_job(op, shape, dtype, seed):
    """A call with its own inputs, as a function returning a tuple of arrays.
    Each call of the function starts from the same inputs (in-place ops work on
    fresh copies), so repeated calls give the same bits."""
    rng = np.random.default_rng(seed)
    n = shape[-1]
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    r = (rng.standard_normal(shape) * 4 - 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(n).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    if op == "layer_norm":
        return lambda: (lnrs.layer_norm(x, n, w, b),)
    if op == "layer_norm_out":
        out = np.empty_like(x)

        def call():
            y = lnrs.layer_norm(x, n, w, b, out=out)
            assert y is out
            return (y.copy(),)

        return call
    if op == "layer_norm_forward":
        return lambda: lnrs.layer_norm_forward(x, n, w, b)
    if op == "layer_norm_backward":
        _, mean, rstd = lnrs.layer_norm_forward(x, n, w, b)
        return lambda: lnrs.layer_norm_backward(dy, x, mean, rstd, n, w)
    if op == "rms_norm":
        return lambda: (lnrs.rms_norm(x, n, w),)
    if op == "rms_norm_forward":
        return lambda: lnrs.rms_norm_forward(x, n, w)
    if op == "rms_norm_backward":
        _, rstd = lnrs.rms_norm_forward(x, n, w)
        return lambda: lnrs.rms_norm_backward(dy, x, rstd, n, w)
    if op == "add_layer_norm":
        return lambda: lnrs.add_layer_norm(x, r, n, w, b)
    if op == "add_layer_norm_in_place":

        def call():
            xi, ri = x.copy(), r.copy()
            y, s = lnrs.add_layer_norm(xi, ri, n, w, b, out=xi, sum_out=ri)
            assert y is xi and s is ri
            return (y, s)

        return call
    if op == "add_rms_norm":
        return lambda: lnrs.add_rms_norm(x, r, n, w)
    raise AssertionError(op)


def all_jobs(seed0):
    jobs = []
    seed = seed0
    for op in OPS:
        for shape, dtype in SIZES:
            jobs.append((f"{op}-{shape}-{dtype.__name__}", make_job(op, shape, dtype, seed)))
            seed += 1
    return jobs


def assert_same_results(got, expected, name):
    assert len(got) == len(expected), name
    for a, b in zip(got, expected):
        assert same_bits(a, b), name


def run_concurrently(n_threads, work):
    """`work(i)` on `n_threads` Python threads released together; the results in
    thread order. Exceptions propagate."""
    barrier = threading.Barrier(n_threads)

    def start(i):
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(n_threads) as pool:
        return list(pool.map(start, range(n_threads)))


# ================================================= many threads, bitwise


def test_many_threads_own_inputs_give_serial_bits():
    n_threads, rounds = 8, 2
    per_thread = [all_jobs(1000 * (t + 1)) for t in range(n_threads)]
    expected = [[job() for _, job in jobs] for jobs in per_thread]

    def work(t):
        jobs = per_thread[t]
        results = []
        for k in range(rounds):
            # Each thread runs the jobs in its own rotated order, so that
            # different kinds of call overlap.
            order = [(i + t + k) % len(jobs) for i in range(len(jobs))]
            got = {i: jobs[i][1]() for i in order}
            results.append([got[i] for i in range(len(jobs))])
        return results

    all_results = run_concurrently(n_threads, work)
    for t, results in enumerate(all_results):
        for round_results in results:
            for (name, _), got, exp in zip(per_thread[t], round_results, expected[t]):
                assert_same_results(got, exp, f"thread {t}: {name}")


def test_threads_sharing_read_only_inputs():
    rng = np.random.default_rng(7)
    n_threads = 8
    shared = {}
    for shape, dtype in [((300, 1000), F32), ((3, 70_000), F64), ((8, 768), F32)]:
        n = shape[-1]
        x = (rng.standard_normal(shape) + 5).astype(dtype)
        r = rng.standard_normal(shape).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        w = rng.standard_normal(n).astype(dtype)
        b = rng.standard_normal(n).astype(dtype)
        for a in (x, r, dy, w, b):
            a.flags.writeable = False
        shared[shape] = (x, r, dy, w, b)

    def calls(x, r, dy, w, b):
        n = x.shape[-1]
        y, mean, rstd = lnrs.layer_norm_forward(x, n, w, b)
        dx, dw, db = lnrs.layer_norm_backward(dy, x, mean, rstd, n, w)
        yr, rr = lnrs.rms_norm_forward(x, n, w)
        ya, sa = lnrs.add_layer_norm(x, r, n, w, b)
        yb, sb = lnrs.add_rms_norm(x, r, n, w)
        return (y, mean, rstd, dx, dw, db, yr, rr, ya, sa, yb, sb)

    expected = {k: calls(*v) for k, v in shared.items()}

    def work(t):
        keys = list(shared)
        out = {}
        for k in keys[t % len(keys) :] + keys[: t % len(keys)]:
            out[k] = calls(*shared[k])
        return out

    for t, result in enumerate(run_concurrently(n_threads, work)):
        for k, got in result.items():
            assert_same_results(got, expected[k], f"thread {t}: {k}")
    # The shared inputs are still read-only and unchanged in shape.
    for x, *_ in shared.values():
        assert not x.flags.writeable


def test_existing_executor_map_pattern():
    # The pattern a server uses: one pool, requests of mixed sizes mapped over it.
    rng = np.random.default_rng(11)
    requests = [
        (rng.standard_normal((int(rng.integers(1, 200)), 768)) * 3).astype(np.float32)
        for _ in range(48)
    ]
    residuals = [rng.standard_normal(x.shape).astype(np.float32) for x in requests]
    w = rng.standard_normal(768).astype(np.float32)
    expected = [lnrs.add_rms_norm(x, r, 768, w) for x, r in zip(requests, residuals)]

    def serve(i):
        return lnrs.add_rms_norm(requests[i], residuals[i], 768, w)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(serve, range(len(requests))))
    for i, (g, e) in enumerate(zip(got, expected)):
        assert_same_results(g, e, f"request {i}")


# ============================================= changing the thread count


def test_set_num_threads_while_other_threads_compute(restore_threads):
    lnrs.set_num_threads(1)
    jobs = all_jobs(77)
    expected = [job() for _, job in jobs]
    lnrs.set_num_threads(2)
    stop = threading.Event()
    switches = [0]
    seen = set()

    def toggle():
        k = 0
        while not stop.is_set():
            n = (1, 2, 3)[k % 3]
            lnrs.set_num_threads(n)
            seen.add(lnrs.get_num_threads())
            switches[0] += 1
            k += 1
            if k % 4 == 0:
                time.sleep(0)

    def compute(t):
        mismatches = []
        for k in range(3):
            for j in range(len(jobs)):
                i = (j + t + k) % len(jobs)
                name, job = jobs[i]
                got = job()
                if len(got) != len(expected[i]) or not all(
                    same_bits(a, b) for a, b in zip(got, expected[i])
                ):
                    mismatches.append(name)
        return mismatches

    toggler = threading.Thread(target=toggle)
    toggler.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(compute, range(4)))
    finally:
        stop.set()
        toggler.join(timeout=30)
    assert not toggler.is_alive()
    for t, mismatches in enumerate(results):
        assert not mismatches, f"thread {t}: results changed under set_num_threads: {mismatches}"
    # The toggling really overlapped the computations.
    assert switches[0] >= 30, switches[0]
    assert seen <= {1, 2, 3} and len(seen) >= 2, seen
    # Still usable afterwards, at every count.
    for n in (3, 1, 2):
        lnrs.set_num_threads(n)
        assert lnrs.get_num_threads() == n
        for (name, job), exp in zip(jobs, expected):
            assert_same_results(job(), exp, f"after, {n} threads: {name}")


def test_set_num_threads_from_many_threads_at_once(restore_threads):
    # Several threads setting counts concurrently: no crash, and the count ends
    # as one of the values set.
    def work(t):
        for k in range(40):
            lnrs.set_num_threads(1 + (t + k) % 3)
            assert lnrs.get_num_threads() in (1, 2, 3)
        return True

    assert all(run_concurrently(6, work))
    assert lnrs.get_num_threads() in (1, 2, 3)
    x = np.random.default_rng(3).standard_normal((256, 512)).astype(np.float32)
    assert same_bits(lnrs.layer_norm(x, 512), lnrs.layer_norm(x.copy(), 512))


# ===================================================== the GIL is released


def test_gil_released_during_a_long_call(restore_threads):
    """A pure-Python thread keeps counting while another thread is inside lnrs.

    The switch interval is made short, so that if lnrs held the GIL the counter
    would advance for at most ~0.1 ms per call (between calls); released, it
    advances for the whole call."""
    lnrs.set_num_threads(1)  # two busy threads on two cores, not three
    x = np.random.default_rng(5).standard_normal((1, 2**22))
    out = np.empty_like(x)
    lnrs.layer_norm_forward(x, 2**22, out=out)  # warm up

    counter = [0]
    stop = threading.Event()

    def count():
        c = 0
        while not stop.is_set():
            c += 1
            counter[0] = c

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    thread = threading.Thread(target=count)
    thread.start()
    try:
        # The counter's own rate, with this thread asleep.
        time.sleep(0.02)
        c0, t0 = counter[0], time.perf_counter()
        time.sleep(0.1)
        rate = (counter[0] - c0) / (time.perf_counter() - t0)
        during, inside = 0, 0.0
        for _ in range(8):
            c_before, t_before = counter[0], time.perf_counter()
            lnrs.layer_norm_forward(x, 2**22, out=out)
            t_after, c_after = time.perf_counter(), counter[0]
            during += c_after - c_before
            inside += t_after - t_before
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old_interval)
    assert rate > 0
    fraction = during / (rate * inside)
    print(f"\ncounter progress during lnrs calls: {fraction:.2f} of its free rate")
    # Released: about 1 (the counter runs on the other core). Held: a few percent.
    assert fraction >= 0.2, (
        f"the counter advanced only {fraction:.2f} of its free rate while lnrs ran "
        f"({inside * 1e3:.1f} ms inside 8 calls): the GIL is not released"
    )


THROUGHPUT = r"""
import hashlib, json, sys, threading, time
import numpy as np
import lnrs

assert lnrs.get_num_threads() == 1
rows, cols = 2048, 4096
x = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
outs = [np.empty_like(x) for _ in range(2)]
block = bytes(range(256)) * 4096

calls = {
    "lnrs": (lambda i: lnrs.layer_norm(x, cols, out=outs[i]), 8),
    # A compute-bound call that releases the GIL (sha256 of 1 MiB): whether
    # this machine has two free cores at this moment.
    "control": (lambda i: hashlib.sha256(block).digest(), 40),
}

def rate(call, n, k):
    barrier = threading.Barrier(k + 1)

    def work(i):
        barrier.wait()
        for _ in range(n):
            call(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(k)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    return k * n / (time.perf_counter() - t0)

for i in range(2):
    calls["lnrs"][0](i)
reps = []
for _ in range(int(sys.argv[1])):
    rep = {}
    for name, (call, n) in calls.items():
        for k in (1, 2):
            rep[f"{name}-{k}"] = rate(call, n, k)
    reps.append(rep)
json.dump(reps, sys.stdout)
"""


def _throughput(repetitions):
    """The rates of each repetition: lnrs-1, lnrs-2, control-1, control-2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LNRS_")}
    env["LNRS_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", THROUGHPUT, str(repetitions)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_timing_two_python_threads_scale_throughput_with_one_lnrs_thread():
    """LNRS_NUM_THREADS=1: two Python threads calling layer_norm on 2048x4096
    float32 (out= preallocated) reach well over one thread's throughput, which
    they could not if the GIL were held.

    A timing test, made robust: the best two-thread rate over the best
    one-thread rate of several interleaved repetitions, a loose bound (1.3x;
    the issue's target is 1.7x), and a control measured beside it: a
    compute-bound call that releases the GIL (sha256 of 1 MiB). When even the
    control does not scale (other processes hold the cores), this machine
    cannot show scaling now and the test skips rather than fail. The ratios are
    printed."""
    reps = []
    for _ in range(3):
        reps += _throughput(5)
        best = {k: max(r[k] for r in reps) for k in reps[0]}
        ratio = best["lnrs-2"] / best["lnrs-1"]
        control = best["control-2"] / best["control-1"]
        if ratio >= 1.3:
            break
    print(
        f"\nthroughput, LNRS_NUM_THREADS=1, 2048x4096 float32 layer_norm, best of "
        f"{len(reps)}: one Python thread {best['lnrs-1']:.0f} calls/s, two "
        f"{best['lnrs-2']:.0f} calls/s: ratio {ratio:.2f} (GIL-free control {control:.2f})"
    )
    if ratio < 1.3 and control < 1.6:
        pytest.skip(
            f"this machine is busy: a GIL-free control scales only {control:.2f}x "
            f"on two threads (lnrs {ratio:.2f}x)"
        )
    assert ratio >= 1.3, (
        f"two Python threads reach only {ratio:.2f}x one thread's throughput "
        f"(the GIL-free control reached {control:.2f}x)"
    )
