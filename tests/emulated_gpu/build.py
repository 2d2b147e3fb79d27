"""Compiles python/lnrs/cuda/norm.cu for the CPU emulator and loads it.

The translation unit is cuda_host.h (CUDA's built-ins on fibers), norm.cu itself, launch.h (the
launches), and a registry of every kernel variant lnrs.cuda asks for, by the same name
expressions (lnrs/cuda/_compile.py). The library is cached under the temporary folder by a hash
of its sources.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NORM_CU = ROOT / "python" / "lnrs" / "cuda" / "norm.cu"
COMPILE_PY = ROOT / "python" / "lnrs" / "cuda" / "_compile.py"
# -fno-extern-tls-init: norm.cu re-declares dyn_smem `extern` (thread_local here); without it
# g++ calls a TLS initialisation function that does not exist.
# -U_FORTIFY_SOURCE: the fibers switch stacks with _longjmp, which fortified builds refuse.
FLAGS = [
    "-std=c++17",
    "-O1",
    "-shared",
    "-fPIC",
    "-Wall",
    "-Wno-unknown-pragmas",
    "-fno-extern-tls-init",
    "-U_FORTIFY_SOURCE",
]


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


def name_expressions() -> list[str]:
    """Every kernel variant lnrs.cuda may ask for (the registry's rows)."""
    # _compile.py imports nothing from CuPy at module level: load it as a plain file.
    spec = importlib.util.spec_from_file_location("lnrs_cuda_compile_names", COMPILE_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    names = [n for d in mod.TYPES for n in mod.name_expressions(d)]
    return list(dict.fromkeys(names))


def registry_source() -> str:
    rows = ",\n".join(f'    LNRS_ENTRY("{n}", {n})' for n in name_expressions())
    return (
        '#include "cuda_host.h"\n'
        f'#include "{NORM_CU}"\n'
        '#include "launch.h"\n\n'
        f"const emu::Entry lnrs_entries[] = {{\n{rows}\n}};\n"
        "const size_t lnrs_entry_count = sizeof lnrs_entries / sizeof lnrs_entries[0];\n"
    )


def library() -> ctypes.CDLL:
    """The emulator's shared library (compiled on first use)."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++ or clang++) for the GPU emulator")
    src = registry_source()
    h = hashlib.sha256(src.encode())
    for p in (NORM_CU, HERE / "cuda_host.h", HERE / "launch.h"):
        h.update(p.read_bytes())
    h.update(" ".join([cxx, *FLAGS]).encode())
    cache = Path(tempfile.gettempdir()) / "lnrs_emulated_gpu"
    cache.mkdir(exist_ok=True)
    so = cache / f"emu_{h.hexdigest()[:16]}.so"
    if not so.exists():
        cpp = so.with_suffix(".cpp")
        cpp.write_text(src)
        tmp = so.with_suffix(f".{os.getpid()}.tmp")
        cmd = [cxx, *FLAGS, f"-I{HERE}", "-o", str(tmp), str(cpp)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"emulator build failed: {' '.join(cmd)}\n{run.stderr[-4000:]}")
        os.replace(tmp, so)
    lib = ctypes.CDLL(str(so))
    f = lib.lnrs_emu_launch
    f.restype = ctypes.c_int
    f.argtypes = [
        ctypes.c_char_p,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_ulonglong,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.POINTER(ctypes.c_ulonglong),
        ctypes.c_char_p,
        ctypes.c_int,
    ]
    return lib
