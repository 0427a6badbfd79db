#!/usr/bin/env bash
# The GPU check (issue 19), one command from the repository root; every result is a file under OUT:
#   bash benchmarks/device_check.sh OUT              # on the GPU machine (needs device-bundle/: make device-bundle)
#   bash benchmarks/device_check.sh OUT --dry-run    # the same steps at CPU sizes, in minutes (CI runs it)
# 1. throughput.json  ViT-B/16 (random weights) and ViT-S/14, VPT-deep with and without PAE's regularizer, the
#                     plain fp32 loop against ours, batch 128, MFU, compile seconds
# 2. mpa.json         MPA's search at 224 px on the paper's 128 images
# 3. plan.json, grid.json, runs/   the vtab-mini grid, sized from 1 and 2 to end steps 1-4 within the budget
# 4. tables/          accuracy, convergence and ablation tables of the grid, 95% CIs over seeds
# Resumable: a step that finished wrote OUT/<step>.done and is skipped; the grid skips finished groups and resumes
# cut ones from their saved states; the tables are remade from what has finished. Inductor's compiled graphs are
# cached in OUT/inductor-cache, so a rerun and every later run of the same shapes reuse them. Python is $PYTHON
# (default python3): no MLflow, Snakemake, DVC or jsonschema is needed (the dry run makes them unimportable).
set -euo pipefail
OUT=${1:?usage: bash benchmarks/device_check.sh OUT [--dry-run]}
MODE=${2:-}
PY=${PYTHON:-python3}
# Steps 1-4 within 9 minutes: the issue allows 11, but one device command may run 10 and the machine's start comes on
# top; a second call (resumable) can use what is left.
BUDGET_S=${DEVICE_CHECK_BUDGET_S:-540}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/device_check.log") 2>&1
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR="$OUT/inductor-cache" TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1

if [[ "$MODE" == --dry-run ]]; then
  BUDGET_S=${DEVICE_CHECK_BUDGET_S:-120}
  export PYTHONPATH="benchmarks/offline_site:$PYTHONPATH"  # its sitecustomize blocks mlflow, snakemake, dvc
  SIZE=(--device cpu --batch 4 --steps 1 --num-tokens 4)
  MPA=(--init-images 4 --mpa-window 8 --mpa-stride 8)
  DRY=(--dry-run)
elif [[ -z "$MODE" ]]; then
  SIZE=(--device cuda --batch 128)
  MPA=(--init-images 128)
  DRY=()
else
  echo "error: unknown option '$MODE'. Fix: give --dry-run or nothing." >&2
  exit 2
fi

START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }

step() {  # step NAME COMMAND...: run COMMAND unless OUT/NAME.done exists; record its seconds there
  local name=$1; shift
  if [[ -e "$OUT/$name.done" ]]; then
    echo "== $name: done already ($(cat "$OUT/$name.done") s; delete $OUT/$name.done to redo it)"
    return
  fi
  echo "== $name ($(elapsed) s into this call): $*"
  local t0 rc=0; t0=$(date +%s)
  "$@" || rc=$?
  if (( rc == 3 )); then  # device_grid.py run: groups left (deadline or a failed group); a rerun goes on
    echo "== $name: incomplete after $(( $(date +%s) - t0 )) s (run the same command again to continue)"
    return
  fi
  (( rc == 0 )) || exit "$rc"
  echo $(( $(date +%s) - t0 )) > "$OUT/$name.done"
  echo "== $name: finished in $(cat "$OUT/$name.done") s"
}

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs || true)
echo "== device check: $("$PY" -c 'import torch; print("torch", torch.__version__ + ",", torch.cuda.is_available() and torch.cuda.get_device_name() or "no GPU")'), CPU ${CPU:-?} x $(nproc), budget ${BUDGET_S} s, OUT=$OUT"
ARCHS=(--archs vit_base_patch16_224 vit_small_patch14_dinov2)
step 1-throughput "$PY" benchmarks/throughput.py "${SIZE[@]}" "${ARCHS[@]}" --methods vpt_deep --parts throughput \
  --out "$OUT/throughput.json"
step 2-mpa "$PY" benchmarks/throughput.py "${SIZE[@]}" "${ARCHS[@]}" --parts mpa "${MPA[@]}" --out "$OUT/mpa.json"
step 3-plan "$PY" benchmarks/device_grid.py plan --out "$OUT" "${DRY[@]}" --budget-s "$BUDGET_S" --elapsed-s "$(elapsed)"
step 3-grid "$PY" benchmarks/device_grid.py run --out "$OUT" --budget-s "$BUDGET_S" --elapsed-s "$(elapsed)"
echo "== 4-tables (always redone: from every group finished so far)"
"$PY" benchmarks/device_grid.py tables --out "$OUT"
echo "== device check: all steps done in $(elapsed) s this call; results in $OUT"
