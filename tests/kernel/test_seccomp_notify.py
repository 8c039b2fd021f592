"""The kernel boundary against the real kernel.

A seccomp filter can never be removed from a process, so only a forked child
loads one; the child always ends with os._exit, and the test runner keeps
the listener fd the child sends back over a socketpair.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import socket
import stat
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyseccomp
import pytest

from lxc_notify_plugin import kernel
from tests.conftest import kernel_has_since

_RESULT = struct.Struct("=qq")  # (return value, errno) of the child's call


def _child(channel: socket.socket, call: Callable[[], int]) -> None:
    """Runs in the forked child: load the filter, hand over its listener, make the call."""
    try:
        filt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        filt.add_rule(pyseccomp.NOTIFY, "mknodat",
                      pyseccomp.Arg(2, pyseccomp.MASKED_EQ, 0o170000, stat.S_IFCHR))
        filt.load()
        # pyseccomp has no public accessor for the listener of a filter it loaded.
        listener = pyseccomp._libseccomp.seccomp_notify_fd(filt._filter)
        socket.send_fds(channel, [b"L"], [listener])
        channel.recv(1)  # the parent is ready to receive
        try:
            result = (call(), 0)
        except OSError as err:
            result = (-1, err.errno or 0)
        channel.send(_RESULT.pack(*result))
    finally:
        os._exit(0)


@contextmanager
def notifying_child(call: Callable[[], int]) -> Iterator[tuple[int, int, socket.socket]]:
    """(child pid, listener fd, channel); the child makes ``call`` under a notify filter."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        parent_end.close()
        _child(child_end, call)
    child_end.close()
    listener = -1
    try:
        _, fds, _, _ = socket.recv_fds(parent_end, 1, 1)
        assert len(fds) == 1
        listener = fds[0]
        parent_end.send(b"g")
        yield pid, listener, parent_end
    finally:
        if listener >= 0:
            os.close(listener)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass  # the test already reaped it
        parent_end.close()


def child_result(channel: socket.socket) -> tuple[int, int]:
    return _RESULT.unpack(channel.recv(_RESULT.size))


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100


def mknodat_call(path: bytes) -> Callable[[], int]:
    # libc directly: os.mknod treats any non-zero result as an error, but after
    # ADDFD_FLAG_SEND the call legitimately returns an fd number.
    def call() -> int:
        result = _libc.mknodat(AT_FDCWD, path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        if result < 0:
            raise OSError(ctypes.get_errno(), "mknodat")
        return int(result)
    return call


def test_struct_sizes_match_the_kernel() -> None:
    sizes = kernel.notif_sizes()
    assert sizes.seccomp_notif == ctypes.sizeof(kernel.seccomp_notif) == 80
    assert sizes.seccomp_notif_resp == ctypes.sizeof(kernel.seccomp_notif_resp) == 24
    assert sizes.seccomp_data == ctypes.sizeof(kernel.seccomp_data) == 64


def test_notification_read_validate_and_answer(tmp_path: os.PathLike[str]) -> None:
    path = os.fsencode(os.path.join(tmp_path, "missing-dir", "node"))
    with notifying_child(mknodat_call(path)) as (pid, listener, channel):
        notif = kernel.notif_recv(listener)
        table = kernel.syscall_numbers(("mknodat",))
        assert table[(notif.data.arch, notif.data.nr)] == "mknodat"
        assert notif.pid == pid
        # The caller's memory, as the kernel's copy_from_user reads it ...
        assert kernel.read_task_c_string(notif.pid, notif.data.args[1]) == path
        # ... and through /proc/PID/mem, as LXC hands it over.
        mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        try:
            assert kernel.read_c_string(mem, notif.data.args[1]) == path
        finally:
            os.close(mem)
        assert kernel.notif_id_valid(listener, notif.id)
        kernel.notif_send(listener, kernel.seccomp_notif_resp(notif.id, 0, -errno.EXDEV, 0))
        assert child_result(channel) == (-1, errno.EXDEV)


def test_continue_lets_the_kernel_answer(tmp_path: os.PathLike[str]) -> None:
    path = os.fsencode(os.path.join(tmp_path, "missing-dir", "node"))
    with notifying_child(mknodat_call(path)) as (_, listener, channel):
        notif = kernel.notif_recv(listener)
        kernel.notif_send(listener, kernel.seccomp_notif_resp(
            notif.id, 0, 0, kernel.SECCOMP_USER_NOTIF_FLAG_CONTINUE))
        assert child_result(channel) == (-1, errno.ENOENT)


def test_id_is_invalid_once_the_caller_died(tmp_path: os.PathLike[str]) -> None:
    with notifying_child(mknodat_call(os.fsencode(tmp_path) + b"/n")) as (pid, listener, _):
        notif = kernel.notif_recv(listener)
        assert kernel.notif_id_valid(listener, notif.id)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert not kernel.notif_id_valid(listener, notif.id)
        with pytest.raises(OSError) as raised:
            kernel.notif_send(listener, kernel.seccomp_notif_resp(notif.id, 0, -errno.EPERM, 0))
        assert raised.value.errno == errno.ENOENT


def test_addfd_installs_an_fd_and_answers(tmp_path: os.PathLike[str]) -> None:
    with notifying_child(mknodat_call(os.fsencode(tmp_path) + b"/n")) as (_, listener, channel):
        notif = kernel.notif_recv(listener)
        if kernel_has_since(6, 6):
            kernel.notif_set_flags(listener, kernel.SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
        else:
            with pytest.raises(OSError) as refused:
                kernel.notif_set_flags(listener, kernel.SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
            assert refused.value.errno == errno.EINVAL
        source = os.open("/dev/null", os.O_RDONLY)
        try:
            installed = kernel.notif_addfd(listener, notif.id, source,
                                           flags=kernel.SECCOMP_ADDFD_FLAG_SEND)
        finally:
            os.close(source)
        assert installed >= 0
        # With ADDFD_FLAG_SEND the child's syscall returns the installed fd.
        assert child_result(channel) == (installed, 0)


def test_read_c_string_stops_at_an_unmapped_page() -> None:
    page = mmap.PAGESIZE
    _libc.mmap.restype = ctypes.c_void_p
    _libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                           ctypes.c_int, ctypes.c_long)
    base = _libc.mmap(None, 2 * page, mmap.PROT_READ | mmap.PROT_WRITE,
                      mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert base not in (None, ctypes.c_void_p(-1).value)
    mem = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        # Unmapped, not PROT_NONE: /proc/PID/mem reads with FOLL_FORCE and sees
        # through PROT_NONE (a known, documented divergence from copy_from_user).
        assert _libc.munmap(ctypes.c_void_p(base + page), page) == 0
        ctypes.memmove(base + page - 4, b"abc\0", 4)
        assert kernel.read_c_string(mem, base + page - 4) == b"abc"
        ctypes.memmove(base + page - 4, b"abcd", 4)  # no NUL before the unmapped page
        with pytest.raises(OSError) as raised:
            kernel.read_c_string(mem, base + page - 4)
        assert raised.value.errno == errno.EFAULT
        with pytest.raises(OSError) as raised:
            kernel.read_memory(mem, base + page, 8)
        assert raised.value.errno == errno.EFAULT
        for bad in (0, 8, 1 << 63, (1 << 64) - 1):
            with pytest.raises(OSError) as raised:
                kernel.read_c_string(mem, bad)
            assert raised.value.errno == errno.EFAULT
        ctypes.memmove(base, b"a" * page, page)
        with pytest.raises(OSError) as raised:
            kernel.read_c_string(mem, base, limit=page)
        assert raised.value.errno == errno.ENAMETOOLONG
    finally:
        os.close(mem)
        _libc.munmap(ctypes.c_void_p(base), page)


def test_fs_ids_above_2_31_are_verified() -> None:
    """setfsuid returns a C int: ids >= 2**31 come back negative and must still verify."""
    pid = os.fork()
    if pid == 0:  # credentials change: only in a child, which always _exits
        code = 1
        try:
            kernel.setfsgid(3_000_000_000)
            kernel.setfsuid(3_000_000_000)
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
