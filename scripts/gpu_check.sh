#!/usr/bin/env bash
# One GPU lease, one command: build the CUDA extension for Hopper (sm_90), run the whole test suite
# (GPU-marked tests: CUDA and Triton backends against the reference, fp32/fp16/bf16/fp64, forward and
# backward), the quick GPU benchmark sweep (every fused op, the CaDistill and evaluation steps, CLARep
# search per image vs the Park et al. loop at k = 8), the host cost per call of the NaN/Inf check
# (sync vs the device-side assert) and a CKA profile. In OUTPUT_DIR:
#   device.txt  build.log  tests.log  bench.log  cuda-quick.{json,csv,md,png}  host_overhead.txt  profile.txt
# Usage: scripts/gpu_check.sh OUTPUT_DIR      (meant to finish in about 6 minutes on an H200)
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUTPUT_DIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 CLAREP_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
PY=${PYTHON:-python3}
status=0

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'device', torch.cuda.get_device_name())"
  nvcc --version | tail -2; } 2>&1 | tee "$OUT/device.txt"

echo "== build (sm_90)"
start=$SECONDS
if ! $PY -m pip install --no-deps --no-build-isolation --no-index -e . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
echo "built in $((SECONDS - start)) s"
$PY -c "import clarep_fast as c; from clarep_fast._extension import extension; assert extension().built_with_cuda(); print({k: v.devices for k, v in c.available_backends().items()})" || exit 1

echo "== GPU-marked tests"
start=$SECONDS
timeout 150 $PY -m pytest -q tests -m gpu -p no:cacheprovider -p no:logging -rfE > "$OUT/tests.log" 2>&1 || status=1
tail -25 "$OUT/tests.log"
echo "tests took $((SECONDS - start)) s"

echo "== quick benchmark sweep (cuda)"
start=$SECONDS
# Two parts, each under its own limit (results merge into one file): a slow pipeline row cannot
# cost the fused ops' rows.
PIPELINE="cadistill_step or clarep_search or evaluate_step"
timeout 150 $PY benchmarks/run.py --quick --device cuda --out "$OUT" -k "not ($PIPELINE)" > "$OUT/bench.log" 2>&1 || status=1
timeout 180 $PY benchmarks/run.py --quick --device cuda --out "$OUT" -k "$PIPELINE" >> "$OUT/bench.log" 2>&1 || status=1
echo "benchmarks took $((SECONDS - start)) s"
timeout 60 $PY benchmarks/host_overhead.py --device cuda > "$OUT/host_overhead.txt" 2>&1 || status=1
cat "$OUT/host_overhead.txt"
timeout 60 $PY benchmarks/profile_cka.py > "$OUT/profile.txt" 2>&1 || status=1
grep -E "^==|Self CUDA time total|Gram GEMM" "$OUT/profile.txt"
if [ -f "$OUT/cuda-quick.md" ]; then cat "$OUT/cuda-quick.md"; else tail -30 "$OUT/bench.log"; fi
exit $status
