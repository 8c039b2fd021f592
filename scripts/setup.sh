#!/usr/bin/env bash
# Everything lxc-notify-plugin needs on a fresh Debian 12 machine, as root.
# Idempotent: running it again changes nothing that is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs packages and runs containers)" >&2
    exit 1
fi

# debootstrap: the Debian root filesystem tests/lxc/test_docker.py runs Docker in.
# runc, crun: the OCI runtimes tests/oci hands listeners from; containers-common
# ships /usr/share/containers/seccomp.json, the base `lxc-notify oci seccomp` extends;
# podman runs tests/oci/test_podman.py with the generated profile.
packages=(lxc python3-lxc python3-venv busybox-static uidmap udev e2fsprogs fuse2fs
          gcc libc6-dev procps debootstrap runc crun golang-github-containers-common podman)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Subordinate ids for unprivileged containers: root inside = 100000 outside.
for f in /etc/subuid /etc/subgid; do
    if ! grep -qx 'root:100000:65536' "$f" 2>/dev/null; then
        [ -s "$f" ] && [ -n "$(tail -c1 "$f")" ] && echo >> "$f"  # end the last line first
        echo 'root:100000:65536' >> "$f"
    fi
done

# Debian's python3-lxc lives in the system site-packages of /usr/bin/python3.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
# pip's own run costs seconds natively and most of a minute under QEMU's TCG (the
# VM tier runs this script twice per guest): skipped while the project's metadata
# is what the last successful install used.  --no-compile: Python compiles what it
# imports on first use; pip compiling every file of mypy, hypothesis and setuptools
# up front was a quarter of the install (8-10 s against 6-7 s here).
stamp=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.installed 2>/dev/null)" != "$stamp" ]; then
    .venv/bin/python -m pip install -q --no-compile --disable-pip-version-check -e ".[test]"
    echo "$stamp" > .venv/.installed
fi
.venv/bin/python -c "import lxc, pyseccomp, pyudev" 

# A real udev database (device policy reads it); start udevd unless it runs.
if ! pgrep -x systemd-udevd >/dev/null; then
    /lib/systemd/systemd-udevd --daemon
fi
udevadm trigger --action=add >/dev/null 2>&1 || true
udevadm settle --timeout=30 || true
echo "setup: ready"
