#!/usr/bin/env bash
# Set everything up, then run the whole test suite: unit, kernel and real-container tiers.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
./scripts/setup.sh
# With no arguments, everything: the host tiers, then the real-hosts tier (tests/vm:
# Debian 12 and 13 under QEMU, images cached after the first run; LXC_NOTIFY_NO_VM=1
# leaves it out, as inside those guests). With arguments, exactly what they name (add
# --vm for the VM tier).
if [ $# -eq 0 ] && [ -z "${LXC_NOTIFY_NO_VM:-}" ]; then
    # QEMU for the tier, on the host only (the guests' images carry setup.sh's packages).
    if ! command -v qemu-system-x86_64 >/dev/null || ! command -v qemu-img >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            qemu-system-x86 qemu-utils >/dev/null
    fi
    set -- --vm
fi
exec .venv/bin/python -m pytest "$@"
