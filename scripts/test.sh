#!/usr/bin/env bash
# Set up (libtorch venv and the export peers' venv when missing), build, and run the whole
# test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
source scripts/export-peers.sh
cargo build --release --locked -p detnas -p detnas-cli
cargo test --release --locked --workspace "$@"
