"""Optional integrations stay optional: `import lnrs` pulls in none of them."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["torch", "cupy", "onnxruntime", "matplotlib", "ml_dtypes"])
def test_importing_lnrs_imports_no_optional_package(module):
    code = f"import sys, lnrs; assert {module!r} not in sys.modules, '{module} was imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
