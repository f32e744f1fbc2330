#!/usr/bin/env bash
# The GPU check: one prepared script for a machine with a CUDA device (about 8 minutes on one
# H100/H200).  Run it first whenever a GPU is available, then copy its figures into
# benchmarks/RESULTS.md ("GPU" section).
#
#   benchmarks/gpu_check.sh                 # on the GPU: installs what is missing, runs everything
#   benchmarks/gpu_check.sh --device cpu    # the same steps on the CPU, small sizes (checks the script)
#   benchmarks/gpu_check.sh --dry-run       # print the steps and their commands only
#
# Steps (each under its own time limit; a failed or timed-out step is reported and the next
# one runs):
#   env         nvidia-smi, torch / faiss versions and what they see
#   install     torch with CUDA and faiss-gpu when missing (the Makefile's FAISS=gpu)
#   cuda-tests  tests/test_cuda.py and every other test with "cuda" in its name
#   smoke       benchmarks/gpu_smoke.py: every sampler with hooks, sparse_updates on/off, an
#               interrupted MIPS-s run resumed (index checked to be on the GPU), the softmax
#               trainer's four methods, same-seed determinism (reported)
#   step-cost   benchmarks/step_cost.py --device cuda at L = 4K / 64K / 1M
#   shape-670k  the default hooks at Amazon-670K's label count: hook_overhead.py on a synthetic
#               dataset of that shape (MIPS-s, faiss-gpu), hooks on and off, bytes per step;
#               then benchmarks/scale.py --like amazon-670k (file written, loaded, 300 steps)
#   notebook    notebooks/gradient_dominance.ipynb through papermill with device="cuda"
#
# Output: $OUT (or runs/gpu_check) holds one log per step, the JSON lines of each benchmark
# and summary.tsv (step, status, exit code, seconds).  Exit status: 0 when every step passed.
set -euo pipefail

DEVICE=cuda
DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --device=*) DEVICE="${1#*=}"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (allowed: --device cuda|cpu, --dry-run)" >&2; exit 2 ;;
  esac
done
if [[ "$DEVICE" != cuda && "$DEVICE" != cpu ]]; then
  echo "gpu_check.sh: --device '$DEVICE' is not supported: allowed cuda, cpu" >&2
  exit 2
fi

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[[ -x "$PY" ]] || PY=$(command -v python3)
RESULTS=${OUT:-$ROOT/runs/gpu_check}
mkdir -p "$RESULTS"
SUMMARY="$RESULTS/summary.tsv"
printf 'step\tstatus\texit\tseconds\n' > "$SUMMARY"
FAILED=()
T0=$(date +%s)

# Sizes: the real ones on the GPU, small ones for a CPU check of the script.
if [[ "$DEVICE" == cuda ]]; then
  STEP_LABELS=4096,65536,1048576; STEP_ROUNDS=10
  SHAPE_LIKE=amazon-670k; SHAPE_ROWS=60000; SHAPE_EPOCHS=2; SHAPE_EVAL_ROWS=5000
  NB_DATA=synthetic:small; NB_EPOCHS=3; LIMIT_SCALE=1
else  # a 670K-label index takes minutes to build on a CPU: Eurlex's shape checks the path
  STEP_LABELS=4096; STEP_ROUNDS=3
  SHAPE_LIKE=eurlex-4k; SHAPE_ROWS=3000; SHAPE_EPOCHS=2; SHAPE_EVAL_ROWS=200
  NB_DATA=synthetic:tiny; NB_EPOCHS=1; LIMIT_SCALE=4
fi

# step NAME LIMIT_S CMD...: run CMD under a time limit, log to $RESULTS/NAME.log, never abort.
step() {
  local name=$1 limit=$(( $2 * LIMIT_SCALE ))
  shift 2
  if [[ $DRY_RUN == 1 ]]; then
    printf '[%s] (limit %ss)\n' "$name" "$limit"
    if declare -F "$1" > /dev/null; then declare -f "$1" | tail -n +3 | head -n -1; else echo "    $*"; fi
    return 0
  fi
  local start rc status
  start=$(date +%s)
  echo "== $name (limit ${limit}s, $(( start - T0 ))s elapsed)"
  # bash -c: CMD may be one of the functions below (exported), which timeout cannot run itself.
  if timeout --kill-after=15 "$limit" bash -c '"$@"' "$name" "$@" > "$RESULTS/$name.log" 2>&1
  then rc=0; else rc=$?; fi
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  [[ $rc == 0 ]] || FAILED+=("$name")
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(( $(date +%s) - start ))" >> "$SUMMARY"
  echo "   $status (exit $rc); last lines of $RESULTS/$name.log:"
  tail -n 4 "$RESULTS/$name.log" | sed 's/^/   | /'
}

env_report() {
  if command -v nvidia-smi > /dev/null; then nvidia-smi || true; fi
  "$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda build", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "count", torch.cuda.device_count(),
          "free/total GiB", [round(x / 2**30, 1) for x in torch.cuda.mem_get_info(0)])
try:
    import faiss
    print("faiss", faiss.__version__, "gpus", faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0)
except ImportError as e:
    print("faiss missing:", e)
EOF
}

# torch with CUDA, then faiss-gpu (faiss-cpu and faiss-gpu ship the same module: never both).
install_gpu_extras() {
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "torch sees no CUDA device: installing the CUDA build of torch"
    local version  # the installed version, as the Makefile pins it; PyPI's Linux wheel is CUDA's
    version=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])" 2> /dev/null || true)
    "$PY" -m pip install --force-reinstall "torch${version:+==$version}"
  fi
  if ! "$PY" -c "import faiss, sys; sys.exit(0 if faiss.get_num_gpus() > 0 else 1)" 2> /dev/null; then
    echo "faiss has no GPU support: replacing faiss-cpu by faiss-gpu (Makefile FAISS=gpu)"
    "$PY" -m pip uninstall -y faiss-cpu || true
    "$PY" -m pip install -e ".[gpu]"
  fi
  "$PY" -c "import torch, faiss; assert torch.cuda.is_available() and faiss.get_num_gpus() > 0"
}

cuda_tests() {
  local rc=0
  "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py || rc=$?
  "$PY" -m pytest -q -p no:cacheprovider -rs tests --ignore=tests/test_cuda.py \
      --ignore=tests/test_browser.py -k cuda || rc=$?
  return $rc
}

shape_670k() {
  local rc=0
  (cd benchmarks && "$PY" hook_overhead.py --data "like:$SHAPE_LIKE" --rows "$SHAPE_ROWS" \
      --epochs "$SHAPE_EPOCHS" --repeats 1 --eval-rows "$SHAPE_EVAL_ROWS" --device "$DEVICE" \
      --out "$RESULTS/shape_670k.jsonl") || rc=$?
  if [[ -f benchmarks/scale.py && "$DEVICE" == cuda ]]; then  # its device: auto (the GPU)
    (cd benchmarks && "$PY" scale.py --like amazon-670k --rows "$SHAPE_ROWS" --steps 300 \
        --work "$RESULTS/scale-670k" --out "$RESULTS/scale_670k.jsonl") || rc=$?
  fi
  return $rc
}

notebook() {
  "$PY" -m papermill notebooks/gradient_dominance.ipynb "$RESULTS/gradient_dominance.ipynb" \
      -p device "$DEVICE" -p data "$NB_DATA" -p epochs "$NB_EPOCHS" \
      -p output_dir "$RESULTS/notebook_runs" --cwd notebooks
}

smoke() {
  cd benchmarks && "$PY" gpu_smoke.py --device "$DEVICE" --out "$RESULTS/smoke.jsonl"
}

step_cost() {
  cd benchmarks && "$PY" step_cost.py --device "$DEVICE" --labels "$STEP_LABELS" \
      --steps "$STEP_ROUNDS" --warmup 2 --out "$RESULTS/step_cost.jsonl" \
      --markdown "$RESULTS/step_cost.md"
}

export PY RESULTS DEVICE STEP_LABELS STEP_ROUNDS SHAPE_LIKE SHAPE_ROWS SHAPE_EPOCHS SHAPE_EVAL_ROWS NB_DATA NB_EPOCHS
export -f env_report install_gpu_extras cuda_tests smoke step_cost shape_670k notebook

# Limits add up to about 8 minutes (the install, only when something is missing, aside).
if [[ "$DEVICE" == cuda ]]; then
  if [[ -z "${PYTHON:-}" && ! -x "$ROOT/.venv/bin/python" ]]; then
    step setup 420 make setup FAISS=gpu  # a fresh checkout: the Makefile's venv, with faiss-gpu
    PY=$ROOT/.venv/bin/python
    export PY
  fi
  step install 240 install_gpu_extras
fi
step env 20 env_report
step cuda-tests 100 cuda_tests
step smoke 120 smoke
step step-cost 100 step_cost
step shape-670k 110 shape_670k
step notebook 50 notebook

if [[ $DRY_RUN == 1 ]]; then exit 0; fi
echo "== done in $(( $(date +%s) - T0 ))s; summary in $SUMMARY"
column -t -s $'\t' "$SUMMARY" 2> /dev/null || cat "$SUMMARY"
if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "failed steps: ${FAILED[*]}"
  exit 1
fi
