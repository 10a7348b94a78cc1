#!/usr/bin/env bash
# One prepared GPU audit, at most about 5 minutes of device time: why detection is slow on a
# GPU and whether the fixes hold, in one script for a lent GPU machine (torch==2.11.0 with CUDA
# and torchvision in python3, no Rust, no network).
#   bench/gpu.sh --pack          here, after a release build: the stripped binaries in
#                                target/gpu-bin (carry them: the device tool's carry ["target/gpu-bin"])
#   bench/gpu_audit.sh OUT       there: every step under `timeout`, each writing OUT/NN-name.*
#                                as it goes (a step cut short keeps what it wrote)
# SKIP="7 8" skips steps by number; STEP_TIMEOUT (seconds, default 60) bounds each command and
# AUDIT_BUDGET (seconds, default 290) the whole run: a command gets at most what is left.
# AUDIT_DEVICE=cpu runs the plumbing on a CPU machine (a dry run; step 4 needs CUDA).
# Steps (see the GPU-speed issue):
#   0 versions: GPU, torch, CUDA, cuDNN, torchvision and what its library links (libtorch_python?)
#   1 convolution probe: the Small space's convolutions at 800x1344 batch 2, first and second
#     call, forward and backward, NCHW against channels-last
#   2 one cuDNN debug log (CUDNN_LOGLEVEL_DBG=3) of a first channels-last depthwise call
#   3 the PyTorch reference's RetinaNet-800 training step in both layouts on new paths, then
#     each path again (first use / steady state)
#   4 the reference's own host synchronisations (sync-debug mode) per warm step
#   5 torchvision NMS and RoIAlign against detnas's device-side NMS and one-pass RoIAlign
#   6 detnas's 800x1344 items in both layouts: steady-state protocol, sync counts
#   7 detnas's phase times of the FPN training step (DETNAS_PHASE_TIMING=1)
#   8 one Kineto trace of a warm FPN training step (Chrome trace JSON, gzipped)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/gpu_audit.sh OUT}
mkdir -p "$out"
bin=${DETNAS_BIN:-target/gpu-bin/detnas}
dev=${AUDIT_DEVICE:-cuda}
budget=${AUDIT_BUDGET:-290}
skip=" ${SKIP:-} "
export PYTHONPATH="$PWD/bench/reference${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)
# Seconds a command may take: STEP_TIMEOUT, at most what is left of the budget (at least 1).
limit() { local left=$((budget - $(date +%s) + started)); local l=${STEP_TIMEOUT:-60}; [ $left -lt $l ] && l=$left; [ $l -lt 1 ] && l=1; echo $l; }
step() { # step N NAME COMMAND...: runs unless skipped, under the timeout, output to OUT/N-NAME.jsonl
  local n=$1 name=$2; shift 2
  if [[ $skip == *" $n "* ]]; then echo "audit: step $n ($name) skipped" >&2; return; fi
  echo "audit: step $n ($name) at +$(($(date +%s) - started)) s" >&2
  timeout "$(limit)" "$@" > "$out/$n-$name.jsonl" 2> "$out/$n-$name.log"
  echo "audit: step $n ($name) exit $? after +$(($(date +%s) - started)) s" >&2
}
nvidia-smi -L > "$out/0-gpu.txt" 2>&1 || true
step 0 versions python3 bench/reference/gpu_probe.py versions
step 1 conv python3 bench/reference/gpu_probe.py conv --sizes 2
if [[ $skip != *" 2 "* ]]; then
  echo "audit: step 2 (cudnn-log)" >&2
  CUDNN_LOGLEVEL_DBG=3 CUDNN_LOGDEST_DBG="$out/2-cudnn.log" timeout "$(limit)" \
    python3 bench/reference/gpu_probe.py conv --sizes 1 --layouts channels-last --only dw5-s1-c80 \
    > "$out/2-cudnn-call.jsonl" 2>&1
  grep -ciE "runtime.?compil|nvrtc" "$out/2-cudnn.log" > "$out/2-cudnn-runtime-compilation-lines.txt" 2>/dev/null || true
  gzip -f "$out/2-cudnn.log" 2>/dev/null || true
fi
# The reference's detection items need detnas's export (weights, paths, targets).
export_dir="$out/export"
"$bin" bench export --out "$export_dir" --reps 3 > /dev/null 2> "$out/export.log" ||
  echo "audit: bench export failed (steps 3-4 lose their inputs): $(tail -3 "$out/export.log")" >&2
if [[ $skip != *" 3 "* ]]; then
  echo "audit: step 3 (reference layouts)" >&2
  for f in nchw channels-last; do
    timeout "$(limit)" python3 bench/reference/detection.py det-train-retinanet-800 --dir "$export_dir" --reps 3 \
      --device "$dev" --memory-format "$f" >> "$out/3-reference-layouts.jsonl" 2>> "$out/3-reference-layouts.log"
  done
fi
step 4 reference-syncs python3 bench/reference/gpu_probe.py syncs --dir "$export_dir"
if [[ $skip != *" 5 "* ]]; then
  echo "audit: step 5 (ops)" >&2
  timeout "$(limit)" python3 bench/reference/gpu_probe.py ops > "$out/5-ops.jsonl" 2> "$out/5-ops.log"
  for item in nms-1500 nms-3000 nms-5000 roi-align-64 roi-align-1000; do
    DETNAS_KERNELS=device timeout "$(limit)" "$bin" bench "$item" --device "$dev" --reps 5 >> "$out/5-ops.jsonl" 2>> "$out/5-ops.log"
  done
fi
if [[ $skip != *" 6 "* ]]; then
  echo "audit: step 6 (detnas layouts)" >&2
  for f in nchw channels-last; do
    for item in det-train-retinanet-800 det-infer-fpn-800; do
      timeout "$(limit)" "$bin" bench "$item" --device "$dev" --reps 3 --memory-format "$f" >> "$out/6-detnas-layouts.jsonl" \
        2>> "$out/6-detnas-layouts.log"
    done
  done
fi
if [[ $skip != *" 7 "* ]]; then
  echo "audit: step 7 (phases)" >&2
  DETNAS_PHASE_TIMING=1 timeout "$(limit)" "$bin" bench det-train-fpn-800 --device "$dev" --reps 3 --memory-format nchw \
    > "$out/7-phases.jsonl" 2> "$out/7-phases.log"
fi
if [[ $skip != *" 8 "* ]]; then
  echo "audit: step 8 (trace)" >&2
  DETNAS_PROFILE="$out/8-fpn-train-trace.json" timeout "$(limit)" "$bin" bench det-train-fpn-800 --device "$dev" --reps 1 \
    --memory-format nchw > "$out/8-trace.jsonl" 2> "$out/8-trace.log"
  gzip -f "$out/8-fpn-train-trace.json" 2>/dev/null || true
fi
rm -rf "$export_dir"
echo "audit: done in $(($(date +%s) - started)) s; $out:" >&2
ls -la "$out" >&2
