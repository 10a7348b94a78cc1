# shellcheck shell=bash
# Source after scripts/env.sh: creates (once) and activates the PyTorch reference's own
# virtual environment, $DETNAS_CACHE/bench-reference. It sees the torch==2.11.0 wheel of the
# libtorch venv (a .pth entry, so the 4 GB wheel is not installed twice) and adds what the
# reference needs on top: torchvision 0.26.0 (the release built for torch 2.11: roi_align,
# batched_nms, box_iou), pycocotools (COCO AP) and Pillow. Benchmark tooling only.
DETNAS_BENCH_VENV="$DETNAS_CACHE/bench-reference"
detnas_peer_venv "$DETNAS_BENCH_VENV" .detnas-ok "torchvision, pycocotools" "torch, torchvision, pycocotools, PIL, numpy" \
  --no-deps torchvision==0.26.0 pycocotools==2.0.11 pillow || return 1
export PATH="$DETNAS_BENCH_VENV/bin:$PATH"
