# shellcheck shell=bash
# Source after scripts/env.sh: creates (once) the Python environment of the export's own
# runtimes, $DETNAS_CACHE/export-peers, and exports DETNAS_EXPORT_PYTHON, its interpreter. It
# sees the torch==2.11.0 wheel of the libtorch venv (a .pth entry) and adds what the exported
# detector's scripts need besides torch: Pillow (image files) and ONNX Runtime. The tests run
# the exported model.py, predict_torch.py and predict_onnx.py with it, as a user would.
DETNAS_EXPORT_VENV="$DETNAS_CACHE/export-peers"
if [ ! -f "$DETNAS_EXPORT_VENV/.detnas-ok-2" ]; then
  (
    flock 9
    [ -f "$DETNAS_EXPORT_VENV/.detnas-ok-2" ] && exit 0
    echo "detnas setup: creating $DETNAS_EXPORT_VENV (Pillow, ONNX Runtime: the exported detector's runtimes)" >&2
    rm -rf "$DETNAS_EXPORT_VENV"
    "${DETNAS_PYTHON:-python3}" -m venv "$DETNAS_EXPORT_VENV" || exit 1
    site=$("$DETNAS_EXPORT_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    torch_site=$("$DETNAS_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "$torch_site" > "$site/detnas-torch.pth"
    "$DETNAS_EXPORT_VENV/bin/python" -m pip install -q --disable-pip-version-check pillow==12.0.0 onnxruntime==1.32.0 &&
      "$DETNAS_EXPORT_VENV/bin/python" -c "import torch, PIL, numpy, onnxruntime" &&
      touch "$DETNAS_EXPORT_VENV/.detnas-ok-2"
  ) 9>"$DETNAS_CACHE/.export-install.lock" || return 1
fi
export DETNAS_EXPORT_PYTHON="$DETNAS_EXPORT_VENV/bin/python"
