#!/usr/bin/env bash
# Two detnas builds side by side on this machine: each `detnas bench` item alternately from
# build A and build B (A B A B …, its own process each time), then per item the ratio of the
# medians over rounds of A's and B's per-repetition seconds (>1: B faster).
#   bench/ab.sh DIR_A DIR_B OUT.jsonl [--rounds N] [--reps R] [--items "A B …"] [--threads N]
# DIR_A / DIR_B hold a `detnas` launcher and its `detnas-engine` (e.g. a copy of an older
# target/release). B's lines carry `first_seconds` and `warm_seconds` (first use of a path and
# steady state); A's `median_seconds` is compared with both. The candidate items need
# DETNAS_BENCH_CHECKPOINT=RUN (a fine-tuned demo RetinaNet supernet), the loader
# DETNAS_BENCH_IMAGES=DIR. AB_A_ARGS / AB_B_ARGS add
# arguments to one side only (e.g. AB_B_ARGS="--score-threshold 0.05" for the inference work of
# a build whose default differs).
set -euo pipefail
cd "$(dirname "$0")/.."
a=${1:?usage: bench/ab.sh DIR_A DIR_B OUT.jsonl}; b=${2:?}; out=${3:?}; shift 3
rounds=3; reps=5; threads=$(nproc)
items="cls-train-demo cls-infer-demo cls-infer-small recal-demo recal-small det-train-retinanet-demo det-infer-retinanet-demo det-train-fpn-demo det-infer-fpn-demo cls-train-small"
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --items) items=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
: > "$out"
for item in $items; do
  for r in $(seq 1 "$rounds"); do
    for side in A B; do
      dir=$a; own=(${AB_A_ARGS:-}); [ $side = B ] && { dir=$b; own=(${AB_B_ARGS:-}); }
      extra=("${own[@]}"); [[ $item == candidate* ]] && extra=(--checkpoint "${DETNAS_BENCH_CHECKPOINT:?candidate needs DETNAS_BENCH_CHECKPOINT}")
      [ "$item" = candidate-parallel ] && extra+=(--workers "$threads")
      [ "$item" = loader ] && extra+=(--images "${DETNAS_BENCH_IMAGES:?loader needs DETNAS_BENCH_IMAGES (a folder of class folders of JPEGs)}")
      name=${item/candidate-parallel/candidate}
      line=$("$dir/detnas" bench "$name" --reps "$reps" --threads "$threads" "${extra[@]}" 2>/dev/null | tail -1)
      echo "{\"side\":\"$side\",\"round\":$r,\"ab_item\":\"$item\",\"line\":$line}" >> "$out"
      echo "ab: $item round $r $side" >&2
    done
  done
done
python3 - "$out" <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
items = []
for r in rows:
    if r["ab_item"] not in items:
        items.append(r["ab_item"])
print("| item | A s/rep (median of rounds) | B first-use | B steady | A/B first | A/B steady | peak RSS A → B |")
print("|---|---|---|---|---|---|---|")
for i in items:
    A = [r["line"] for r in rows if r["ab_item"] == i and r["side"] == "A"]
    B = [r["line"] for r in rows if r["ab_item"] == i and r["side"] == "B"]
    a = st.median(x["median_seconds"] for x in A)
    bf = st.median(x.get("first_seconds", x["median_seconds"]) for x in B)
    bw = st.median(x.get("warm_seconds", x["median_seconds"]) for x in B)
    ra, rb = st.median(x["peak_rss_mb"] for x in A), st.median(x["peak_rss_mb"] for x in B)
    print(f"| {i} | {a:.4g} | {bf:.4g} | {bw:.4g} | {a / bf:.3f} | {a / bw:.3f} | {ra:.0f} → {rb:.0f} MB |")
PY
