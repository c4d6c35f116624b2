#!/usr/bin/env bash
# GPU check: on a machine with NVIDIA GPUs, merge and evaluate zoo candidates on CUDA (bf16,
# resident model, in-place materialization) through the Ray evaluator, and print candidates per
# minute; with two or more GPUs also one candidate split over two GPUs (device_map placement).
#
#   bash benchmarks/gpu_check.sh [RUN_ROOT]        (default: a temp folder)
#
# Needs: the CUDA build of torch, evomerge[all] installed, the zoo buildable (CPU, minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-$(mktemp -d)}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0

python - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device visible: this check needs an NVIDIA GPU"
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name} {p.total_memory / 2**30:.0f} GiB")
EOF
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")

run() {  # run NAME GPUS_PER_WORKER WORKERS
  local name=$1 gpus=$2 workers=$3 dir="$ROOT/$1"
  # next to the original, so its relative references (presets, fitness) resolve the same way
  local exp="experiments/_gpu_check_$name.yaml"
  rm -rf "$dir"
  python - "$dir" "$gpus" <<'EOF' >"$exp"
import sys
import yaml
src = yaml.safe_load(open("experiments/toy_ps_cmaes.yaml"))
src["evaluation"] = {**src.get("evaluation", {}), "device": "cuda", "dtype": "bfloat16",
                     "gpus_per_worker": float(sys.argv[2])}
src["budget"] = {"max_evals": 24}
print(yaml.safe_dump(src))
EOF
  local t0=$SECONDS
  evomerge search "$exp" --run-dir "$dir" --workers "$workers" || true
  rm -f "$exp"
  local secs=$((SECONDS - t0))
  python - "$dir" "$secs" "$name" <<'EOF'
import sqlite3, sys
run_dir, secs, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with sqlite3.connect(f"{run_dir}/store.sqlite") as c:
    n, ok = c.execute("SELECT COUNT(*), SUM(status = 'OK') FROM results").fetchone()
    best = c.execute("SELECT MAX(fitness) FROM results WHERE status = 'OK'").fetchone()[0]
print(f"{name}: {n} candidates ({ok} OK) in {secs} s incl. start-up -> "
      f"{60 * n / max(secs, 1):.1f} candidates/min; best fitness {best}")
EOF
}

run gpu-1x1 1 1
if ((NGPU >= 2)); then
  run gpu-2x1 1 2      # two workers, one GPU each
  run gpu-1x2 2 1      # one worker, its model split over two GPUs
fi
echo "run folders under $ROOT"
