#!/usr/bin/env bash
# Set up (libtorch venv when missing), build, and run the embedded demo.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --locked -p detnas -p detnas-cli
exec target/release/detnas run "$@"
