# shellcheck shell=bash
# Source after scripts/env.sh: creates (once) the Python environment of the export's own
# runtimes, $DETNAS_CACHE/export-peers, and exports DETNAS_EXPORT_PYTHON, its interpreter. It
# sees the torch==2.11.0 wheel of the libtorch venv and adds what the exported detector's
# scripts need besides torch: Pillow (image files) and ONNX Runtime. The tests run the
# exported model.py, predict_torch.py and predict_onnx.py with it, as a user would.
DETNAS_EXPORT_VENV="$DETNAS_CACHE/export-peers"
detnas_peer_venv "$DETNAS_EXPORT_VENV" .detnas-ok-2 "Pillow, ONNX Runtime: the exported detector's runtimes" \
  "torch, PIL, numpy, onnxruntime" pillow==12.0.0 onnxruntime==1.32.0 || return 1
export DETNAS_EXPORT_PYTHON="$DETNAS_EXPORT_VENV/bin/python"
