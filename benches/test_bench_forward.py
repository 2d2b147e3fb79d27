"""Forward: lnrs into an existing array (out=) and into a fresh one, against the
triad limit, NumPy's own copy, and the peers (ONNX Runtime also writes in place,
through an IOBinding; NumPy and PyTorch always allocate)."""

from __future__ import annotations

import pytest

IMPLEMENTATIONS = [
    ("triad", "forward_out"),
    ("numpy-copy", "forward"),
    ("lnrs", "forward_out"),
    ("lnrs", "forward"),
    ("numpy", "forward"),
    ("onnxruntime", "forward_out"),
    ("onnxruntime", "forward"),
    ("torch", "forward"),
]


@pytest.mark.parametrize(
    "impl, op", IMPLEMENTATIONS, ids=[f"{impl}-{op}" for impl, op in IMPLEMENTATIONS]
)
def test_forward(run, impl, op):
    run(impl, op, "forward")
