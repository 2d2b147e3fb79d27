"""Determinism across thread counts and SIMD levels, the environment variables
read at import, the thread-count API and `python -m lnrs info`.

Settings read at import are tested in fresh interpreters (subprocess), each of
which reports what it ran with, so a variable that is silently ignored fails.
"""

from __future__ import annotations

import json
import os
import re

import lnrs
import numpy as np
import pytest
import workers
from lnrs import _lnrs
from reference import max_ulp, reference_layer_norm, same_bits

KNOWN_LEVELS = ["scalar", "neon", "avx2", "avx512"]
SUPPORTED = list(_lnrs.supported_simd_levels())

# Each case is big enough to be split over threads (see parallel.rs: more than
# 2**14 elements), including a few long rows (rows < threads) and one single row.
WORKER = (
    workers.PRELUDE
    + r"""
cases = [
    ("f32-512x1024", np.float32, (512, 1024), 100.0),
    ("f64-300x1000", np.float64, (300, 1000), 1e4),
    ("f32-4096x33", np.float32, (4096, 33), 0.0),
    ("f32-3x100000", np.float32, (3, 100_000), -50.0),
    ("f64-2x65537", np.float64, (2, 65_537), 1.0),
    ("f32-1x300000", np.float32, (1, 300_000), 7.0),
]
result = {"threads": lnrs.get_num_threads(), "simd": lnrs.simd_level(), "cases": {}}
for seed, (name, dtype, shape, offset) in enumerate(cases, start=1000):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3 + offset).astype(dtype)
    w = rng.standard_normal(shape[-1]).astype(dtype)
    b = rng.standard_normal(shape[-1]).astype(dtype)
    y, mean, rstd = lnrs.layer_norm_forward(x, shape[-1], w, b)
    plain = lnrs.layer_norm(x, shape[-1])
    inplace = x.copy()
    lnrs.layer_norm(inplace, shape[-1], w, b, out=inplace)
    result["cases"][name] = [digest(y), digest(mean, rstd), digest(plain), digest(inplace)]
    if name == "f32-512x1024":
        np.save(sys.argv[1], y)
json.dump(result, sys.stdout)
"""
)


def _run_worker(tmp_path, **settings):
    tag = "-".join(f"{k}={v}" for k, v in settings.items()) or "default"
    npy = tmp_path / f"y-{tag}.npy"
    proc = workers.python("-c", WORKER, str(npy), timeout=120, **settings)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), np.load(npy)


@pytest.fixture(scope="module")
def default_threads():
    """The thread count a fresh process starts with (the cores it may use)."""
    proc = workers.python("-c", "import lnrs; print(lnrs.get_num_threads())")
    assert proc.returncode == 0, proc.stderr
    n = int(proc.stdout)
    assert 1 <= n <= (os.cpu_count() or n)
    return n


# ------------------------------------------------------------- determinism


def test_bitwise_identical_across_thread_counts(tmp_path):
    runs = {n: _run_worker(tmp_path, LNRS_NUM_THREADS=n) for n in (1, 2, 3)}
    for n, (report, _) in runs.items():
        assert report["threads"] == n, "LNRS_NUM_THREADS was not applied"
    base_report, base_y = runs[1]
    for n in (2, 3):
        report, y = runs[n]
        for name, digests in base_report["cases"].items():
            assert report["cases"][name] == digests, f"{name} differs with {n} threads"
        assert same_bits(y, base_y)
    # One inplace/out-of-place identity inside a run, and the saved output is right.
    for name, (y, _stats, _plain, inplace) in base_report["cases"].items():
        assert y == inplace, name
    rng = np.random.default_rng(1000)  # the worker's first case
    x = (rng.standard_normal((512, 1024)) * 3 + 100.0).astype(np.float32)
    w = rng.standard_normal(1024).astype(np.float32)
    b = rng.standard_normal(1024).astype(np.float32)
    ref, _, _ = reference_layer_norm(x, 1024, w, b)
    assert max_ulp(base_y, ref, np.float32) <= 2


@pytest.mark.skipif(len(SUPPORTED) < 2, reason="this CPU supports one SIMD level")
def test_bitwise_identical_across_simd_levels(tmp_path):
    runs = {level: _run_worker(tmp_path, LNRS_SIMD=level) for level in SUPPORTED}
    for level, (report, _) in runs.items():
        assert report["simd"] == level, "LNRS_SIMD was not applied"
    first = SUPPORTED[0]
    for level in SUPPORTED[1:]:
        for name, digests in runs[first][0]["cases"].items():
            assert runs[level][0]["cases"][name] == digests, f"{name}: {level} != {first}"
        assert same_bits(runs[level][1], runs[first][1])


def test_simd_levels_and_threads_together(tmp_path):
    lowest, highest = SUPPORTED[0], SUPPORTED[-1]
    a, ya = _run_worker(tmp_path, LNRS_SIMD=lowest, LNRS_NUM_THREADS=1)
    b, yb = _run_worker(tmp_path, LNRS_SIMD=highest, LNRS_NUM_THREADS=3)
    assert (a["simd"], a["threads"], b["simd"], b["threads"]) == (lowest, 1, highest, 3)
    assert a["cases"] == b["cases"]
    assert same_bits(ya, yb)


def test_bitwise_identical_after_set_num_threads(restore_threads, rng):
    x = (rng.standard_normal((700, 513)) + 20).astype(np.float32)
    x64 = rng.standard_normal((3, 70_001)) * 5
    w = rng.standard_normal(513).astype(np.float32)
    outputs = []
    for n in (1, 2, 3, 1):
        lnrs.set_num_threads(n)
        assert lnrs.get_num_threads() == n
        outputs.append(
            (lnrs.layer_norm_forward(x, 513, w, w), lnrs.layer_norm_forward(x64, 70_001))
        )
    (y0, m0, r0), (z0, zm0, zr0) = outputs[0]
    for (y, m, r), (z, zm, zr) in outputs[1:]:
        assert same_bits(y, y0) and same_bits(m, m0) and same_bits(r, r0)
        assert same_bits(z, z0) and same_bits(zm, zm0) and same_bits(zr, zr0)


def test_concurrent_python_threads_get_the_same_bits(rng):
    from concurrent.futures import ThreadPoolExecutor

    x = (rng.standard_normal((256, 1024)) + 3).astype(np.float32)
    expected = lnrs.layer_norm(x, 1024)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: lnrs.layer_norm(x, 1024), range(8)))
    for y in results:
        assert same_bits(y, expected)


# ------------------------------------------------------- environment variables


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", "2 threads", "99999999999999999999999"])
def test_invalid_num_threads_env_fails_import(value):
    proc = workers.python("-c", "import lnrs", LNRS_NUM_THREADS=value)
    assert proc.returncode != 0
    assert "ValueError" in proc.stderr, proc.stderr
    assert "LNRS_NUM_THREADS" in proc.stderr.strip().splitlines()[-1], proc.stderr


def _unsupported_levels():
    return [lvl for lvl in KNOWN_LEVELS if lvl not in SUPPORTED]


@pytest.mark.parametrize("value", ["foo", "avx1024", "sse2", "fastest"] + _unsupported_levels())
def test_invalid_simd_env_fails_import(value):
    proc = workers.python("-c", "import lnrs", LNRS_SIMD=value)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError"), proc.stderr
    assert "LNRS_SIMD" in last, proc.stderr


@pytest.mark.parametrize(
    "settings,expected",
    [
        ({"LNRS_NUM_THREADS": " 3 "}, {"threads": 3}),
        ({"LNRS_NUM_THREADS": "1"}, {"threads": 1}),
        ({"LNRS_NUM_THREADS": ""}, {}),
        ({"LNRS_SIMD": "SCALAR"}, {"simd": "scalar"}),
        ({"LNRS_SIMD": " scalar "}, {"simd": "scalar"}),
        ({"LNRS_SIMD": ""}, {}),
    ],
)
def test_valid_env_forms(settings, expected, default_threads):
    code = "import json, lnrs; print(json.dumps([lnrs.get_num_threads(), lnrs.simd_level()]))"
    proc = workers.python("-c", code, **settings)
    assert proc.returncode == 0, proc.stderr
    threads, simd = json.loads(proc.stdout)
    assert threads == expected.get("threads", default_threads)
    assert simd == expected.get("simd", SUPPORTED[-1])


def test_default_simd_level_is_the_best_supported():
    proc = workers.python("-c", "import lnrs; print(lnrs.simd_level())")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == SUPPORTED[-1]
    assert "scalar" in SUPPORTED
    assert set(SUPPORTED) <= set(KNOWN_LEVELS)


# ------------------------------------------------------------ thread-count API


def test_set_get_num_threads_round_trip(restore_threads):
    original = restore_threads
    assert isinstance(original, int) and original >= 1
    for n in (1, 3, 2, np.int64(4), original):
        lnrs.set_num_threads(n)
        assert lnrs.get_num_threads() == int(n)
        assert type(lnrs.get_num_threads()) is int


def test_rejected_thread_count_keeps_the_old_one(restore_threads):
    lnrs.set_num_threads(2)
    for bad in (0, -1, "2", True, 2.5):
        with pytest.raises((ValueError, TypeError)):
            lnrs.set_num_threads(bad)
        assert lnrs.get_num_threads() == 2


def test_simd_level_is_a_supported_name():
    assert lnrs.simd_level() in SUPPORTED


# ------------------------------------------------------------ python -m lnrs


def test_cli_info_default(default_threads):
    proc = workers.python("-m", "lnrs", "info")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(rf"^simd level\s+{re.escape(SUPPORTED[-1])}\s*$", out, re.M), out
    assert re.search(rf"^threads\s+{default_threads}\s*$", out, re.M), out
    assert re.search(rf"^lnrs\s+{re.escape(lnrs.__version__)}\s*$", out, re.M), out


def test_cli_info_reflects_environment():
    proc = workers.python("-m", "lnrs", "info", LNRS_NUM_THREADS=3, LNRS_SIMD="scalar")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^simd level\s+scalar\s*$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^threads\s+3\s*$", proc.stdout, re.M), proc.stdout


def test_cli_without_command_fails_cleanly():
    proc = workers.python("-m", "lnrs")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
