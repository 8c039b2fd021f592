"""The actor's wire, as far as it is ours and not the kernel's: the timeouts
the daemon sets on its end of an actor's socket."""

from __future__ import annotations

import socket

import pytest

from lxc_notify_plugin.caller.actor import timeval


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
