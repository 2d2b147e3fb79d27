"""CPU tensors and NumPy arrays as views of each other, bfloat16 included (as
ml_dtypes.bfloat16, through the bits: neither library converts the other's
bfloat16). Shared by lnrs.torch, lnrs.testing's PyTorch peer and the benchmark;
importing this module imports neither torch nor ml_dtypes."""

from __future__ import annotations

import numpy as np


def tensor_view(torch, a: np.ndarray):
    """A CPU tensor on the memory of the ndarray `a` (`torch`: the torch module)."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def numpy_view(t) -> np.ndarray:
    """An ndarray on the memory of the CPU tensor `t` (detached; a non-contiguous
    bfloat16 tensor is made contiguous first)."""
    t = t.detach()
    if str(t.dtype) == "torch.bfloat16":
        import ml_dtypes
        import torch

        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()
