"""Real OCI runtimes (runc; crun where it runs) handing listeners to a real daemon.

The daemon is the LXC tier's (``tests/lxc/conftest.py: Daemon``): a subprocess
with every path under a temporary directory, its agent socket beside its LXC
socket.  Bundles get unique ids and are deleted, container and directory,
even when a test fails.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require, require_root, require_tools
from tests.lxc.conftest import Daemon
from tests.oci.bundle import CONTAINER_ROOT, Bundle

OCI_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees every item of the session, not only this folder's.
    for item in items:
        if OCI_TESTS in item.path.resolve().parents:
            item.add_marker(pytest.mark.oci)


@pytest.fixture(scope="session")
def oci_ready() -> None:
    require_root()
    require_tools("runc", "unshare")
    require(shutil.which("busybox") is not None, "busybox (busybox-static)")
    subuid = Path("/etc/subuid")
    require(subuid.exists() and f"root:{CONTAINER_ROOT}:65536" in subuid.read_text().split(),
            f"root:{CONTAINER_ROOT}:65536 in /etc/subuid (scripts/setup.sh adds it)")


@pytest.fixture(scope="session")
def daemon(oci_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("oci-daemon"))
    daemon.start()
    # An answered status means serve() runs, its udev thread started: fd and
    # thread counts taken from now on are the daemon's settled ones.
    daemon.cli("status")
    try:
        yield daemon
    finally:
        rc = daemon.stop()
    log = daemon.log()
    assert rc == 0, f"daemon exited {rc}:\n{log[-5000:]}"
    assert "Traceback" not in log, log[-5000:]


def seccomp_profile(daemon: Daemon, *args: str) -> dict[str, Any]:
    """``lxc-notify oci seccomp ARGS``, parsed."""
    result = daemon.cli("oci", "seccomp", *args)
    profile = json.loads(result.stdout)
    assert isinstance(profile, dict)
    return profile


@pytest.fixture
def bundles(oci_ready: None) -> Iterator[Callable[..., Bundle]]:
    """``bundles(args, seccomp=..., runtime=..., annotations=...)``: a created bundle.

    Not under pytest's tmp_path: its directories are 0700, which the
    container's root (100000 on the host) cannot traverse to its rootfs."""
    made: list[Bundle] = []
    parent = Path(tempfile.mkdtemp(prefix="lxcn-oci-"))
    parent.chmod(0o711)

    def make(args: list[str], seccomp: dict[str, Any] | None = None, runtime: str = "runc",
             annotations: dict[str, str] | None = None) -> Bundle:
        bundle = Bundle(parent, runtime)
        made.append(bundle)
        bundle.create(args, seccomp, annotations)
        return bundle

    try:
        yield make
    finally:
        for bundle in made:
            bundle.remove()
        shutil.rmtree(parent, ignore_errors=True)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
