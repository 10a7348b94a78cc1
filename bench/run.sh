#!/usr/bin/env bash
# Rust (detnas) vs PyTorch eager, side by side, measured in one run on this machine, written
# to BENCHMARKS.md. Each item runs in its own process (peak memory per item).
#   bench/run.sh [--threads N] [--reps R] [--quick] [--device cpu|cuda] [--out FILE]
#                [--bin DIR] [--python system] [--memory-format auto|nchw|channels-last]
#                [--precision fp32|bf16]
# --quick skips the 800x1333 detection items and the Small-space training step.
# The candidate items evaluate paths of a fine-tuned demo supernet: DETNAS_BENCH_CHECKPOINT=RUN
# names one (e.g. runs/demo/finetune after ./scripts/demo.sh); without it a short fine-tuning
# run (300 iterations, no pre-training) is made first.
# The PyTorch reference (bench/reference/) runs in its own venv (bench/reference/setup.sh):
# the PyPI torch==2.11.0 wheel of the libtorch venv, torchvision 0.26.0 and pycocotools.
# On a machine without Rust or network (a lent GPU machine, see bench/gpu.sh): --bin DIR runs
# prebuilt binaries (libtorch from python3's torch), --python system uses python3 on PATH as
# the reference (items whose imports it lacks are measured for detnas only).
# --device cuda runs both sides on the GPU; the numeric checks stay on the CPU, and the loader
# (CPU work) and candidate-parallel (one evaluator per core, a CPU layout) are skipped there.
# --items "A B ..." measures only those items (the device tool allows 10 minutes a command).
# Protocol (`detnas bench`'s, which the reference follows): one warm-up, then per repetition a
# new path (first use) and the same path again (steady state); the table's throughput is the
# steady state's, a second table gives both. --memory-format sets both sides' layout (default:
# detnas's auto, the reference's NCHW, each side's usual choice); --precision both sides'.
# DETNAS_PHASE_TIMING=1 adds detnas's per-phase times to its lines and the report.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=$(nproc); reps=5; quick=0; device=cpu; out=BENCHMARKS.md; bindir=; python=venv; only=; layout=; precision=fp32
while [ $# -gt 0 ]; do
  case $1 in
    --threads) threads=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --bin) bindir=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --items) only=$2; shift 2 ;;
    --memory-format) layout=$2; shift 2 ;;
    --precision) precision=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$bindir" ]; then
  source scripts/env.sh
  cargo build --release --locked -p detnas -p detnas-cli >/dev/null
  bindir=target/release
fi
[ -x "$bindir/detnas" ] && [ -x "$bindir/detnas-engine" ] ||
  { echo "bench: no detnas and detnas-engine binaries in $bindir" >&2; exit 2; }
case $python in
  venv) source scripts/env.sh; source bench/reference/setup.sh ;;
  system) ;;
  *) echo "bench: --python is venv or system" >&2; exit 2 ;;
esac
has() { python3 -c "import $1" 2>/dev/null; }
has torch || { echo "bench: python3 has no torch: the PyTorch reference cannot run" >&2; exit 2; }
det_ref=1; has torchvision && has pycocotools ||
  { det_ref=0; echo "bench: python3 lacks torchvision or pycocotools: detection items are measured for detnas only" >&2; }
bin=$bindir/detnas
# Compute settings of the timed items: detnas's flags, and the reference's (auto resolves as
# detnas resolves it on the device).
dflags=(--precision "$precision"); rflags=(--precision "$precision")
case $layout in
  "") rflags+=(--memory-format nchw) ;;
  auto) dflags+=(--memory-format auto)
    if [ "$device" = cpu ]; then rflags+=(--memory-format channels-last); else rflags+=(--memory-format nchw); fi ;;
  nchw|channels-last) dflags+=(--memory-format "$layout"); rflags+=(--memory-format "$layout") ;;
  *) echo "bench: --memory-format is auto, nchw or channels-last" >&2; exit 2 ;;
esac
mkdir -p "$(dirname "$out")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
items="cls-train-demo cls-infer-demo cls-infer-small recal-demo recal-small det-train-retinanet-demo det-infer-retinanet-demo det-train-fpn-demo det-infer-fpn-demo"
[ $quick = 1 ] || items="cls-train-small $items det-train-retinanet-800 det-infer-retinanet-800 det-train-fpn-800 det-infer-fpn-800"
items="$items candidate"
[ "$device" = cpu ] && items="$items candidate-parallel"
[ "$device" = cpu ] && has PIL && has numpy && items="$items loader"
[ -z "$only" ] || items=$only
ckpt=${DETNAS_BENCH_CHECKPOINT:-}
candidates=0; [[ " $items " == *" candidate"* ]] && candidates=1
if [ -z "$ckpt" ] && [ $candidates = 1 ]; then
  echo "bench: fine-tuning a demo RetinaNet supernet for the candidate items (300 iterations)" >&2
  "$bin" finetune --config configs/demo/finetune-retinanet.toml --out "$work/finetune" --no-progress \
    --threads "$threads" --device "$device" --set schedule.iterations=300 --set schedule.milestones=[250] \
    >"$work/finetune.log" 2>&1 ||
    { echo "bench: the fine-tuning run failed:" >&2; tail -20 "$work/finetune.log" >&2; exit 1; }
  ckpt=$work/finetune
fi
export_ckpt=(); [ $candidates = 1 ] && export_ckpt=(--checkpoint "$ckpt")
"$bin" bench export --out "$work" --reps "$reps" --threads "$threads" ${export_ckpt[@]+"${export_ckpt[@]}"} >/dev/null
python3 bench/reference/bench.py check --weights "$work/supernet.safetensors" --io "$work/io.safetensors" \
  --space "$work/space.json" --paths "$work/check-paths.json" > "$work/check.json" ||
  { echo "bench: the supernet differs from the PyTorch reference: $(cat "$work/check.json")" >&2; exit 1; }
if [ $det_ref = 1 ]; then
  python3 bench/reference/detection.py check --dir "$work" > "$work/check-det.json" ||
    { echo "bench: the detectors differ from the PyTorch reference: $(cat "$work/check-det.json")" >&2; exit 1; }
fi
if [[ " $items " == *" loader "* ]]; then
  # A folder of JPEGs for the loader item.
  python3 - "$work/jpegs" <<'PY'
import os, sys
import numpy as np
from PIL import Image
out = sys.argv[1]
for c in range(4):
    os.makedirs(f"{out}/class{c}", exist_ok=True)
    for i in range(128):
        a = (np.random.RandomState(c * 1000 + i).rand(375, 500, 3) * 255).astype("uint8")
        Image.fromarray(a).save(f"{out}/class{c}/{i}.jpg", quality=90)
PY
fi
: > "$work/results.jsonl"
for item in $items; do
  echo "bench: $item" >&2
  case $item in
    loader) "$bin" bench loader --images "$work/jpegs" --reps "$reps" --threads "$threads" --device "$device" ;;
    candidate) "$bin" bench candidate --checkpoint "$ckpt" --reps "$reps" --threads "$threads" --device "$device" ;;
    candidate-parallel)
      # One evaluator per core, one thread each: how the search runs on a CPU.
      "$bin" bench candidate --checkpoint "$ckpt" --reps "$reps" --threads "$threads" --workers "$threads" \
        --device "$device" | sed 's/"item":"candidate"/"item":"candidate-parallel"/' ;;
    *) "$bin" bench "$item" --reps "$reps" --threads "$threads" --device "$device" "${dflags[@]}" ;;
  esac >> "$work/results.jsonl"
  case $item in
    cls-*|recal-*)
      space=demo; [[ $item == *small ]] && space=small
      python3 bench/reference/bench.py "$item" --paths "$work/paths-$space.json" --space "$work/space.json" \
        --reps "$reps" --threads "$threads" --device "$device" "${rflags[@]}" >> "$work/results.jsonl" ;;
    det-*)
      [ $det_ref = 1 ] || continue
      python3 bench/reference/detection.py "$item" --dir "$work" --reps "$reps" --threads "$threads" \
        --device "$device" "${rflags[@]}" >> "$work/results.jsonl" ;;
    candidate)
      [ $det_ref = 1 ] || continue
      python3 bench/reference/detection.py candidate --dir "$work/candidate" --reps "$reps" --threads "$threads" \
        --device "$device" >> "$work/results.jsonl" ;;
    candidate-parallel)
      [ $det_ref = 1 ] || continue
      # The same with PyTorch: one process per core, one thread each, side by side.
      pids=()
      for p in $(seq 0 $((threads - 1))); do
        python3 bench/reference/detection.py candidate --dir "$work/candidate" --reps "$reps" --threads 1 \
          --offset "$p" > "$work/par-$p.json" &
        pids+=($!)
      done
      for pid in "${pids[@]}"; do wait "$pid"; done
      cat "$work"/par-*.json | sed 's/"item": "candidate"/"item": "candidate-parallel"/' >> "$work/results.jsonl" ;;
  esac
  cp "$work/results.jsonl" "${out%.md}.jsonl"   # kept after each item: a run stopped early keeps what it measured
done
cp "$work/results.jsonl" "${out%.md}.jsonl"   # the raw lines behind the table
python3 bench/report.py "$work" "$threads" "$device" "$out"
