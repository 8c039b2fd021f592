"""sched_setscheduler/sched_setparam emulation in a real unprivileged container: pids
of the container's namespace, changes checked from the host."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.lxc.conftest import Container, Daemon

KEY = "security.syscalls.intercept.sched_setscheduler"
# RT group scheduling (CONFIG_RT_GROUP_SCHED, v1 cpu controller) gives each cgroup
# a real-time budget, 0 for new ones: this host's kernel has it; Debian's stock
# kernels do not, and there SCHED_FIFO needs no budget.
RT_GROUPS = Path("/sys/fs/cgroup/cpu/cpu.rt_runtime_us").exists()
RT_BUDGET = "lxc.cgroup.cpu.rt_runtime_us = 10000\n" if RT_GROUPS else ""


def sched_container(daemon: Daemon, nodeprobe: Path, extra_config: str = "") -> Container:
    box = Container()
    box.daemon = daemon
    try:
        box.create(extra_config)
        box.install(nodeprobe, "/bin/nodeprobe")
        daemon.cli("enable", box.name, "--profile", "default")
        daemon.cli("config", "set", box.name, KEY, "true")
        box.start()
    except BaseException:
        box.destroy()
        raise
    return box


@pytest.fixture(scope="module")
def rt_box(daemon: Daemon, nodeprobe: Path) -> Iterator[Container]:
    box = sched_container(daemon, nodeprobe, RT_BUDGET)
    try:
        yield box
    finally:
        box.destroy()


@pytest.fixture(scope="module")
def no_budget(daemon: Daemon, nodeprobe: Path) -> Iterator[Container]:
    box = sched_container(daemon, nodeprobe)
    try:
        yield box
    finally:
        box.destroy()


def host_pid_of(box: Container, container_pid: int) -> int:
    """The host pid of the container's ``container_pid``, from NSpid lines."""
    ns = os.readlink(f"/proc/{box.init_pid()}/ns/pid")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != ns:
                continue
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        ids = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:"))
        if ids[-1] == str(container_pid):
            return int(entry)
    raise AssertionError(f"no pid {container_pid} in {box.name}")


@contextlib.contextmanager
def target(box: Container, uid: int | None = None) -> Iterator[tuple[int, int]]:
    """A paused process in the container: (its pid inside, its pid on the host)."""
    argv = ("pause",) if uid is None else ("pause", str(uid))
    with box.background(*argv) as process:
        assert process.stdout is not None
        # Printed and flushed with "started": already in the pipe's buffer.
        inside = int(process.stdout.readline())
        yield inside, host_pid_of(box, inside)


def test_a_non_rt_policy_on_another_users_process(rt_box: Container) -> None:
    with target(rt_box, uid=1000) as (inside, host):
        assert os.sched_getscheduler(host) == os.SCHED_OTHER
        assert rt_box.probe("sched", str(inside), "batch", "0") == "ok"
        assert os.sched_getscheduler(host) == os.SCHED_BATCH
        assert rt_box.probe("sched", str(inside), "idle", "0") == "ok"
        assert os.sched_getscheduler(host) == os.SCHED_IDLE


def test_sched_fifo_with_an_rt_budget_and_setparam(rt_box: Container) -> None:
    with target(rt_box) as (inside, host):
        assert rt_box.probe("sched", str(inside), "fifo", "10") == "ok"
        assert os.sched_getscheduler(host) == os.SCHED_FIFO
        assert os.sched_getparam(host).sched_priority == 10
        assert rt_box.probe("schedparam", str(inside), "20") == "ok"
        assert os.sched_getparam(host).sched_priority == 20
        # The kernel's own checks on policy and priority.
        assert rt_box.probe("sched", str(inside), "fifo", "100") == "EINVAL"
        assert rt_box.probe("sched", str(inside), "77", "0") == "EINVAL"
        assert rt_box.probe("sched", str(inside), "other", "0") == "ok"
        assert os.sched_getscheduler(host) == os.SCHED_OTHER


def test_pid_0_is_the_caller_itself(rt_box: Container) -> None:
    # The change dies with the caller; the kernel's answer to a bad priority shows it
    # was judged for real, and "ok" that pid 0 was the caller's own thread.
    assert rt_box.probe("sched", "0", "fifo", "5") == "ok"
    assert rt_box.probe("sched", "0", "fifo", "0") == "EINVAL"


def test_without_an_rt_budget_the_kernels_eperm(no_budget: Container) -> None:
    if RT_GROUPS:
        budget = Path(f"/sys/fs/cgroup/cpu/lxc.payload.{no_budget.name}/cpu.rt_runtime_us")
        require(budget.exists(), "the container's cpu cgroup")
        assert int(budget.read_text()) == 0
    with target(no_budget) as (inside, host):
        if RT_GROUPS:
            assert no_budget.probe("sched", str(inside), "fifo", "10") == "EPERM"
            assert os.sched_getscheduler(host) == os.SCHED_OTHER
        else:  # no budgets in this kernel: the kernel allows it, and so do we
            assert no_budget.probe("sched", str(inside), "fifo", "10") == "ok"
            assert os.sched_getscheduler(host) == os.SCHED_FIFO
        assert no_budget.probe("sched", str(inside), "batch", "0") == "ok"
        assert os.sched_getscheduler(host) == os.SCHED_BATCH


def test_a_pid_that_exists_only_on_the_host_is_esrch(rt_box: Container) -> None:
    # The daemon's own pid and pid 1 of the host: neither is in the container's
    # namespace (its own pid 1 is its init, which the call may change).
    assert rt_box.probe("sched", str(os.getpid()), "batch", "0") == "ESRCH"
    assert rt_box.probe("sched", "4000000", "batch", "0") == "ESRCH"
    assert os.sched_getscheduler(os.getpid()) == os.SCHED_OTHER


def test_a_non_root_container_user_gets_eperm(rt_box: Container) -> None:
    with target(rt_box) as (inside, host):
        assert rt_box.probe("sched", str(inside), "batch", "0", uid=1000, gid=1000) == "EPERM"
        assert rt_box.probe("sched", str(inside), "fifo", "10", uid=1000, gid=1000) == "EPERM"
        assert os.sched_getscheduler(host) == os.SCHED_OTHER
    # Its own process the kernel lets it change (handed back: the kernel resolves
    # the pid in the caller's namespace itself).
    assert rt_box.probe("sched", "0", "batch", "0", uid=1000, gid=1000) == "ok"


def test_bad_arguments_are_the_kernels(rt_box: Container) -> None:
    assert rt_box.probe("sched", "-5", "batch", "0") == "EINVAL"
    assert rt_box.probe("sched", "0", "-1", "0") == "EINVAL"
