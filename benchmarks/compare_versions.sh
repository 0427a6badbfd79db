#!/usr/bin/env bash
# Does a change of the code change any number? Two versions train the same runs on this machine, then their outputs
# are compared file by file (checkpoints bit for bit, metrics and curves equal; timings and MLflow ids aside), and a
# table job's start-up is timed with each.
#
#   bash benchmarks/compare_versions.sh 'ef45cae^' ef45cae    # about 10 min on 2 cores; run from the repository root
#
# Each version runs in a git worktree under $OUT (default /tmp/pae-compare) with this checkout's .venv and its own
# src/ first on PYTHONPATH, on params/default.yaml + benchmarks/compare_versions.yaml (the training jobs and what
# they need: data, backbone, MPA). The comparison uses this checkout's `pae.cli compare-results`.
set -euo pipefail
BEFORE=${1:?usage: compare_versions.sh BEFORE AFTER}
AFTER=${2:?usage: compare_versions.sh BEFORE AFTER}
ROOT=$(pwd)
OUT=$(realpath -m "${OUT:-/tmp/pae-compare}")
OVERLAY=$ROOT/benchmarks/compare_versions.yaml
PY=$ROOT/.venv/bin/python
export PATH=$ROOT/.venv/bin:$PATH MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1

train() {  # $1: revision, $2: worktree
    rm -rf "$2"; git worktree prune; git worktree add --detach "$2" "$1" > /dev/null
    cd "$2"
    export PYTHONPATH=$2/src MLFLOW_TRACKING_URI=sqlite:///$2/mlruns.db
    if [ -f "$ROOT/data/backbones/dinov2_s14.safetensors" ]; then  # the import is the same for both: reuse it
        mkdir -p data/backbones && cp -p "$ROOT/data/backbones/dinov2_s14.safetensors" data/backbones/
    fi
    targets=$(snakemake reproduce_all -n --configfile params/default.yaml "$OVERLAY" 2>&1 \
        | grep -oE 'output: results/bitcheck/runs/[^ ,]+/metrics.json' | sed 's/output: //' | sort || true)
    if [ -z "$targets" ]; then
        echo "error: $1 plans no training run for benchmarks/compare_versions.yaml (its params may be too old)." >&2
        echo "Fix: run 'snakemake reproduce_all -n --configfile params/default.yaml $OVERLAY' in $2." >&2
        exit 2
    fi
    echo "$1: $(echo "$targets" | wc -l) training runs"
    start=$SECONDS
    # --configfile takes a list, so it comes last; the targets first
    snakemake $targets --cores all --configfile params/default.yaml "$OVERLAY" > "$2.log" 2>&1 \
        || { tail -20 "$2.log" >&2; exit 1; }
    echo "$1: $((SECONDS - start)) s"
    cd "$ROOT"
}

startup() {  # $1: label, $2: src folder, $3: run folders; median of 7 wall times of --help and of a table job
    for what in help table; do
        times=()
        for _ in 1 2 3 4 5 6 7; do
            args=(-m pae.cli --help)
            [ "$what" = table ] && args=(-m pae.cli table --kind accuracy --out-md "$OUT/t.md" --out-csv "$OUT/t.csv"
                --out-json "$OUT/t.json" $3)
            start=$(date +%s.%N)
            PYTHONPATH=$2 "$PY" "${args[@]}" > /dev/null
            times+=("$("$PY" -c "print(round($(date +%s.%N) - $start, 3))")")
        done
        echo "$1 $what: median $(printf '%s\n' "${times[@]}" | sort -n | sed -n 4p) s of 7"
    done
}

mkdir -p "$OUT"
train "$BEFORE" "$OUT/before"
train "$AFTER" "$OUT/after"
runs=$(ls "$OUT"/before/results/bitcheck/runs/*/*/*/seed*/metrics.json)
startup "$BEFORE" "$OUT/before/src" "$runs"
startup "$AFTER" "$OUT/after/src" "$runs"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
PYTHONPATH=$ROOT/src "$PY" -m pae.cli compare-results "$OUT/before/results/bitcheck" "$OUT/after/results/bitcheck"
