"""podman with the generated profile: `--security-opt seccomp=FILE` reaches our agent.

The image is imported offline from a busybox rootfs tarball into a private
store (``--root``/``--runroot`` in a temporary directory, vfs driver: no
mounts left behind).  Seen on this host: podman 4.3.1 asks for a nofile
limit of 1048576, which no process here may raise to (no CAP_SYS_RESOURCE),
so the limits are given; crun runs through the same private-mount-namespace
wrapper as in tests/oci/bundle.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.lxc.conftest import Daemon
from tests.oci.bundle import CRUN_WRAPPER, Bundle

from .conftest import seccomp_profile


@pytest.fixture
def store(oci_ready: None) -> Iterator[Path]:
    require(shutil.which("podman") is not None, "the podman command")
    work = Path(tempfile.mkdtemp(prefix="lxcn-podman-"))
    work.chmod(0o711)
    try:
        yield work
    finally:
        subprocess.run(["podman", *_global(work), "system", "reset", "--force"],
                       capture_output=True, timeout=60, check=False)
        shutil.rmtree(work, ignore_errors=True)


def _global(work: Path) -> list[str]:
    return ["--root", str(work / "storage"), "--runroot", str(work / "run"),
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
            "--events-backend", "file"]


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_podman_container_mknods_through_the_agent(daemon: Daemon, store: Path,
                                                   runtime: str) -> None:
    require(shutil.which(runtime) is not None, f"the {runtime} command")
    rootfs = Bundle(store, prefix="rootfs")
    rootfs.create(["true"])
    tarball = store / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs.rootfs), "-cf", str(tarball), "."], check=True)
    image = f"localhost/{rootfs.id}"
    podman = ["podman", *_global(store)]
    subprocess.run([*podman, "import", str(tarball), image], check=True, capture_output=True,
                   timeout=60)
    profile = store / "seccomp.json"
    profile.write_text(json.dumps(seccomp_profile(daemon)))
    runtime_path = runtime
    if runtime == "crun":
        wrapper = store / "crun-wrapper"
        wrapper.write_text("#!/bin/sh\nexec " + " ".join(
            f"'{word}'" for word in CRUN_WRAPPER) + ' "$@"\n')
        wrapper.chmod(0o755)
        runtime_path = str(wrapper)
    name = f"lxcn-podman-{rootfs.id}"
    served = daemon.log().count("served")
    result = subprocess.run([
        *podman, "--runtime", runtime_path, "run", "--rm", "--name", name, "--network=none",
        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
        "--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536", "--cap-add", "MKNOD",
        "--security-opt", f"seccomp={profile}", image, "sh", "-c",
        "mknod /tmp/null c 1 3; echo null=$?; mknod /tmp/mem c 1 1; echo mem=$?; "
        "mknod /tmp/fifo p; echo fifo=$?"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["null=0", "mem=1", "fifo=0"], result
    assert daemon.log().count("served") == served + 1  # its one listener reached the agent
