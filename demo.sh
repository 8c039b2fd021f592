#!/usr/bin/env bash
# Set everything up, then show interception working in a real unprivileged container.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
./scripts/setup.sh
exec .venv/bin/lxc-notify demo
