#!/usr/bin/env bash
# GPU numbers of the benchmark items a–e (bench/run.sh's items except the CPU-only loader and
# candidate-parallel), for a lent GPU machine that has torch==2.11.0 with CUDA but neither
# Rust nor network. Two halves:
#   bench/gpu.sh --pack     here, after a release build (scripts/demo.sh or `cargo build
#                           --release -p detnas -p detnas-cli`): strips the two binaries into
#                           target/gpu-bin (11 MB, small enough to carry there)
#   bench/gpu.sh OUT_DIR    there (the device tool: carry ["target/gpu-bin"], OUT_DIR "$OUT";
#                           not yet run on a GPU, so its duration is unknown): detnas (libtorch from python3's
#                           torch) and the PyTorch reference (python3 itself) on the GPU, side by
#                           side; writes OUT_DIR/BENCHMARKS-gpu.md and .jsonl, to merge into
#                           BENCHMARKS.md. REPS=R sets the repetitions (default 3), QUICK=1
#                           skips the 800x1333 items and the Small training step, ITEMS="..."
#                           measures only those (the device tool stops a command after 10
#                           minutes: split the items over two calls if one does not fit).
#   bench/gpu.sh --dist OUT_DIR   there: the NCCL path. `detnas dist check --device cuda` under
#                           torchrun with one process per GPU (collectives, bandwidth, SyncBN
#                           against one BN, recalibration), then bench/dist.sh (pre-training and
#                           fine-tuning, 1 process vs one per GPU, collectives' share) into
#                           OUT_DIR/dist-gpu.md. NCCL cannot put two ranks on one GPU, so a
#                           one-GPU machine checks only that the NCCL library loads and
#                           one rank joins (a job of one over NCCL).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --pack ]; then
  mkdir -p target/gpu-bin
  for b in detnas detnas-engine; do
    [ -x "target/release/$b" ] || { echo "gpu.sh: build target/release/$b first" >&2; exit 2; }
    strip -o "target/gpu-bin/$b" "target/release/$b"
  done
  if [ -f target/release/libdetnas_c10d_nccl.so ]; then
    strip -o target/gpu-bin/libdetnas_c10d_nccl.so target/release/libdetnas_c10d_nccl.so
  else
    echo "gpu.sh: no libdetnas_c10d_nccl.so (built without CUDA headers): --dist will fail" >&2
  fi
  ls -la target/gpu-bin
  exit 0
fi
if [ "${1:-}" = --dist ]; then
  out=${2:?usage: bench/gpu.sh --dist OUT_DIR}
  mkdir -p "$out"
  gpus=$(nvidia-smi -L | wc -l)
  echo "gpu.sh: $gpus GPU(s)" >&2
  export OMP_NUM_THREADS=1
  if [ "$gpus" -ge 2 ]; then
    torchrun --standalone --nproc-per-node="$gpus" --no-python target/gpu-bin/detnas dist check --device cuda \
      --timeout 120 | tee "$out/dist-check.jsonl"
    DETNAS_BIN=target/gpu-bin/detnas bench/dist.sh --device cuda --nproc "$gpus" --rounds 2 | tee "$out/dist-gpu.md"
  else
    # A job of one: DETNAS_DIST=1 joins even a world of one, so NCCL is loaded and used.
    DETNAS_DIST=1 RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 \
      target/gpu-bin/detnas dist check --device cuda --timeout 120 | tee "$out/dist-check.jsonl"
  fi
  exit 0
fi
out=${1:?usage: bench/gpu.sh --pack | bench/gpu.sh OUT_DIR | bench/gpu.sh --dist OUT_DIR}
mkdir -p "$out"
nvidia-smi -L >&2 || true
python3 -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print('torch', torch.__version__, torch.cuda.get_device_name(0))" >&2
# The launcher finds python3's torch and preloads its CUDA library: one forward on the GPU
# fails early, with the launcher's message, when it cannot.
target/gpu-bin/detnas net check --space configs/demo/space.toml --input 64 --device cuda --repeat 1 >&2
args=(--device cuda --bin target/gpu-bin --python system --reps "${REPS:-3}" --out "$out/BENCHMARKS-gpu.md")
[ "${QUICK:-0}" = 1 ] && args+=(--quick)
[ -n "${ITEMS:-}" ] && args+=(--items "$ITEMS")
exec bench/run.sh "${args[@]}"
