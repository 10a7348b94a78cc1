#!/usr/bin/env bash
# The demo pipeline over many seeds: found (DetNAS), random and ClsNAS retrained on the test
# split, with a 95 % confidence interval of each mean and of the paired differences. The seed
# of a run is added to every stage's seed (the synthetic data stays the same); each seed is a
# resumable run folder, so the sweep can be stopped and continued across sessions. One line
# per finished seed goes to bench/results/pipeline-seeds.jsonl (commit it as it grows), with the
# pre-trained supernet's mean top-1. pipeline-seeds-cold.jsonl holds 3 seeds of the demo before
# its pre-training had a warm start (commit c60f418), for comparison.
#   bench/pipeline_seeds.sh [FIRST_SEED] [LAST_SEED] [OUT]     (default 0 9 runs/seeds)
# DETNAS_BIN names another build of the CLI (a copy, so that rebuilding during a sweep is safe).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
first=${1:-0}; last=${2:-9}; out=${3:-runs/seeds}
bin=${DETNAS_BIN:-target/release/detnas}
lines=bench/results/pipeline-seeds.jsonl
mkdir -p "$out" bench/results
touch "$lines"
for seed in $(seq "$first" "$last"); do
  if grep -q "\"seed\": $seed," "$lines"; then continue; fi
  "$bin" run --no-progress --out "$out/seed-$seed" --set seed="$seed" > "$out/seed-$seed.log" 2>&1
  python3 - "$out/seed-$seed" "$seed" >> "$lines" <<'PY'
import json, sys
run, seed = sys.argv[1], int(sys.argv[2])
rows = json.load(open(f"{run}/report/final.json"))
paths = json.load(open(f"{run}/pretrain/summary.json"))["paths"]
top1 = sum(p["top1"] for p in paths) / len(paths)
print(json.dumps({"seed": seed, **{r["label"]: {"arch": r["arch"], "ap": r["stats"][0]} for r in rows},
                  "pretrain_top1": round(top1, 4)}))
PY
  tail -1 "$lines"
done
python3 - "$lines" <<'PY'
import json, statistics as st, sys
from math import sqrt
# Two-sided 95 % Student t quantiles by degrees of freedom.
T = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
     10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 24: 2.064, 29: 2.045}
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
n = len(rows)
def ci(v):
    if len(v) < 2:
        return f"{st.mean(v):.4f}"
    t = T.get(len(v) - 1, T[max(k for k in T if k <= len(v) - 1)])
    h = t * st.stdev(v) / sqrt(len(v))
    return f"{st.mean(v):.4f} ± {h:.4f} (sd {st.stdev(v):.4f})"
print(f"{n} seeds")
for k in ["found", "random", "clsnas"]:
    print(f"{k:>7}: test AP {ci([r[k]['ap'] for r in rows])}")
for k in ["random", "clsnas"]:
    d = [r["found"]["ap"] - r[k]["ap"] for r in rows]
    print(f"found − {k}: {ci(d)}; found ahead in {sum(x > 0 for x in d)} of {n}")
PY
