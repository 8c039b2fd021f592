"""Reading and writing the calling task's memory, as the kernel's own copy would.

Kernel facts that shaped this module:

* ``process_vm_readv``/``process_vm_writev`` (3.2) copy between our memory and
  a task's without stopping it, honouring its page protections as
  copy_from_user/copy_to_user do in the caller's own syscall: a PROT_NONE page
  cannot be read, a PROT_READ page cannot be written, and both give EFAULT,
  the errno the caller's syscall would have got.  ``/proc/PID/mem`` instead
  reads and writes with FOLL_FORCE, as a debugger does: it sees through
  PROT_NONE and writes into read-only pages, so it would accept paths the
  kernel refuses.
* They name the task by number (a thread id is accepted), so the number may
  belong to someone else by the time we read: the caller re-checks the
  notification with ID_VALID after every read, before acting.  A task that
  is gone is ESRCH; a task we may not ptrace is EPERM.
* A transfer stops at the first page it cannot pin and returns the bytes
  done so far: a read running into a bad page is short, not failed, and is
  EFAULT here unless what was needed (a string's NUL) came before it.
* The kernel's strncpy_from_user (behind getname) reads a path only as far
  as its NUL, never touching the pages after it; so does
  :func:`read_task_c_string`, one page per transfer.  A page after the NUL
  may be unmapped, or served by userfaultfd or FUSE and never come back: not
  reading it matters.  No NUL within ``limit`` bytes is ENAMETOOLONG.
* User addresses are below 2**64 and never 0 here (NULL is EFAULT for every
  call we serve); the kernel refuses kernel addresses itself.
* These run once or more per request: each thread keeps one page-sized
  buffer and one pair of ``struct iovec`` for its transfers.

The fd-based readers of ``/proc/PID/mem`` (:func:`read_memory`,
:func:`read_c_string`) remain for the code that still holds such an fd.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
from typing import Final

from . import _ctypeslib

__all__ = [
    "PATH_MAX", "iovec", "read_task_memory", "read_task_c_string", "read_task_memory_prefix",
    "write_task_memory",
    "read_memory", "read_c_string"
]

PATH_MAX: Final = 4096
_PAGE: Final = mmap.PAGESIZE
_ADDRESS_END: Final = 1 << 64

_readv = _ctypeslib.function("process_vm_readv")
_writev = _ctypeslib.function("process_vm_writev")


class iovec(ctypes.Structure):
    """struct iovec {
        void  *iov_base;
        size_t iov_len;
    };"""

    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _efault(what: str) -> OSError:
    return OSError(errno.EFAULT, f"{what}: {os.strerror(errno.EFAULT)}")


class _Transfer:
    """One thread's buffer and iovec pair (``local`` points into ``buffer``)."""

    __slots__ = ("buffer", "address", "local", "remote", "local_p", "remote_p")

    def __init__(self, size: int) -> None:
        self.buffer = ctypes.create_string_buffer(size)
        self.address = ctypes.addressof(self.buffer)
        self.local = iovec(self.address, 0)
        self.remote = iovec(None, 0)
        self.local_p = ctypes.addressof(self.local)
        self.remote_p = ctypes.addressof(self.remote)

    def read(self, tid: int, address: int, size: int) -> int:
        """Bytes copied from ``address`` into the buffer (short at a bad page)."""
        self.local.iov_len = size
        self.remote.iov_base = address
        self.remote.iov_len = size
        return _readv(tid, self.local_p, 1, self.remote_p, 1, 0)

    def write(self, tid: int, address: int, size: int) -> int:
        """Bytes copied from the buffer to ``address`` (short at a bad page)."""
        self.local.iov_len = size
        self.remote.iov_base = address
        self.remote.iov_len = size
        return _writev(tid, self.local_p, 1, self.remote_p, 1, 0)


class _PerThread(threading.local):
    def __init__(self) -> None:
        # One page and a byte: room for a NUL after a whole page read.
        self.transfer = _Transfer(_PAGE + 1)


_per_thread = _PerThread()


def _transfer_for(size: int) -> _Transfer:
    return _per_thread.transfer if size <= _PAGE else _Transfer(size)


def read_task_memory(tid: int, address: int, size: int) -> bytes:
    """Exactly ``size`` bytes at ``address`` in task ``tid``; EFAULT if any is unreadable."""
    if size < 0:
        raise ValueError(f"negative size {size}")
    if address <= 0 or address + size > _ADDRESS_END:
        raise _efault("read_task_memory")
    if size == 0:
        return b""
    transfer = _transfer_for(size)
    if transfer.read(tid, address, size) != size:
        raise _efault("read_task_memory")  # short: a page it needed could not be read
    return ctypes.string_at(transfer.address, size)


def read_task_memory_prefix(tid: int, address: int, limit: int) -> bytes:
    """As much of ``limit`` bytes at ``address`` as can be read (a short read stops
    at the first unreadable page), as copy_mount_options() reads a mount's data
    page; EFAULT only when not even the first byte can be read."""
    if address <= 0 or address >= _ADDRESS_END:
        raise _efault("read_task_memory_prefix")
    limit = min(limit, _ADDRESS_END - address)
    transfer = _transfer_for(limit)
    try:
        done = transfer.read(tid, address, limit)
    except OSError as err:
        if err.errno != errno.EFAULT:
            raise
        done = 0
    if done <= 0:
        raise _efault("read_task_memory_prefix")
    return ctypes.string_at(transfer.address, done)


def read_task_c_string(tid: int, address: int, limit: int = PATH_MAX) -> bytes:
    """A NUL-terminated string of at most ``limit`` bytes, NUL included, from task ``tid``.

    Read page by page, as strncpy_from_user does: a string that ends just
    before an unreadable page is read correctly, one that runs into it is
    EFAULT, one with no NUL within ``limit`` bytes is ENAMETOOLONG.
    """
    if address <= 0 or address >= _ADDRESS_END:
        raise _efault("read_task_c_string")
    transfer = _per_thread.transfer
    buffer = transfer.buffer
    out = b""
    position, end = address, address + limit
    while position < end:
        if position >= _ADDRESS_END:
            raise _efault("read_task_c_string")
        # Never past the page: pages after the NUL are not the string's.
        chunk = min(_PAGE - position % _PAGE, end - position)
        done = transfer.read(tid, position, chunk)
        buffer[done] = b"\0"  # a sentinel: string_at stops at the first NUL
        piece = ctypes.string_at(transfer.address)
        if len(piece) < done:
            return out + piece
        if done < chunk:
            raise _efault("read_task_c_string")
        out += piece
        position += done
    raise OSError(errno.ENAMETOOLONG, f"read_task_c_string: {os.strerror(errno.ENAMETOOLONG)}")


def write_task_memory(tid: int, address: int, data: bytes) -> None:
    """Write all of ``data`` at ``address`` in task ``tid``; EFAULT if any page is not writable.

    A short write has changed the bytes before the bad page, as a faulting
    copy_to_user does: the caller's syscall fails with EFAULT either way.
    """
    size = len(data)
    if address <= 0 or address + size > _ADDRESS_END:
        raise _efault("write_task_memory")
    if size == 0:
        return
    transfer = _transfer_for(size)
    ctypes.memmove(transfer.address, data, size)
    if transfer.write(tid, address, size) != size:
        raise _efault("write_task_memory")


# --- through an open /proc/PID/mem (FOLL_FORCE: page protections not honoured) -------------


def read_memory(mem_fd: int, address: int, size: int) -> bytes:
    """Read exactly ``size`` bytes at ``address``; EFAULT if any of it is unmapped."""
    if address <= 0 or address + size > _ADDRESS_END:
        raise OSError(errno.EFAULT, "bad address")
    try:
        data = os.pread(mem_fd, size, address)
    except OverflowError:  # above 2**63: never a user address
        raise OSError(errno.EFAULT, "bad address") from None
    except OSError as err:
        if err.errno in (errno.EIO, errno.EFAULT):
            raise OSError(errno.EFAULT, "bad address") from err
        raise
    if len(data) != size:
        raise OSError(errno.EFAULT, "bad address")
    return data


def read_c_string(mem_fd: int, address: int, limit: int = PATH_MAX) -> bytes:
    """Read a NUL-terminated string of at most ``limit`` bytes including the NUL.

    Reads page by page, as the kernel's strncpy_from_user does, so a string
    that ends just before an unmapped page is read correctly.  A string with no
    NUL within ``limit`` bytes is ENAMETOOLONG, like getname() says.  A read
    that hits an unmapped page fails with EIO, reported as EFAULT; a PROT_NONE
    page reads fine here (FOLL_FORCE), unlike in the kernel's own copy.
    """
    if address <= 0:
        raise OSError(errno.EFAULT, "bad address")
    out = b""
    while len(out) < limit:
        chunk = min(_PAGE - (address + len(out)) % _PAGE, limit - len(out))
        try:
            data = os.pread(mem_fd, chunk, address + len(out))
        except OverflowError:
            raise OSError(errno.EFAULT, "bad address") from None
        except OSError as err:
            if err.errno in (errno.EIO, errno.EFAULT):
                raise OSError(errno.EFAULT, "bad address") from err
            raise
        if not data:
            raise OSError(errno.EFAULT, "bad address")
        nul = data.find(b"\0")
        if nul >= 0:
            return out + data[:nul]
        out += data
    raise OSError(errno.ENAMETOOLONG, "path too long")
