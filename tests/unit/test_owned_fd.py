"""The fd holder handlers own their fds with: each fd closed once, on every path."""

from __future__ import annotations

import os

import pytest

from lxc_notify_plugin.kernel.fd import OwnedFd


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_with_block_closes_on_an_error_and_a_second_close_is_nothing() -> None:
    fd = os.open("/", os.O_PATH | os.O_CLOEXEC)
    holder = OwnedFd(fd)
    with pytest.raises(RuntimeError), holder:
        raise RuntimeError("a handler's failure")
    assert holder.fd == -1 and not _is_open(fd)
    holder.close()  # the number may be another open's by now: never closed again


def test_detach_hands_the_fd_on_and_replace_closes_the_old_one() -> None:
    first = os.open("/", os.O_PATH | os.O_CLOEXEC)
    second = os.open("/", os.O_PATH | os.O_CLOEXEC)
    with OwnedFd(first) as holder:
        holder.replace(second)  # a shifted mount replacing the one it came from
        assert holder.fd == second and not _is_open(first)
        holder.replace(second)  # the same fd again: kept, not closed
        assert _is_open(second)
        taken = holder.detach()
    assert taken == second and _is_open(second)  # the new owner's now
    os.close(second)
