"""Credentials of the calling thread: capabilities, fsuid/fsgid, groups.

Kernel facts that shaped this module:

* Credentials on Linux are per *thread* in the kernel; POSIX wants them per
  process, so glibc broadcasts ``setgroups``/``setuid``/``setresuid`` to every
  thread with a signal.  A supervisor thread acting as one caller must not
  change its siblings: ``setgroups`` is issued as a raw syscall.
  ``setfsuid``/``setfsgid`` are per-thread in glibc already, and so are
  ``capget``/``capset`` on the thread itself (tid 0).
* ``setfsuid`` returns the previous fsuid, never an error: success is checked
  by setting an impossible id (-1, which fails) and reading the answer.  The
  C int it returns is negative for ids >= 2**31; compare as u32.
* Changing the fsuid away from 0 clears the filesystem capabilities
  (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID,
  CAP_MKNOD...) from the effective set; going back to 0 raises them again
  only as far as the permitted set allows.  So capabilities are set after
  the fs ids, never before.
* Capability version 3 uses two 32-bit words per set (64 capabilities).
  Every process on these machines lacks CAP_SYS_RESOURCE (bounding set bit
  24 clear): copying a whole set onto ourselves fails with EPERM; raise only
  the capabilities needed.
"""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass
from typing import Final

from . import _ctypeslib

__all__ = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    "CAP_LAST_CAP", "user_cap_header_struct", "user_cap_data_struct", "ThreadCaps", "capget",
    "capset", "setfsuid", "setfsgid", "setgroups_thread"
]

CAP_CHOWN: Final = 0
CAP_DAC_OVERRIDE: Final = 1
CAP_DAC_READ_SEARCH: Final = 2
CAP_FOWNER: Final = 3
CAP_FSETID: Final = 4
CAP_KILL: Final = 5
CAP_SETGID: Final = 6
CAP_SETUID: Final = 7
CAP_SETPCAP: Final = 8
CAP_LINUX_IMMUTABLE: Final = 9
CAP_NET_BIND_SERVICE: Final = 10
CAP_NET_BROADCAST: Final = 11
CAP_NET_ADMIN: Final = 12
CAP_NET_RAW: Final = 13
CAP_IPC_LOCK: Final = 14
CAP_IPC_OWNER: Final = 15
CAP_SYS_MODULE: Final = 16
CAP_SYS_RAWIO: Final = 17
CAP_SYS_CHROOT: Final = 18
CAP_SYS_PTRACE: Final = 19
CAP_SYS_PACCT: Final = 20
CAP_SYS_ADMIN: Final = 21
CAP_SYS_BOOT: Final = 22
CAP_SYS_NICE: Final = 23
CAP_SYS_RESOURCE: Final = 24
CAP_SYS_TIME: Final = 25
CAP_SYS_TTY_CONFIG: Final = 26
CAP_MKNOD: Final = 27
CAP_LEASE: Final = 28
CAP_AUDIT_WRITE: Final = 29
CAP_AUDIT_CONTROL: Final = 30
CAP_SETFCAP: Final = 31
CAP_MAC_OVERRIDE: Final = 32
CAP_MAC_ADMIN: Final = 33
CAP_SYSLOG: Final = 34
CAP_WAKE_ALARM: Final = 35
CAP_BLOCK_SUSPEND: Final = 36
CAP_AUDIT_READ: Final = 37
CAP_PERFMON: Final = 38
CAP_BPF: Final = 39
CAP_CHECKPOINT_RESTORE: Final = 40
CAP_LAST_CAP: Final = 40

_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522


class user_cap_header_struct(ctypes.Structure):
    """typedef struct __user_cap_header_struct {
        __u32 version;
        int pid;
    } *cap_user_header_t;"""

    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class user_cap_data_struct(ctypes.Structure):
    """typedef struct __user_cap_data_struct {
        __u32 effective;
        __u32 permitted;
        __u32 inheritable;
    } *cap_user_data_t;            (version 3: an array of two)"""

    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_capget = _ctypeslib.syscall("capget")
_capset = _ctypeslib.syscall("capset")
_setgroups = _ctypeslib.syscall("setgroups")
_setfsuid = _ctypeslib.function("setfsuid")
_setfsgid = _ctypeslib.function("setfsgid")


@dataclass(frozen=True)
class ThreadCaps:
    effective: int
    permitted: int
    inheritable: int


def capget() -> ThreadCaps:
    """This thread's capability sets (tid 0 means the calling thread)."""
    header = user_cap_header_struct(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (user_cap_data_struct * 2)()
    _capget(ctypes.byref(header), data)
    return ThreadCaps(
        data[0].effective | data[1].effective << 32,
        data[0].permitted | data[1].permitted << 32,
        data[0].inheritable | data[1].inheritable << 32,
    )


_capset_args: dict[ThreadCaps,
                   tuple[user_cap_header_struct, ctypes.Array[user_cap_data_struct]]] = {}


def capset(caps: ThreadCaps) -> None:
    """Set this thread's capability sets; only the calling thread changes.

    The C arguments are built once per distinct set: a supervisor thread
    switches between a handful of sets on every request.
    """
    args = _capset_args.get(caps)
    if args is None:
        data = (user_cap_data_struct * 2)()
        for i, shift in enumerate((0, 32)):
            data[i].effective = (caps.effective >> shift) & 0xFFFFFFFF
            data[i].permitted = (caps.permitted >> shift) & 0xFFFFFFFF
            data[i].inheritable = (caps.inheritable >> shift) & 0xFFFFFFFF
        args = (user_cap_header_struct(_LINUX_CAPABILITY_VERSION_3, 0), data)
        if len(_capset_args) < 64:
            _capset_args[caps] = args
    # The kernel may rewrite the header's version field; it is reset each time.
    # The cached structs are read, never written, by the kernel otherwise, so
    # threads may share them.
    args[0].version = _LINUX_CAPABILITY_VERSION_3
    _capset(ctypes.byref(args[0]), args[1])


def setfsuid(uid: int, verify: bool = True) -> None:
    """Set this thread's fsuid.  The call returns the old value and never fails
    visibly, so success is checked by reading the value back (skip that only
    where the thread holds CAP_SETUID for certain)."""
    _setfsuid(uid)
    if verify and _setfsuid(0xFFFFFFFF) & 0xFFFFFFFF != uid:
        raise OSError(errno.EPERM, f"setfsuid({uid}) refused")


def setfsgid(gid: int, verify: bool = True) -> None:
    """Set this thread's fsgid; checked like :func:`setfsuid`."""
    _setfsgid(gid)
    if verify and _setfsgid(0xFFFFFFFF) & 0xFFFFFFFF != gid:
        raise OSError(errno.EPERM, f"setfsgid({gid}) refused")


def setgroups_thread(groups: tuple[int, ...]) -> None:
    """setgroups for the calling thread only (glibc's wrapper changes every thread)."""
    array = (ctypes.c_uint32 * max(len(groups), 1))(*groups)
    _setgroups(len(groups), array)
