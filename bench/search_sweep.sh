#!/usr/bin/env bash
# Evolution vs random search with the same budget on a fine-tuned demo supernet, over many
# seeds. Every architecture within the limit is evaluated once (an exhaustive random search),
# then each seed's searches reuse those scores (runtime.reuse), so the sweep itself is fast
# and the true optimum is known.
#   bench/search_sweep.sh SUPERNET_RUN [SEEDS] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
supernet=$(realpath "$1"); seeds=${2:-20}; out=${3:-runs/search-sweep}
bin=target/release/detnas
cfg=configs/demo/search.toml
mkdir -p "$out"
"$bin" search --no-progress --config $cfg --set supernet.checkpoint="$supernet" \
  --set 'strategy.kind="random"' --set strategy.population=256 --set strategy.generations=8 \
  --out "$out/all" >/dev/null
for seed in $(seq 0 $((seeds - 1))); do
  for kind in evolution random; do
    "$bin" search --no-progress --config $cfg --set supernet.checkpoint="$supernet" \
      --set "strategy.kind=\"$kind\"" --set seed="$seed" --set "runtime.reuse=[\"$(realpath "$out/all")\"]" \
      --out "$out/$kind-$seed" 2>/dev/null | head -1 | awk -v k=$kind -v s="$seed" '{print k, s, $2, $4}'
  done
done | tee "$out/sweep.txt"
python3 - "$out" <<'PY'
import json, sys, statistics as st
out = sys.argv[1]
rows = [l.split() for l in open(f"{out}/sweep.txt")]
best = max(json.loads(l)["fitness"] for l in open(f"{out}/all/ledger.jsonl"))
n = sum(1 for _ in open(f"{out}/all/ledger.jsonl"))
by = {}
for k, s, a, f in rows:
    by.setdefault(int(s), {})[k] = float(f)
ev = [by[s]["evolution"] for s in sorted(by)]
rn = [by[s]["random"] for s in sorted(by)]
print(f"{n} architectures within the limit, optimum {best:.4f}")
print(f"evolution: mean best {st.mean(ev):.4f}, optimum in {sum(abs(e - best) < 5e-5 for e in ev)}/{len(ev)}")
print(f"random:    mean best {st.mean(rn):.4f}, optimum in {sum(abs(r - best) < 5e-5 for r in rn)}/{len(rn)}")
print(f"evolution better {sum(e > r for e, r in zip(ev, rn))}, tied {sum(e == r for e, r in zip(ev, rn))}, worse {sum(e < r for e, r in zip(ev, rn))}")
PY
