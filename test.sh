#!/usr/bin/env bash
# Set everything up, then run the whole test suite: unit, kernel and real-container tiers.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
