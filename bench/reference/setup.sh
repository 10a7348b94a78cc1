# shellcheck shell=bash
# Source after scripts/env.sh: creates (once) and activates the PyTorch reference's own
# virtual environment, $DETNAS_CACHE/bench-reference. It sees the torch==2.11.0 wheel of the
# libtorch venv (a .pth entry, so the 4 GB wheel is not installed twice) and adds what the
# reference needs on top: torchvision 0.26.0 (the release built for torch 2.11: roi_align,
# batched_nms, box_iou), pycocotools (COCO AP) and Pillow. Benchmark tooling only.
DETNAS_BENCH_VENV="$DETNAS_CACHE/bench-reference"
if [ ! -f "$DETNAS_BENCH_VENV/.detnas-ok" ]; then
  (
    flock 9
    [ -f "$DETNAS_BENCH_VENV/.detnas-ok" ] && exit 0
    echo "bench setup: creating $DETNAS_BENCH_VENV (torchvision, pycocotools)" >&2
    rm -rf "$DETNAS_BENCH_VENV"
    "${DETNAS_PYTHON:-python3}" -m venv "$DETNAS_BENCH_VENV" || exit 1
    site=$("$DETNAS_BENCH_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    torch_site=$("$DETNAS_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "$torch_site" > "$site/detnas-torch.pth"
    "$DETNAS_BENCH_VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
      torchvision==0.26.0 pycocotools==2.0.11 pillow &&
      "$DETNAS_BENCH_VENV/bin/python" -c "import torch, torchvision, pycocotools, PIL, numpy" &&
      touch "$DETNAS_BENCH_VENV/.detnas-ok"
  ) 9>"$DETNAS_CACHE/.bench-install.lock" || return 1
fi
export PATH="$DETNAS_BENCH_VENV/bin:$PATH"
