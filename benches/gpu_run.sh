#!/bin/bash
# The GPU path's checks in one device call (issue 7): the GPU tests, then the benchmark.
#
# Here, first:  pip wheel --no-deps . -w dist      (an abi3 wheel: any CPython >= 3.9)
# Then the device tool's run with  carry=["dist"]  and  command="bash benches/gpu_run.sh",
# timeout_s 540. The machine has python3 with numpy, CuPy, ml_dtypes, pytest and torch, and
# no network: the wheel goes in without dependencies, into a folder of its own. The logs
# come back under $OUT (and the tail of them in the reply).
set -o pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/lnrs_gpu_out}
mkdir -p "$out"
site=$(mktemp -d)
python3 -m pip install -q --no-deps --no-index --target "$site" dist/lnrs-*.whl || exit 1
export PYTHONPATH="$site"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/gpu.txt"
python3 -c "import lnrs, cupy; print('lnrs', lnrs.__version__, 'from', lnrs.__file__, 'cupy', cupy.__version__)" \
    2>&1 | tee -a "$out/gpu.txt"
status=0
# -k: the GPU-parametrised tests and the NVRTC ones (the emulator's already ran on the CPU).
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -k "gpu or cupy" 2>&1 | tee "$out/test_cuda.log" || status=1
timeout 280 python3 benches/gpu_bench.py 2>&1 | tee "$out/gpu_bench.log" || status=1
exit $status
