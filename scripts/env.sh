# shellcheck shell=bash
# Source this file to get a shell that builds and runs detnas:
#   source scripts/env.sh
# It makes sure the cached libtorch virtual environment exists (installing the
# PyPI wheel torch==2.11.0 into it when missing), adds the headers the c10d shim
# of crates/dist compiles against (gloo's, from Debian/Ubuntu's libgloo-dev; the
# CUDA crt/cccl headers NCCL's header needs, from PyPI), then exports what tch's
# build script and the run-time loader need. Nothing is written inside the checkout.
#
# DETNAS_CACHE    cache folder (default: ${XDG_CACHE_HOME:-$HOME/.cache}/detnas)
# DETNAS_PYTHON   the Python 3 used to create the venv (default: python3)

DETNAS_TORCH_VERSION=2.11.0
DETNAS_CACHE=${DETNAS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/detnas}
DETNAS_VENV="$DETNAS_CACHE/torch-$DETNAS_TORCH_VERSION"

_detnas_setup_venv() {
  local py=${DETNAS_PYTHON:-python3}
  command -v "$py" >/dev/null || { echo "detnas setup: $py not found (Python 3 is needed to carry libtorch)" >&2; return 1; }
  mkdir -p "$DETNAS_CACHE" || return 1
  (
    # One installer at a time; a second waits and then finds the venv ready.
    flock 9
    [ -f "$DETNAS_VENV/.detnas-ok" ] && exit 0
    echo "detnas setup: installing torch==$DETNAS_TORCH_VERSION into $DETNAS_VENV (once; about 4 GB)" >&2
    rm -rf "$DETNAS_VENV"
    "$py" -m venv "$DETNAS_VENV" &&
      "$DETNAS_VENV/bin/python" -m pip install -q --disable-pip-version-check \
        "torch==$DETNAS_TORCH_VERSION" numpy &&
      "$DETNAS_VENV/bin/python" -c "import torch; assert torch.__version__.split('+')[0] == '$DETNAS_TORCH_VERSION'" &&
      touch "$DETNAS_VENV/.detnas-ok"
  ) 9>"$DETNAS_CACHE/.install.lock"
}

# Headers for crates/dist (once; a missing piece only disables that backend, with a build
# warning): gloo's headers (declarations only; the library is inside libtorch_cpu) and the
# CUDA headers at the versions the torch wheel's CUDA runtime pins.
DETNAS_GLOO_HEADERS="$DETNAS_CACHE/gloo-headers"
_detnas_setup_headers() {
  (
    flock 9
    [ -f "$DETNAS_VENV/.detnas-headers-ok" ] && exit 0
    if [ ! -f "$DETNAS_GLOO_HEADERS/usr/include/gloo/context.h" ]; then
      tmp=$(mktemp -d)
      if (cd "$tmp" && { apt-get download libgloo-dev >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get download libgloo-dev >/dev/null 2>&1; }; }); then
        dpkg-deb -x "$tmp"/libgloo-dev_*.deb "$DETNAS_GLOO_HEADERS"
      else
        echo "detnas setup: could not fetch libgloo-dev (apt): multi-process CPU runs will not be built in" >&2
      fi
      rm -rf "$tmp"
    fi
    "$DETNAS_VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
      "nvidia-cuda-crt==13.0.88.*" "nvidia-cuda-cccl==13.0.85.*" ||
      echo "detnas setup: could not install the CUDA headers: the NCCL shim will not be built" >&2
    touch "$DETNAS_VENV/.detnas-headers-ok"
  ) 9>"$DETNAS_CACHE/.headers.lock"
}

# A peer venv (once): DIR sees the libtorch venv's torch wheel (a .pth entry, so the 4 GB wheel
# is not installed twice) and gets the pip arguments on top; MARKER is written once IMPORTS
# import. Used by the reference peers of tests and benchmarks (scripts/export-peers.sh,
# bench/reference/setup.sh).
#   detnas_peer_venv DIR MARKER "WHAT (for the log)" "IMPORTS" PIP_ARGS...
detnas_peer_venv() {
  local dir=$1 marker=$2 what=$3 imports=$4
  shift 4
  [ -f "$dir/$marker" ] && return 0
  (
    flock 9
    [ -f "$dir/$marker" ] && exit 0
    echo "detnas setup: creating $dir ($what)" >&2
    rm -rf "$dir"
    "${DETNAS_PYTHON:-python3}" -m venv "$dir" || exit 1
    site=$("$dir/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    torch_site=$("$DETNAS_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "$torch_site" > "$site/detnas-torch.pth"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@" &&
      "$dir/bin/python" -c "import $imports" &&
      touch "$dir/$marker"
  ) 9>"$dir.lock"
}

if { [ -f "$DETNAS_VENV/.detnas-ok" ] || _detnas_setup_venv; } && _detnas_setup_headers; then
  export VIRTUAL_ENV="$DETNAS_VENV"
  export PATH="$DETNAS_VENV/bin:$PATH"
  export LIBTORCH_USE_PYTORCH=1
  DETNAS_LIBTORCH_LIB=$("$DETNAS_VENV/bin/python" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")
  export DETNAS_LIBTORCH_LIB
  export LD_LIBRARY_PATH="$DETNAS_LIBTORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if [ -f "$DETNAS_GLOO_HEADERS/usr/include/gloo/context.h" ]; then
    export DETNAS_GLOO_INCLUDE="$DETNAS_GLOO_HEADERS/usr/include"
  fi
else
  echo "detnas setup: could not install libtorch into $DETNAS_VENV" >&2
  return 1 2>/dev/null || exit 1
fi
