#!/usr/bin/env bash
# Data-parallel scaling on this machine: demo pre-training and demo RetinaNet fine-tuning as
# one process and as 2 ranks (torchrun, Gloo, 1 thread each), alternated `--rounds` times.
# Prints a Markdown table: images/s (median over rounds), the 2-rank speed-up and rank 0's
# share of the loop spent in collectives (summary.json's collective_seconds / seconds).
#   bench/dist.sh [--rounds K] [--pretrain-steps N] [--finetune-steps N] [--nproc P] [--device cpu|cuda]
# On a GPU machine: bench/dist.sh --device cuda --nproc 8 (NCCL, one process per GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3; pre=300; ft=60; nproc=2; device=cpu
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --pretrain-steps) pre=$2; shift 2 ;;
    --finetune-steps) ft=$2; shift 2 ;;
    --nproc) nproc=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "${DETNAS_BIN:-}" ]; then
  source scripts/env.sh
  cargo build --release --locked -p detnas -p detnas-cli >/dev/null
  bin=target/release/detnas
else
  bin=$DETNAS_BIN  # a prepared binary (GPU machine); torchrun must be on PATH
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1
run() { # KIND CONFIG STEPS OUT PROCS
  local kind=$1 cfg=$2 steps=$3 out=$4 procs=$5
  local args=("$kind" --config "$cfg" --out "$out" --no-progress --device "$device" --set runtime.threads=1
    --set schedule.iterations="$steps" --set runtime.checkpoint_every=100000 --set eval.final_paths=0)
  # Throughput of sampled paths: no warm start on one path.
  [ "$kind" = pretrain ] && args+=(--set sampling.warm_start_steps=0)
  if [ "$procs" = 1 ]; then
    "$bin" "${args[@]}" >"$out.log" 2>&1
  else
    torchrun --standalone --nproc-per-node="$procs" --no-python "$bin" "${args[@]}" >"$out.log" 2>&1
  fi || { tail -20 "$out.log" >&2; exit 1; }
  python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(s['images_per_second'], (s.get('collective_seconds') or 0)/s['seconds'])" "$out/summary.json"
}
echo "| item | 1 process | $nproc ranks | speed-up | collectives' share of rank 0's loop | rounds (img/s, 1 process / $nproc ranks) |"
echo "|---|---|---|---|---|---|"
for item in pretrain finetune; do
  if [ $item = pretrain ]; then cfg=configs/demo/pretrain.toml; steps=$pre; else cfg=configs/demo/finetune-retinanet.toml; steps=$ft; fi
  : >"$work/$item.1"; : >"$work/$item.n"
  for r in $(seq "$rounds"); do
    echo "dist: $item round $r" >&2
    run $item $cfg $steps "$work/$item-1-$r" 1 >>"$work/$item.1"
    run $item $cfg $steps "$work/$item-n-$r" "$nproc" >>"$work/$item.n"
  done
  python3 - "$item" "$work/$item.1" "$work/$item.n" "$nproc" <<'PY'
import statistics, sys
item, one, many, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
a = [list(map(float, l.split())) for l in open(one)]
b = [list(map(float, l.split())) for l in open(many)]
ia, ib = statistics.median(x[0] for x in a), statistics.median(x[0] for x in b)
share = statistics.median(x[1] for x in b)
runs = ", ".join(f"{x[0]:.1f}/{y[0]:.1f}" for x, y in zip(a, b))
print(f"| {item} | {ia:.1f} img/s | {ib:.1f} img/s | {ib/ia:.2f}× | {100*share:.0f} % | {runs} |")
PY
done
