"""Seccomp user notification: the kernel's structs and the listener's ioctls.

Kernel facts that shaped this module:

* pyseccomp can only receive and respond on a listener it created itself; the
  listener we hold comes from LXC over SCM_RIGHTS, so the ioctls on it (RECV,
  SEND, ID_VALID, ADDFD, SET_FLAGS) are issued here.  Nothing here needs
  libseccomp: decoding LXC's datagram must work without it.
* The struct sizes are the kernel's to decide: ``seccomp(SECCOMP_GET_NOTIF_SIZES)``
  reports them, LXC sends the ones it was built with, and a mismatch with our
  mirrors below is refused at start-up rather than read wrongly.
* RECV needs a zeroed ``seccomp_notif`` (the kernel returns EINVAL otherwise);
  ID_VALID answers ENOENT once the caller died, was signalled out of its
  syscall, or was answered.  An id is never reused for another caller: it is
  the check that makes a read of the caller's memory or /proc trustworthy.
* SET_FLAGS takes its argument by value, every other ioctl here a pointer;
  ADDFD returns the fd number the caller got, and with
  ``SECCOMP_ADDFD_FLAG_SEND`` that number is also the answer to its syscall.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from typing import Final

from . import _ctypeslib
from ._ctypeslib import IOC_READ, IOC_WRITE

__all__ = [
    "seccomp_data", "seccomp_notif", "seccomp_notif_resp", "seccomp_notif_addfd",
    "seccomp_notif_sizes", "SECCOMP_GET_NOTIF_SIZES", "SECCOMP_USER_NOTIF_FLAG_CONTINUE",
    "SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP", "SECCOMP_ADDFD_FLAG_SETFD", "SECCOMP_ADDFD_FLAG_SEND",
    "SECCOMP_IOCTL_NOTIF_RECV", "SECCOMP_IOCTL_NOTIF_SEND", "SECCOMP_IOCTL_NOTIF_ID_VALID",
    "SECCOMP_IOCTL_NOTIF_ADDFD", "SECCOMP_IOCTL_NOTIF_SET_FLAGS", "NotifSizes", "notif_sizes",
    "check_struct_sizes", "notif_id_valid", "notif_recv", "notif_send", "notif_addfd",
    "notif_set_flags", "is_listener"
]


class seccomp_data(ctypes.Structure):
    """struct seccomp_data {
        int   nr;
        __u32 arch;
        __u64 instruction_pointer;
        __u64 args[6];
    };"""

    _fields_ = [
        ("nr", ctypes.c_int32),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("args", ctypes.c_uint64 * 6),
    ]


class seccomp_notif(ctypes.Structure):
    """struct seccomp_notif {
        __u64 id;
        __u32 pid;
        __u32 flags;
        struct seccomp_data data;
    };"""

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("pid", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("data", seccomp_data),
    ]


class seccomp_notif_resp(ctypes.Structure):
    """struct seccomp_notif_resp {
        __u64 id;
        __s64 val;
        __s32 error;
        __u32 flags;
    };"""

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("val", ctypes.c_int64),
        ("error", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
    ]


class seccomp_notif_addfd(ctypes.Structure):
    """struct seccomp_notif_addfd {
        __u64 id;
        __u32 flags;
        __u32 srcfd;
        __u32 newfd;
        __u32 newfd_flags;
    };"""

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("srcfd", ctypes.c_uint32),
        ("newfd", ctypes.c_uint32),
        ("newfd_flags", ctypes.c_uint32),
    ]


class seccomp_notif_sizes(ctypes.Structure):
    """struct seccomp_notif_sizes {
        __u16 seccomp_notif;
        __u16 seccomp_notif_resp;
        __u16 seccomp_data;
    };"""

    _fields_ = [
        ("seccomp_notif", ctypes.c_uint16),
        ("seccomp_notif_resp", ctypes.c_uint16),
        ("seccomp_data", ctypes.c_uint16),
    ]


SECCOMP_GET_NOTIF_SIZES: Final = 3
SECCOMP_USER_NOTIF_FLAG_CONTINUE: Final = 1
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: Final = 1
SECCOMP_ADDFD_FLAG_SETFD: Final = 1
SECCOMP_ADDFD_FLAG_SEND: Final = 2

_SECCOMP_IOC_MAGIC: Final = ord("!")
SECCOMP_IOCTL_NOTIF_RECV: Final = _ctypeslib.ioc(
    IOC_READ | IOC_WRITE, _SECCOMP_IOC_MAGIC, 0, ctypes.sizeof(seccomp_notif))
SECCOMP_IOCTL_NOTIF_SEND: Final = _ctypeslib.ioc(
    IOC_READ | IOC_WRITE, _SECCOMP_IOC_MAGIC, 1, ctypes.sizeof(seccomp_notif_resp))
SECCOMP_IOCTL_NOTIF_ID_VALID: Final = _ctypeslib.ioc(IOC_WRITE, _SECCOMP_IOC_MAGIC, 2, 8)
SECCOMP_IOCTL_NOTIF_ADDFD: Final = _ctypeslib.ioc(
    IOC_WRITE, _SECCOMP_IOC_MAGIC, 3, ctypes.sizeof(seccomp_notif_addfd))
SECCOMP_IOCTL_NOTIF_SET_FLAGS: Final = _ctypeslib.ioc(IOC_WRITE, _SECCOMP_IOC_MAGIC, 4, 8)

_seccomp = _ctypeslib.syscall("seccomp")
_recv = _ctypeslib.function("ioctl", "SECCOMP_IOCTL_NOTIF_RECV")
_send = _ctypeslib.function("ioctl", "SECCOMP_IOCTL_NOTIF_SEND")
_id_valid = _ctypeslib.function("ioctl", "SECCOMP_IOCTL_NOTIF_ID_VALID")
_addfd = _ctypeslib.function("ioctl", "SECCOMP_IOCTL_NOTIF_ADDFD")
_set_flags = _ctypeslib.function("ioctl_value", "SECCOMP_IOCTL_NOTIF_SET_FLAGS")


@dataclass(frozen=True)
class NotifSizes:
    seccomp_notif: int
    seccomp_notif_resp: int
    seccomp_data: int


def notif_sizes() -> NotifSizes:
    """The struct sizes this kernel uses (``seccomp(SECCOMP_GET_NOTIF_SIZES)``)."""
    sizes = seccomp_notif_sizes()
    _seccomp(SECCOMP_GET_NOTIF_SIZES, 0, ctypes.byref(sizes))
    return NotifSizes(sizes.seccomp_notif, sizes.seccomp_notif_resp, sizes.seccomp_data)


def check_struct_sizes(sizes: NotifSizes) -> None:
    """Refuse to run where our mirrors of the kernel's structs are the wrong size."""
    ours = NotifSizes(ctypes.sizeof(seccomp_notif), ctypes.sizeof(seccomp_notif_resp),
                      ctypes.sizeof(seccomp_data))
    if ours != sizes:
        raise RuntimeError(f"kernel seccomp struct sizes {sizes} differ from ours {ours}")


def notif_id_valid(listener_fd: int, notif_id: int) -> bool:
    """True while the task that raised ``notif_id`` is still waiting for our answer.

    The kernel answers ENOENT once the task died, was signalled out of the
    syscall, or the id was answered; anything else is a real error.
    """
    try:
        _id_valid(listener_fd, SECCOMP_IOCTL_NOTIF_ID_VALID,
                  ctypes.byref(ctypes.c_uint64(notif_id)))
    except OSError as err:
        if err.errno == errno.ENOENT:
            return False
        raise
    return True


def notif_recv(listener_fd: int, into: seccomp_notif | None = None) -> seccomp_notif:
    """Receive one notification from a listener we own.  ``into`` is a struct to
    reuse (a serving loop allocates none per request); it is zeroed first, as
    the kernel demands."""
    notif = into if into is not None else seccomp_notif()
    if into is not None:
        ctypes.memset(ctypes.byref(notif), 0, ctypes.sizeof(notif))
    _recv(listener_fd, SECCOMP_IOCTL_NOTIF_RECV, ctypes.byref(notif))
    return notif


def notif_send(listener_fd: int, resp: seccomp_notif_resp) -> None:
    """Answer one notification directly on a listener we own (never for LXC's)."""
    _send(listener_fd, SECCOMP_IOCTL_NOTIF_SEND, ctypes.byref(resp))


def notif_addfd(listener_fd: int, notif_id: int, srcfd: int, flags: int = 0, newfd: int = 0,
                newfd_flags: int = os.O_CLOEXEC) -> int:
    """Install ``srcfd`` into the waiting task; returns the fd number it got there."""
    req = seccomp_notif_addfd(notif_id, flags, srcfd, newfd, newfd_flags)
    return _addfd(listener_fd, SECCOMP_IOCTL_NOTIF_ADDFD, ctypes.byref(req))


def notif_set_flags(listener_fd: int, flags: int) -> None:
    """SET_FLAGS takes its argument by value, not through a pointer."""
    _set_flags(listener_fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, flags)


# What /proc/self/fd/N says of a listener: anon inodes carry no type of their
# own (fstat shows the one anon inode every such fd shares), only this name.
_LISTENER_LINK: Final = "anon_inode:seccomp notify"


def is_listener(fd: int, proc_root: str = "/proc") -> bool:
    """Whether ``fd`` (ours) is a seccomp listener, before any ioctl on it: an
    fd sent by another process could be anything, and an ioctl number means
    something else to another kind of file."""
    try:
        return os.readlink(f"{proc_root}/self/fd/{fd}") == _LISTENER_LINK
    except OSError:
        return False
