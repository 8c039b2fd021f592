"""The C boundary as data: every libc function and raw syscall we call, with its
C signature and its error checker, applied by one loader.

The public modules of this package never set ``argtypes`` or test a return
value themselves: they ask :func:`function` or :func:`syscall` for a callable
built from the tables below, and get ``OSError`` when the call fails.

Facts that shaped it:

* ``syscall(2)`` is variadic, ``long syscall(long number, ...)``.  Called
  through ctypes without ``argtypes``, a Python int travels as a C ``int``:
  32 bits, so a size_t, an unsigned long flag word or an address above 4 GiB
  is truncated or refused.  So every raw syscall gets its *own* function
  pointer object (``CDLL.__getitem__`` makes a fresh one on each call, unlike
  attribute access, which caches one shared object) typed with the kernel's
  own prototype (its ``SYSCALL_DEFINE``): the number as ``long``, then each
  argument as the kernel declares it.  On the hosts we run on (x86_64,
  aarch64: see ``arch.HOST_ARCHES``) every argument fills one 64-bit
  register; 32-bit hosts split 64-bit arguments in arch-specific ways, and we
  do not run there.
* Syscall numbers differ per architecture and none is written here: the
  native number is asked of libseccomp (``arch.native_syscall_number``) the
  first time a syscall is made.  Importing the package needs no libseccomp,
  and a name libseccomp does not know is an error at first use, never a guess.
* libc functions and ``syscall()`` alike fail with ``-1`` and ``errno`` (glibc
  turns the kernel's ``-errno`` into that).  libc is loaded with
  ``use_errno=True``: ctypes saves errno, per thread, right after the call,
  before other Python code can overwrite it, and ``ctypes.get_errno()`` reads
  that copy.  One checker turns it into ``OSError(errno, "name: strerror")``.
* ctypes releases the GIL around every call into a CDLL, so a thread blocked
  in an ioctl (``SECCOMP_IOCTL_NOTIF_RECV``) does not stop the others.
* ioctl numbers are encoded as ``include/uapi/asm-generic/ioctl.h`` does,
  which both supported arches use (powerpc, mips and sparc differ).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable, Mapping
from ctypes import c_char_p, c_int, c_long, c_size_t, c_ssize_t, c_uint, c_uint32, c_ulong, c_void_p
from dataclasses import dataclass
from typing import Any, Final, cast

from . import arch

#: ``check(result, what)``: returns the result, or raises for a failed call.
ErrorChecker = Callable[[int, str], int]


def errno_on_minus_one(result: int, what: str) -> int:
    """The libc convention: ``-1`` means failure, and errno says which."""
    if result != -1:
        return result
    err = ctypes.get_errno()
    if err == 0:  # not a convention we know: say so rather than invent an errno
        raise RuntimeError(f"{what} returned -1 without setting errno")
    raise OSError(err, f"{what}: {os.strerror(err)}")


@dataclass(frozen=True, slots=True)
class Signature:
    """One C function: what it returns, what it takes, how it fails."""

    restype: Any
    argtypes: tuple[Any, ...]
    errcheck: ErrorChecker | None = errno_on_minus_one
    symbol: str = ""  # the libc symbol, where it is not the table's key


# libc functions, by the name we load them under.  Struct pointers are
# ``c_void_p`` (pass ``ctypes.byref(struct)``): the structs belong to the
# modules that use them, and this table depends on none of those.
LIBC: Final[Mapping[str, Signature]] = {
    # int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf);
    "statx": Signature(c_int, (c_int, c_char_p, c_int, c_uint, c_void_p)),
    # int fstatfs(int fd, struct statfs *buf);
    "fstatfs": Signature(c_int, (c_int, c_void_p)),
    # int setfsuid(uid_t fsuid);  returns the previous fsuid; never -1/errno
    "setfsuid": Signature(c_int, (c_uint32,), None),
    # int setfsgid(gid_t fsgid);  likewise
    "setfsgid": Signature(c_int, (c_uint32,), None),
    # ssize_t process_vm_readv(pid_t pid, const struct iovec *local_iov, unsigned long liovcnt,
    #                          const struct iovec *remote_iov, unsigned long riovcnt,
    #                          unsigned long flags);
    "process_vm_readv": Signature(c_ssize_t,
                                  (c_int, c_void_p, c_ulong, c_void_p, c_ulong, c_ulong)),
    # ssize_t process_vm_writev(...);  the same arguments
    "process_vm_writev": Signature(c_ssize_t,
                                   (c_int, c_void_p, c_ulong, c_void_p, c_ulong, c_ulong)),
    # int umount2(const char *target, int flags);
    "umount2": Signature(c_int, (c_char_p, c_int)),
    # int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4,
    #           unsigned long arg5);
    "prctl": Signature(c_int, (c_int, c_ulong, c_ulong, c_ulong, c_ulong)),
    # int sysinfo(struct sysinfo *info);
    "sysinfo": Signature(c_int, (c_void_p,)),
    # int ioctl(int fd, unsigned long request, void *argp);
    "ioctl": Signature(c_int, (c_int, c_ulong, c_void_p)),
    # int sched_getcpu(void);  the CPU the calling thread runs on now (rseq/vDSO)
    "sched_getcpu": Signature(c_int, ()),
    # int personality(unsigned long persona);  returns the previous persona
    "personality": Signature(c_int, (c_ulong,)),
    # int ioctl(int fd, unsigned long request, unsigned long arg);  argument by value
    "ioctl_value": Signature(c_int, (c_int, c_ulong, c_ulong), symbol="ioctl"),
}

# Raw syscalls: glibc has no wrapper (openat2, seccomp; the mount API before
# 2.36), or its wrapper is wrong for us (setgroups changes every thread).
# Argument types as in the kernel's SYSCALL_DEFINE, the number excluded.
SYSCALLS: Final[Mapping[str, Signature]] = {
    # openat2(int dfd, const char __user *filename, struct open_how __user *how, size_t usize)
    "openat2": Signature(c_long, (c_int, c_char_p, c_void_p, c_size_t)),
    # open_tree(int dfd, const char __user *filename, unsigned flags)
    "open_tree": Signature(c_long, (c_int, c_char_p, c_uint)),
    # move_mount(int from_dfd, const char __user *from_pathname, int to_dfd,
    #            const char __user *to_pathname, unsigned int flags)
    "move_mount": Signature(c_long, (c_int, c_char_p, c_int, c_char_p, c_uint)),
    # fsopen(const char __user *_fs_name, unsigned int flags)
    "fsopen": Signature(c_long, (c_char_p, c_uint)),
    # fsconfig(int fd, unsigned int cmd, const char __user *_key, const void __user *_value,
    #          int aux)
    "fsconfig": Signature(c_long, (c_int, c_uint, c_char_p, c_void_p, c_int)),
    # fsmount(int fs_fd, unsigned int flags, unsigned int attr_flags)
    "fsmount": Signature(c_long, (c_int, c_uint, c_uint)),
    # fspick(int dfd, const char __user *path, unsigned int flags)
    "fspick": Signature(c_long, (c_int, c_char_p, c_uint)),
    # mount_setattr(int dfd, const char __user *path, unsigned int flags,
    #               struct mount_attr __user *uattr, size_t usize)
    "mount_setattr": Signature(c_long, (c_int, c_char_p, c_uint, c_void_p, c_size_t)),
    # setns(int fd, int flags)
    "setns": Signature(c_long, (c_int, c_int)),
    # pivot_root(const char __user *new_root, const char __user *put_old)
    "pivot_root": Signature(c_long, (c_char_p, c_char_p)),
    # unshare(unsigned long unshare_flags)
    "unshare": Signature(c_long, (c_ulong,)),
    # capget(cap_user_header_t header, cap_user_data_t dataptr)
    "capget": Signature(c_long, (c_void_p, c_void_p)),
    # capset(cap_user_header_t header, const cap_user_data_t data)
    "capset": Signature(c_long, (c_void_p, c_void_p)),
    # setgroups(int gidsetsize, gid_t __user *grouplist)
    "setgroups": Signature(c_long, (c_int, c_void_p)),
    # seccomp(unsigned int op, unsigned int flags, void __user *uargs)
    "seccomp": Signature(c_long, (c_uint, c_uint, c_void_p)),
    # keyctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4,
    #        unsigned long arg5)
    "keyctl": Signature(c_long, (c_int, c_ulong, c_ulong, c_ulong, c_ulong)),
    # ioprio_get(int which, int who)
    "ioprio_get": Signature(c_long, (c_int, c_int)),
    # ioprio_set(int which, int who, int ioprio)
    "ioprio_set": Signature(c_long, (c_int, c_int, c_int)),
}

_libc: Final = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _bind(pointer: Any, signature: Signature, argtypes: tuple[Any, ...], what: str) -> None:
    """The one loader: apply a table entry to a fresh function pointer."""
    pointer.restype = signature.restype
    pointer.argtypes = argtypes
    check = signature.errcheck
    if check is not None:
        def errcheck(result: int, _func: object, _args: tuple[object, ...]) -> int:
            return check(result, what)
        pointer.errcheck = errcheck


def function(name: str, what: str | None = None) -> Callable[..., int]:
    """A libc function from :data:`LIBC`, as its own function pointer object.

    ``what`` names the call in error messages (an ioctl's request, say).
    """
    signature = LIBC[name]
    pointer = _libc[signature.symbol or name]
    _bind(pointer, signature, signature.argtypes, what or name)
    return cast("Callable[..., int]", pointer)


class RawSyscall:
    """``syscall(NR_name, ...)`` with typed arguments; the number is found on first use."""

    __slots__ = ("name", "_pointer", "_nr")

    def __init__(self, name: str, pointer: Any) -> None:
        self.name = name
        self._pointer = pointer
        self._nr = -1

    @property
    def nr(self) -> int:
        """The native number (a benign race: two threads find the same one)."""
        if self._nr < 0:
            self._nr = arch.native_syscall_number(self.name)
        return self._nr

    def __call__(self, *args: Any) -> int:
        nr = self._nr
        if nr < 0:
            nr = self.nr
        return cast(int, self._pointer(nr, *args))

    def __repr__(self) -> str:
        return f"<RawSyscall {self.name} {self._pointer.argtypes}>"


def syscall(name: str, signature: Signature | None = None) -> RawSyscall:
    """A raw syscall from :data:`SYSCALLS`, with a function pointer of its own.

    A module of one syscall family's bindings (``kernel/bpf.py``) gives the
    signatures of its own syscalls here, as data in its own table: adding a
    family's bindings edits no table shared with the others.  A name in
    :data:`SYSCALLS` keeps the signature written there."""
    if name in SYSCALLS:
        if signature is not None and signature != SYSCALLS[name]:
            raise ValueError(f"{name}: a signature other than SYSCALLS'")
        signature = SYSCALLS[name]
    elif signature is None:
        raise KeyError(f"{name}: no signature in SYSCALLS and none given")
    pointer = _libc["syscall"]
    _bind(pointer, signature, (c_long, *signature.argtypes), name)
    return RawSyscall(name, pointer)


# --- ioctl numbers (include/uapi/asm-generic/ioctl.h) -------------------------------------

IOC_NONE: Final = 0
IOC_WRITE: Final = 1
IOC_READ: Final = 2


def ioc(direction: int, kind: int, nr: int, size: int) -> int:
    """``_IOC(dir, type, nr, size)``: 2 bits direction, 14 size, 8 type, 8 number."""
    return (direction << 30) | (size << 16) | (kind << 8) | nr
