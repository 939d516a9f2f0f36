#!/usr/bin/env bash
# Set up this machine (idempotent) and run corral's demo: a server, an executor and a batch change.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/corral demo "$@"
