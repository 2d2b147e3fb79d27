"""pytest-benchmark suites: lnrs against NumPy, ONNX Runtime and PyTorch.

Run with ``pytest benches/ --benchmark-only``; the normal ``pytest`` run collects
only ``tests/``. A peer that does not import is skipped. Each test's group is the
op and shape, so pytest-benchmark's table compares implementations side by side.
``python -m lnrs bench`` gives the same comparisons as fractions of the limit.
"""

from __future__ import annotations

import importlib.util
from functools import partial

import lnrs
import numpy as np
import pytest
from lnrs import _bench, _lnrs

if importlib.util.find_spec("pytest_benchmark") is None:
    # Without the plugin there is no `benchmark` fixture: collect nothing.
    collect_ignore_glob = ["test_*.py"]

SHAPES = [(1, 768), (4096, 1024), (8192, 4096)]
DTYPE = "float32"


@pytest.fixture(scope="module", params=SHAPES, ids=_bench.shape_name)
def case(request):
    """Inputs, output buffers and lnrs's own results for one shape."""
    return _bench.Case(*request.param, DTYPE)


def implementation(case, impl: str, op: str):
    """A no-argument call of ``impl`` doing ``op`` on ``case``, or a skip."""
    if impl == "lnrs":
        return _bench._lnrs_call(case, op)
    if impl == "triad":  # the limit for a forward pass: same bytes, no arithmetic
        return partial(_lnrs.triad, case.x, case.y, 2.0, 1.0)
    if impl == "numpy-copy":  # what a fresh output costs in NumPy itself
        return case.x.copy
    for module in _bench.PEER_MODULES[impl]:
        pytest.importorskip(module)
    entry = _bench.PEER_SETUP[impl](case, lnrs.get_num_threads())[op]
    if isinstance(entry, _bench.NotApplicable):
        pytest.skip(str(entry))
    fn, fetch = entry
    got = fetch(fn())  # warm-up, and a check that it computes what lnrs does
    for a, e in zip(got, case.expected[op]):
        np.testing.assert_allclose(a, e, rtol=1e-3, atol=1e-3 * max(1.0, np.abs(e).max()))
    return fn


@pytest.fixture
def run(benchmark, case):
    """``run(impl, op, group)``: time ``impl`` doing ``op``, in the group ``"{group} {shape}"``."""

    def run(impl: str, op: str, group: str) -> None:
        fn = implementation(case, impl, op)
        fn()  # first touch of fresh pages, lazy set-up
        benchmark.group = f"{group} {_bench.shape_name((case.rows, case.cols))}"
        benchmark.extra_info["bytes"] = _bench.ARRAYS_MOVED[op] * case.nbytes
        benchmark(fn)

    return run
