#!/usr/bin/env bash
# jemalloc settings side by side on the benchmark items (detnas only), in one run: for every
# item, each setting in turn (A B C A B C …, `--rounds` times), each a fresh process given
# MALLOC_CONF (which overrides the engine's compiled-in options key by key), so a slow drift
# of the machine hits every setting alike. Prints one table: the median over rounds of each
# item's median throughput, its ratio to the first setting, and peak RSS.
#   bench/malloc.sh [--reps R] [--rounds K] [--threads N] [--items "A B …"] [--out FILE] CONF…
# Each CONF is a MALLOC_CONF string, e.g. "dirty_decay_ms:-1,muzzy_decay_ms:-1". The raw JSON
# lines (one per item, round and setting) are kept beside FILE as FILE.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
reps=10; rounds=3; threads=$(nproc); only=; out=/dev/stdout
while [ $# -gt 0 ]; do
  case $1 in
    --reps) reps=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --items) only=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { echo "usage: bench/malloc.sh [options] CONF…" >&2; exit 2; }
source scripts/env.sh
source bench/reference/setup.sh
cargo build --release --locked -p detnas -p detnas-cli >/dev/null
bin=target/release/detnas
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
items=${only:-"cls-train-small cls-train-demo cls-infer-small cls-infer-demo recal-small recal-demo det-train-retinanet-demo det-infer-retinanet-demo det-train-fpn-demo det-infer-fpn-demo det-train-retinanet-800 det-infer-retinanet-800 det-train-fpn-800 det-infer-fpn-800 candidate candidate-parallel loader"}
if [[ " $items " == *" candidate"* ]]; then
  echo "malloc: fine-tuning a demo RetinaNet supernet for the candidate items (300 iterations)" >&2
  "$bin" finetune --config configs/demo/finetune-retinanet.toml --out "$work/finetune" --no-progress \
    --threads "$threads" --set schedule.iterations=300 --set schedule.milestones=[250] >"$work/ft.log" 2>&1 ||
    { tail -20 "$work/ft.log" >&2; exit 1; }
fi
if [[ " $items " == *" loader "* ]]; then
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
: > "$work/lines.jsonl"
for item in $items; do
  for round in $(seq "$rounds"); do
    for i in $(seq $#); do
      conf=${!i}
      echo "malloc: $item round $round setting $i" >&2
      case $item in
        loader) args=(bench loader --images "$work/jpegs") ;;
        candidate) args=(bench candidate --checkpoint "$work/finetune") ;;
        candidate-parallel) args=(bench candidate --checkpoint "$work/finetune" --workers "$threads") ;;
        *) args=(bench "$item") ;;
      esac
      MALLOC_CONF=$conf "$bin" "${args[@]}" --reps "$reps" --threads "$threads" |
        python3 -c "import json,sys; d=json.load(sys.stdin); d.update(item='$item', setting=$i); print(json.dumps(d))" \
        >> "$work/lines.jsonl"
    done
  done
done
[ "$out" = /dev/stdout ] || cp "$work/lines.jsonl" "$out.jsonl"
python3 - "$work/lines.jsonl" "$@" > "$out" <<'PY'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
confs = sys.argv[2:]
print("| item | " + " | ".join(f"setting {i + 1}" for i in range(len(confs))) + " | rounds (ratio to setting 1, each) |")
print("|---|" + "---|" * len(confs) + "---|")
for item in dict.fromkeys(l["item"] for l in lines):
    cells = []
    base = None
    per = [[l for l in lines if l["item"] == item and l["setting"] == i + 1] for i in range(len(confs))]
    for ls in per:
        med = statistics.median(l["median"] for l in ls)
        rss = max(l["peak_rss_mb"] for l in ls)
        base = base or med
        cells.append(f"{med:.4g} {ls[0]['unit']} ({med / base:.3f}×), {rss:.0f} MB")
    # Round by round: the last setting against the first, measured minutes apart.
    pairs = ", ".join(f"{b['median'] / a['median']:.3f}" for a, b in zip(per[0], per[-1]))
    print(f"| {item} | " + " | ".join(cells) + f" | {pairs} |")
print()
for i, c in enumerate(confs):
    print(f"setting {i + 1}: `{c}`")
PY
