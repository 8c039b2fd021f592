"""The actor's wire, as far as it is ours and not the kernel's: the timeouts
the daemon sets on its end of an actor's socket."""

from __future__ import annotations

import socket

import pytest

from lxc_notify_plugin.caller.actor import Actor, timeval


def test_a_timeout_is_the_timeval_the_kernel_takes() -> None:
    """The kernel gives back what it took: a layout it read differently (a
    32-bit host with 64-bit time: SO_RCVTIMEO is the option of 64-bit fields)
    would come back as another time, or be refused (EINVAL)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            ours.setsockopt(socket.SOL_SOCKET, option, timeval(25.5))
            assert ours.getsockopt(socket.SOL_SOCKET, option, len(timeval(0))) == timeval(25.5)


def test_a_receive_ends_when_its_timeout_passes() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(0.01))
        with pytest.raises(BlockingIOError):
            ours.recv(4)


HIERARCHIES = ("4:memory", "3:devices", "0:")


def _actor() -> Actor:
    actor = Actor.__new__(Actor)  # no process: only the decision is tested
    actor.hierarchies = HIERARCHIES
    actor._leave_by_init = {}
    return actor


def _cgroup(memory: str, devices: str, unified: str) -> bytes:
    return f"4:memory:{memory}\n3:devices:{devices}\n0::{unified}\n".encode()


@pytest.mark.parametrize(("caller", "init", "leaves"), [
    # The caller is in init's cgroups: none can be removed while init lives.
    (("/c", "/c", "/c"), ("/c", "/c", "/c"), ()),
    # lxc-attach's v2 leaf beside init: removable by container root.
    (("/c", "/c", "/c/.lxc"), ("/c", "/c", "/c"), ("0:",)),
    # systemd as init moved itself to init.scope: the caller's cgroup holds it.
    (("/c", "/c", "/c"), ("/c", "/c", "/c/init.scope"), ()),
    # a unit's cgroup, and a sibling whose name only starts like init's.
    (("/c/a.service", "/c", "/c/init"), ("/c", "/c", "/c/init.scope"), ("4:memory", "0:")),
    # a cgroup name with ':' in it.
    (("/c", "/c/x:y", "/c"), ("/c", "/c/x:y/z", "/c"), ()),
])
def test_the_actor_leaves_every_cgroup_that_does_not_hold_init(
        caller: tuple[str, str, str], init: tuple[str, str, str], leaves: tuple[str, ...]) -> None:
    """Only a cgroup that is init's or one of its ancestors cannot be removed while
    the container runs: the actor may stay in those alone between calls."""
    proc_cgroup = _cgroup(*caller)
    expected = sum(1 << HIERARCHIES.index(h) for h in leaves)
    assert _actor().leave_for(proc_cgroup, _cgroup(*init)) == expected


def test_with_init_gone_the_actor_leaves_everything() -> None:
    proc_cgroup = _cgroup("/c", "/c", "/c")
    assert _actor().leave_for(proc_cgroup, None) == 0b111
