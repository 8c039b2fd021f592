"""The actor's step is done as the caller: here, every one of its groups, and
orders longer than one message; an actor that died is replaced for the next
order; a serving thread shares the actor's CPU only while it uses it.

A task may hold up to NGROUPS_MAX (65536) supplementary groups; the actor's
mknod message has room for about 16,000, and the rest travel in a memfd
(caller/actor.py).  A directory only the last group may write to tells whether
all of them reached the kernel: with them the node is made, without that one
the kernel says EACCES.  The actor runs in this process's own cgroups.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxc_notify_plugin.caller import cpus
from lxc_notify_plugin.caller.actor import Actor, Actors, Identity
from lxc_notify_plugin.transport.threads import start_serving
from tests.conftest import rounds
from tests.kernel.conftest import holds

OUTSIDER = 23456  # owns nothing here: only a group lets it write
FIRST_GROUP = 300000
MANY = 20000  # more than one message of the actor's holds (64 KiB / 4 bytes)


@pytest.fixture
def group_dir(tmp_path: Path) -> Iterator[int]:
    """An fd of a directory writable by its group, the last of the caller's many."""
    path = tmp_path / "group-only"
    path.mkdir()
    os.chown(path, 0, FIRST_GROUP + MANY - 1)
    path.chmod(0o770)
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def test_a_caller_with_more_groups_than_a_messageholds(actor: Actor, group_dir: int) -> None:
    groups = tuple(range(FIRST_GROUP, FIRST_GROUP + MANY))
    fifo = stat.S_IFIFO | 0o644
    # No capability: the directory's group permission alone decides.
    actor.mknodat(group_dir, b"made", fifo, 0, Identity(OUTSIDER, OUTSIDER, groups, 0o022, 0))
    made = os.stat("made", dir_fd=group_dir)
    assert stat.S_ISFIFO(made.st_mode) and made.st_uid == OUTSIDER
    with pytest.raises(PermissionError):
        actor.mknodat(group_dir, b"refused", fifo, 0,
                      Identity(OUTSIDER, OUTSIDER, groups[:-1], 0o022, 0))
    assert actor.alive


def test_an_order_longer_than_a_message_reaches_the_actor_whole(actor: Actor) -> None:
    """JSON orders (a program's caller and its groups) beyond one message go in a
    memfd: the actor reads all of it, answers, and stays; no fd of ours is left."""
    before = sorted(os.listdir("/proc/self/fd"))
    # A step no kernel module declares: the actor answers EIO, having parsed it
    # (before, a cut order killed it: ActorFailed, "actor exited").
    answer, fds = actor.step("bpf", "no-such-step", {"padding": "x" * 200_000})
    assert (answer["errno"], answer.get("step"), fds) == (errno.EIO, "no step bpf.no-such-step",
                                                          [])
    assert actor.alive
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_an_actor_killed_between_orders_is_replaced_for_the_next(actor: Actor,
                                                                  tmp_path: Path) -> None:
    """No waitpid per order (a syscall on the hot path): an actor that died by
    itself (OOM-killed in the caller's memory cgroup) is found by the send its
    dead socket refuses, which delivered nothing, and a new actor takes it."""
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        first = actor.process.pid
        actor.mknodat(fd, b"before", stat.S_IFIFO | 0o644, 0, Identity(0, 0, (), 0o022, 0))
        os.kill(first, 9)
        os.waitid(os.P_PID, first, os.WEXITED | os.WNOWAIT)  # dead, socket closed
        actor.mknodat(fd, b"after", stat.S_IFIFO | 0o644, 0, Identity(0, 0, (), 0o022, 0))
        assert actor.process.pid != first and actor.alive
        assert stat.S_ISFIFO(os.stat("after", dir_fd=fd).st_mode)
    finally:
        os.close(fd)


def test_a_thread_is_pinned_only_while_it_uses_actors(tmp_path: Path) -> None:
    """The serving thread shares one CPU with its actor while they talk (a
    wake-up across CPUs costs ~25 us each way here), gets the daemon's CPUs back
    once its actors rest, and a thread it starts never inherits the pin."""
    if len(cpus.DAEMON_CPUS) < 2:
        pytest.fail("needs two CPUs to tell a pinned thread from a free one")
    seen: dict[str, set[int]] = {}

    def serving() -> None:
        with open("/proc/self/cgroup", "rb") as cgroup, open("/proc/self/mountinfo") as mounts:
            proc_cgroup = cgroup.read()
            text = mounts.read()
        actors = Actors()
        fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            actor = actors.get(proc_cgroup, os.getpid(), lambda: text)
            actor.mknodat(fd, b"node", stat.S_IFIFO | 0o644, 0, Identity(0, 0, (), 0o022, 0))
            seen["working"] = os.sched_getaffinity(0)
            seen["actor"] = os.sched_getaffinity(actor.process.pid)
            started = threading.Thread(target=lambda: seen.update(child=os.sched_getaffinity(0)))
            start_serving("child", started.run, threading.Lock(), {}, None, failed="child",
                          refused=lambda err: None)
            # Used just now: it stays.  Stamped a minute ahead, so that no delay between
            # the stamp and rest() can age it past the 2 ms rest() waits for (seen in
            # the Debian 13 guest under TCG: the child thread started above took the
            # GIL from this one for longer than that).
            actor.used = time.monotonic() + 60.0
            actors.rest()
            seen["busy"] = os.sched_getaffinity(0)
            actor.used = time.monotonic() - 1.0  # idle for a second
            actors.rest()
            seen["rested"] = os.sched_getaffinity(0)
        finally:
            os.close(fd)
            actors.close()

    thread = threading.Thread(target=serving)
    thread.start()
    thread.join(30)
    deadline = time.monotonic() + 10
    while "child" not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(seen["working"]) == 1 and seen["actor"] == seen["working"]
    assert seen["busy"] == seen["working"]
    assert seen["rested"] == cpus.DAEMON_CPUS
    assert seen["child"] == cpus.DAEMON_CPUS


def test_an_actor_holds_no_fd_of_the_callers_once_it_answered(actor: Actor,
                                                             tmp_path: Path) -> None:
    """The directory's fd the daemon passed is closed before the answer, not after:
    held a moment longer, it keeps the mount busy after the caller's call has
    returned, and a privileged caller's ``umount`` right after its ``mknod``
    would get EBUSY, where the kernel gives success.  (Pinned to this thread's
    CPU, the actor runs again only once this thread gives the CPU up: an fd
    closed after the answer is still open when it returns.)  Made and refused
    steps alike, in a loop."""
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for attempt in range(rounds(200, 50)):
            name = b"node-%d" % attempt
            actor.mknodat(fd, name, stat.S_IFIFO | 0o644, 0, Identity(0, 0, (), 0o022, 0))
            assert not holds(actor.process.pid, tmp_path), f"made, attempt {attempt}"
            with pytest.raises(FileExistsError):
                actor.mknodat(fd, name, stat.S_IFIFO | 0o644, 0, Identity(0, 0, (), 0o022, 0))
            assert not holds(actor.process.pid, tmp_path), f"refused, attempt {attempt}"
    finally:
        os.close(fd)
