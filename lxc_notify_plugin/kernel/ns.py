"""Namespaces (setns, unshare, the nsfs ioctls) and per-task attributes (prctl).

Kernel facts that shaped this module:

* ``setns`` into a user namespace fails (EINVAL) in a multithreaded process:
  a supervisor with threads never joins one.  ``setns`` into a mount
  namespace needs the thread to own its fs state (root, cwd, umask), which
  threads share by default: ``unshare(CLONE_FS)`` in that thread first.
  Joining the host's mount namespace again resets root and cwd to its own.
* ``unshare(CLONE_NEWNS)`` copies the mount tree with its propagation: on a
  host whose ``/`` is shared, mounts made in the copy propagate back until
  the copy is made private (``mount_setattr(..., propagation=MS_PRIVATE)``).
* The nsfs ioctls walk the namespace tree: ``NS_GET_PARENT`` (pid and user
  namespaces) and ``NS_GET_USERNS`` (the owning user namespace) return a new
  close-on-exec fd, EPERM where the answer lies outside the caller's own
  namespace.  Comparing namespaces means comparing (st_dev, st_ino) of fds.
* ``prctl`` settings differ in scope: ``PR_SET_KEEPCAPS``, the securebits and
  ``PR_SET_PDEATHSIG`` belong to the calling thread (the death signal fires
  when the parent *thread* exits), ``PR_SET_DUMPABLE`` to the whole process;
  a process that is not dumpable has ``/proc/PID`` owned by root and cannot
  be ptrace-attached or read with ``process_vm_readv`` without
  CAP_SYS_PTRACE.  A change of euid, egid, fsuid or fsgid, or a loss of
  capabilities, resets both dumpable (to ``fs.suid_dumpable``) and the death
  signal.
"""

from __future__ import annotations

import ctypes
from typing import Final

from . import _ctypeslib
from ._ctypeslib import IOC_NONE

__all__ = [
    "CLONE_NEWTIME", "CLONE_VM", "CLONE_FS", "CLONE_FILES", "CLONE_SIGHAND", "CLONE_PIDFD",
    "CLONE_PTRACE", "CLONE_VFORK", "CLONE_PARENT", "CLONE_THREAD", "CLONE_NEWNS", "CLONE_SYSVSEM",
    "CLONE_SETTLS", "CLONE_PARENT_SETTID", "CLONE_CHILD_CLEARTID", "CLONE_UNTRACED",
    "CLONE_CHILD_SETTID", "CLONE_NEWCGROUP", "CLONE_NEWUTS", "CLONE_NEWIPC", "CLONE_NEWUSER",
    "CLONE_NEWPID", "CLONE_NEWNET", "CLONE_IO", "unshare", "setns", "NS_GET_USERNS",
    "NS_GET_PARENT", "NS_GET_NSTYPE", "NS_GET_OWNER_UID", "ns_get_userns", "ns_get_parent",
    "ns_get_nstype", "ns_get_owner_uid", "PR_SET_PDEATHSIG", "PR_GET_PDEATHSIG", "PR_GET_DUMPABLE",
    "PR_SET_DUMPABLE", "PR_GET_KEEPCAPS", "PR_SET_KEEPCAPS", "PR_CAPBSET_READ", "PR_CAPBSET_DROP",
    "PR_GET_SECUREBITS", "PR_SET_SECUREBITS", "PR_SET_NO_NEW_PRIVS", "PR_GET_NO_NEW_PRIVS",
    "PR_CAP_AMBIENT", "SECBIT_NOROOT", "SECBIT_NOROOT_LOCKED", "SECBIT_NO_SETUID_FIXUP",
    "SECBIT_NO_SETUID_FIXUP_LOCKED", "SECBIT_KEEP_CAPS", "SECBIT_KEEP_CAPS_LOCKED",
    "SECBIT_NO_CAP_AMBIENT_RAISE", "SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED", "prctl", "sched_getcpu",
    "set_pdeathsig",
    "get_pdeathsig", "set_dumpable", "get_dumpable", "set_keepcaps", "get_keepcaps",
    "set_securebits", "get_securebits", "PR_SET_TIMERSLACK", "PR_CAP_AMBIENT_RAISE",
    "IOPRIO_WHO_PROCESS", "ioprio_get", "ioprio_set", "personality", "raise_ambient",
    "join_new_session_keyring"
]

CLONE_NEWTIME: Final = 0x00000080
CLONE_VM: Final = 0x00000100
CLONE_FS: Final = 0x00000200
CLONE_FILES: Final = 0x00000400
CLONE_SIGHAND: Final = 0x00000800
CLONE_PIDFD: Final = 0x00001000
CLONE_PTRACE: Final = 0x00002000
CLONE_VFORK: Final = 0x00004000
CLONE_PARENT: Final = 0x00008000
CLONE_THREAD: Final = 0x00010000
CLONE_NEWNS: Final = 0x00020000
CLONE_SYSVSEM: Final = 0x00040000
CLONE_SETTLS: Final = 0x00080000
CLONE_PARENT_SETTID: Final = 0x00100000
CLONE_CHILD_CLEARTID: Final = 0x00200000
CLONE_UNTRACED: Final = 0x00800000
CLONE_CHILD_SETTID: Final = 0x01000000
CLONE_NEWCGROUP: Final = 0x02000000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000
CLONE_IO: Final = 0x80000000

_setns = _ctypeslib.syscall("setns")
_unshare = _ctypeslib.syscall("unshare")


def unshare(flags: int) -> None:
    _unshare(flags)


def setns(fd: int, nstype: int) -> None:
    """Join the namespace of ``fd`` (nstype 0 accepts any type; a pidfd takes several)."""
    _setns(fd, nstype)


# --- nsfs ioctls (include/uapi/linux/nsfs.h) -------------------------------------------------

_NSIO: Final = 0xB7
NS_GET_USERNS: Final = _ctypeslib.ioc(IOC_NONE, _NSIO, 0x1, 0)
NS_GET_PARENT: Final = _ctypeslib.ioc(IOC_NONE, _NSIO, 0x2, 0)
NS_GET_NSTYPE: Final = _ctypeslib.ioc(IOC_NONE, _NSIO, 0x3, 0)
NS_GET_OWNER_UID: Final = _ctypeslib.ioc(IOC_NONE, _NSIO, 0x4, 0)

_get_userns = _ctypeslib.function("ioctl", "NS_GET_USERNS")
_get_parent = _ctypeslib.function("ioctl", "NS_GET_PARENT")
_get_nstype = _ctypeslib.function("ioctl", "NS_GET_NSTYPE")
_get_owner_uid = _ctypeslib.function("ioctl", "NS_GET_OWNER_UID")


def ns_get_userns(ns_fd: int) -> int:
    """A new fd of the user namespace that owns the namespace ``ns_fd``."""
    return _get_userns(ns_fd, NS_GET_USERNS, None)


def ns_get_parent(ns_fd: int) -> int:
    """A new fd of the parent of a pid or user namespace; EPERM above our own."""
    return _get_parent(ns_fd, NS_GET_PARENT, None)


def ns_get_nstype(ns_fd: int) -> int:
    """The ``CLONE_NEW*`` value of the namespace ``ns_fd``."""
    return _get_nstype(ns_fd, NS_GET_NSTYPE, None)


def ns_get_owner_uid(userns_fd: int) -> int:
    """The uid (in our user namespace) of the creator of a user namespace."""
    uid = ctypes.c_uint32()
    _get_owner_uid(userns_fd, NS_GET_OWNER_UID, ctypes.byref(uid))
    return uid.value


# --- prctl ---------------------------------------------------------------------------------

PR_SET_PDEATHSIG: Final = 1
PR_GET_PDEATHSIG: Final = 2
PR_GET_DUMPABLE: Final = 3
PR_SET_DUMPABLE: Final = 4
PR_GET_KEEPCAPS: Final = 7
PR_SET_KEEPCAPS: Final = 8
PR_CAPBSET_READ: Final = 23
PR_CAPBSET_DROP: Final = 24
PR_GET_SECUREBITS: Final = 27
PR_SET_SECUREBITS: Final = 28
PR_SET_NO_NEW_PRIVS: Final = 38
PR_GET_NO_NEW_PRIVS: Final = 39
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_RAISE: Final = 2
PR_SET_TIMERSLACK: Final = 29
IOPRIO_WHO_PROCESS: Final = 1  # ioprio_get/set's "which": one thread, by tid

SECBIT_NOROOT: Final = 1 << 0
SECBIT_NOROOT_LOCKED: Final = 1 << 1
SECBIT_NO_SETUID_FIXUP: Final = 1 << 2
SECBIT_NO_SETUID_FIXUP_LOCKED: Final = 1 << 3
SECBIT_KEEP_CAPS: Final = 1 << 4
SECBIT_KEEP_CAPS_LOCKED: Final = 1 << 5
SECBIT_NO_CAP_AMBIENT_RAISE: Final = 1 << 6
SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: Final = 1 << 7

_sched_getcpu = _ctypeslib.function("sched_getcpu")


def sched_getcpu() -> int:
    """The CPU the calling thread runs on now (it may move at any time)."""
    return _sched_getcpu()


_prctl = _ctypeslib.function("prctl")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """``prctl(2)`` itself: its result (0 for most setters)."""
    return _prctl(option, arg2, arg3, arg4, arg5)


def set_pdeathsig(signal: int) -> None:
    """Signal the calling thread gets when its parent thread exits (0: none)."""
    prctl(PR_SET_PDEATHSIG, signal)


def get_pdeathsig() -> int:
    value = ctypes.c_int()
    prctl(PR_GET_PDEATHSIG, ctypes.addressof(value))
    return value.value


def set_dumpable(dumpable: bool) -> None:
    prctl(PR_SET_DUMPABLE, int(dumpable))


def get_dumpable() -> int:
    """0, 1 (SUID_DUMP_USER) or 2 (SUID_DUMP_ROOT, after a setuid exec)."""
    return prctl(PR_GET_DUMPABLE)


def set_keepcaps(keep: bool) -> None:
    """Keep the permitted set when all uids leave 0 (the thread's SECBIT_KEEP_CAPS)."""
    prctl(PR_SET_KEEPCAPS, int(keep))


def get_keepcaps() -> bool:
    return bool(prctl(PR_GET_KEEPCAPS))


def raise_ambient(cap: int) -> None:
    """Add ``cap`` to the calling thread's ambient set (it must be in its
    permitted and inheritable sets, and SECBIT_NO_CAP_AMBIENT_RAISE unset)."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)


_ioprio_get = _ctypeslib.syscall("ioprio_get")
_ioprio_set = _ctypeslib.syscall("ioprio_set")
_personality = _ctypeslib.function("personality")


def ioprio_get(tid: int) -> int:
    """The I/O priority of thread ``tid`` (class << 13 | data), as ionice shows it."""
    return _ioprio_get(IOPRIO_WHO_PROCESS, tid)


def ioprio_set(tid: int, ioprio: int) -> None:
    """Set thread ``tid``'s I/O priority (0: the calling thread)."""
    _ioprio_set(IOPRIO_WHO_PROCESS, tid, ioprio)


_keyctl = _ctypeslib.syscall("keyctl")
_KEYCTL_JOIN_SESSION_KEYRING: Final = 1


def join_new_session_keyring() -> int:
    """Give the calling thread a new anonymous session keyring (owned by its
    current ids), instead of the one it inherited; its serial."""
    return _keyctl(_KEYCTL_JOIN_SESSION_KEYRING, 0, 0, 0, 0)


def personality(persona: int) -> int:
    """Set the calling thread's execution domain; the previous one."""
    return _personality(persona)


def set_securebits(bits: int) -> None:
    """Needs CAP_SETPCAP; a bit once locked cannot change again."""
    prctl(PR_SET_SECUREBITS, bits)


def get_securebits() -> int:
    return prctl(PR_GET_SECUREBITS)
