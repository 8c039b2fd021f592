"""runc (and crun, where it runs) containers supervised through the seccomp agent."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lxc_notify_plugin.policy.oci_profile import DISTRIBUTION_BASE
from tests.conftest import IN_CI, require
from tests.lxc.conftest import Daemon
from tests.oci.bundle import Bundle

from .conftest import seccomp_profile, wait_until

MKNOD_SCRIPT = """
mknod /tmp/null c 1 3 && echo null=ok; stat -c 'null=%F,%t,%T' /tmp/null
mknod /tmp/mem c 1 1; echo mem=$?
mknod /tmp/fifo p; echo fifo=$?
"""


def _base_args(base: str) -> list[str]:
    if base == "distribution":
        # setup.sh installs golang-github-containers-common, which ships it.
        require(Path(DISTRIBUTION_BASE).is_file(), DISTRIBUTION_BASE)
        return ["--base", DISTRIBUTION_BASE]
    return ["--base", "minimal"]


def _runtime(runtime: str) -> None:
    require(shutil.which(runtime) is not None, f"the {runtime} command")


@pytest.mark.parametrize("runtime", ["runc", "crun"])
@pytest.mark.parametrize("base", ["distribution", "minimal"])
def test_allowed_device_is_made_and_a_forbidden_one_refused(
        daemon: Daemon, bundles: Callable[..., Bundle], runtime: str, base: str) -> None:
    _runtime(runtime)
    profile = seccomp_profile(daemon, *_base_args(base))
    bundle = bundles(["sh", "-c", MKNOD_SCRIPT], profile, runtime)
    result = bundle.run()
    assert result.returncode == 0, result.stderr
    out = result.stdout.split()
    assert "null=ok" in out and "null=character special file,1,3" in result.stdout, result
    assert "mem=1" in out and "Operation not permitted" in result.stderr, result
    # The complement of our rules keeps the base's ALLOW for what we never trap.
    assert "fifo=0" in out, result
    log = daemon.log()
    assert f"oci:{bundle.id}: listener of pid" in log
    assert f"oci:{bundle.id}: pid" in log  # the dispatcher saw its calls


def test_exec_is_supervised_and_its_listener_released(
        daemon: Daemon, bundles: Callable[..., Bundle]) -> None:
    bundle = bundles(["sleep", "1000"], seccomp_profile(daemon, *_base_args("minimal")))
    bundle.start()
    served = f"oci:{bundle.id}: listener of pid"
    wait_until(lambda: daemon.log().count(served) == 1, "the init's listener")
    fds, threads = daemon.fd_count(), _threads(daemon)

    result = bundle.exec("sh", "-c", "mknod /tmp/zero c 1 5 && stat -c '%t,%T' /tmp/zero")
    assert result.returncode == 0 and result.stdout.split() == ["1,5"], result
    released = f"oci:{bundle.id}: listener of pid"
    wait_until(lambda: daemon.log().count(released) == 3, "the exec's listener released")
    wait_until(lambda: (daemon.fd_count(), _threads(daemon)) == (fds, threads),
               f"the daemon's fds and threads back to {fds} and {threads}")
    assert "no task left in its filter" in daemon.log()

    bundle.remove()  # the init's listener goes too, and with it the container
    wait_until(lambda: f"oci:{bundle.id}" not in _status_names(daemon), "the container gone")


def _threads(daemon: Daemon) -> int:
    return len(os.listdir(f"/proc/{daemon.pid}/task"))


def _status_names(daemon: Daemon) -> str:
    return daemon.cli("status").stdout


@pytest.mark.parametrize("where", ["metadata", "annotation"])
def test_an_unknown_profile_hands_every_call_back(
        daemon: Daemon, bundles: Callable[..., Bundle], where: str) -> None:
    profile: dict[str, Any] = seccomp_profile(daemon, *_base_args("minimal"))
    annotations = None
    if where == "metadata":
        profile["listenerMetadata"] = "profile=no-such-profile"
    else:
        profile["listenerMetadata"] = ""
        annotations = {"org.lxc-notify.profile": "no-such-profile"}
    bundle = bundles(["sh", "-c", "mknod /tmp/null c 1 3; echo rc=$?"], profile,
                     annotations=annotations)
    result = bundle.run()
    assert "rc=1" in result.stdout.split() and "Operation not permitted" in result.stderr
    log = daemon.log()
    assert f"oci:{bundle.id}: every call goes back to the kernel" in log, log[-3000:]
    line = next(x for x in log.splitlines() if f"oci:{bundle.id}: every call" in x)
    assert "no-such-profile" in line, line


def test_an_annotation_names_the_profile_when_metadata_does_not(
        daemon: Daemon, bundles: Callable[..., Bundle]) -> None:
    profile = seccomp_profile(daemon, *_base_args("minimal"))
    profile["listenerMetadata"] = ""
    bundle = bundles(["sh", "-c", "mknod /tmp/null c 1 3; echo rc=$?"], profile,
                     annotations={"org.lxc-notify.profile": "docker"})
    result = bundle.run()
    assert "rc=0" in result.stdout.split(), result
    assert f"oci:{bundle.id}: listener of pid" in daemon.log()
    assert "profile docker" in daemon.log()


def test_runc_refuses_every_seccomp_flag(daemon: Daemon,
                                         bundles: Callable[..., Bundle]) -> None:
    """runc 1.1.5: "seccomp flags are not yet supported by runc"; so the profile
    has no flags unless asked (--wait-killable, for crun)."""
    plain = seccomp_profile(daemon, *_base_args("minimal"))
    assert "flags" not in plain
    killable = seccomp_profile(daemon, *_base_args("minimal"), "--wait-killable")
    assert killable["flags"] == ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
    bundle = bundles(["true"], killable)
    result = bundle.run()
    if result.returncode == 0 and not IN_CI:
        pytest.skip("this runc accepts seccomp flags: the note about runc 1.1.5 is stale")
    assert result.returncode != 0 and "flags" in result.stderr, result
