"""The actor's step is done as the caller: here, every one of its groups, and
orders longer than one message.

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
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxc_notify_plugin.caller.actor import Actor, Identity
from lxc_notify_plugin.host.cgroups import procs_files

OUTSIDER = 23456  # owns nothing here: only a group lets it write
FIRST_GROUP = 300000
MANY = 20000  # more than one message of the actor's holds (64 KiB / 4 bytes)


@pytest.fixture
def actor() -> Iterator[Actor]:
    with open("/proc/self/cgroup", "rb") as cgroup, open("/proc/self/mountinfo") as mounts:
        files = procs_files(cgroup.read(), mounts.read())
    made = Actor(files, os.getpid())
    try:
        yield made
    finally:
        made.close()


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


def test_a_caller_with_more_groups_than_a_message_holds(actor: Actor, group_dir: int) -> None:
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
