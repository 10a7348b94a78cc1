#!/usr/bin/env bash
# Set up (libtorch venv when missing), build, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --locked -p detnas -p detnas-cli
cargo test --release --locked --workspace "$@"
