"""Shared fixtures. The numerical reference lives in reference.py."""

from __future__ import annotations

import lnrs
import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


@pytest.fixture
def restore_threads():
    """Put the thread count back however the test ends."""
    before = lnrs.get_num_threads()
    yield before
    lnrs.set_num_threads(before)
