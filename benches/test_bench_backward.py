"""Backward: lnrs against NumPy's standard formula and PyTorch autograd (ONNX
Runtime has no backward)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("impl", ["lnrs", "numpy", "torch"])
def test_backward(run, impl):
    run(impl, "backward", "backward")
