#!/usr/bin/env bash
# Set everything up, then run the whole test suite: unit, kernel and real-container tiers.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
./scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
