#!/usr/bin/env bash
# One device session on a machine with a CUDA GPU and PyTorch preinstalled (no network),
# sized to fit one 10-minute call (the timeouts below add up to 7 minutes):
#   bash .ci/gpu_session.sh OUT_DIR
#   GPU_SESSION_COMPILED=1 bash .ci/gpu_session.sh OUT_DIR   # also step 2 (+1.5 min)
#   GPU_SESSION_TESTS=0 bash .ci/gpu_session.sh OUT_DIR      # without step 3
# 0. .ci/gpu_probe.py: per-call CPU-side costs (Python, a kernel launch, a weight read);
# 1. .ci/gpu_check.py: the CUDA paths against the reference, then the benchmark on CUDA
#    (float32 and bfloat16; the default path and the packed opt-in), with JSON and a log
#    in OUT_DIR;
# 2. (opt-in) the training part of the benchmark again, compiled with CUDA graphs;
# 3. the tests that have CUDA cases (the rest run in CI).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: gpu_session.sh OUT_DIR}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch, platform; print("torch", torch.__version__, "python", platform.python_version())'
python3 .ci/gpu_probe.py
timeout 300 python3 .ci/gpu_check.py --out "$out" 2>&1 | tee "$out/gpu_check.log"
check=${PIPESTATUS[0]}
if [ "${GPU_SESSION_COMPILED:-0}" != 0 ]; then
    timeout 90 python3 -m torch_constraints.bench --device cuda --skip-projection \
        --compile reduce-overhead --rounds 30 --json "$out/bench-cuda-compiled.json" 2>&1 |
        grep -v -i warn | tee "$out/bench-compiled.log"
fi
tests=0
if [ "${GPU_SESSION_TESTS:-1}" != 0 ]; then
    timeout 120 python3 -m pytest -q -p no:cacheprovider -x \
        tests/test_projection.py tests/test_copies.py tests/test_kernels.py \
        tests/test_packing.py tests/test_amp.py \
        >"$out/pytest.log" 2>&1
    tests=$?
    tail -n 25 "$out/pytest.log"
fi
echo "gpu_check exit $check, pytest exit $tests"
[ "$check" -eq 0 ] && [ "$tests" -eq 0 ]
