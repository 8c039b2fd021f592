"""The kernel boundary: seccomp notify structs and ioctls, raw syscalls, errno.

Everything that talks to the kernel without a Python or pyseccomp wrapper lives
here and nowhere else; the rest of the package calls these functions with plain
ints and bytes and gets ``OSError`` (with the kernel's errno) when they fail.

Kernel facts that shaped this module:

* pyseccomp can only receive and respond on a listener it created itself; the
  listener we hold comes from LXC over SCM_RIGHTS, so the ioctls on it
  (ID_VALID, ADDFD, SET_FLAGS) are issued here with ``fcntl.ioctl``.
* Syscall numbers differ per architecture (mknod is 133 on x86_64, 14 on
  i386, 0x40000085 on x32).  Numbers are never hard-coded: they come from
  libseccomp's resolver (through pyseccomp), and an unknown name is an error.
* Credentials on Linux are per *thread* in the kernel; glibc broadcasts
  ``setgroups``/``setuid`` to every thread, so those are issued as raw
  syscalls.  ``setfsuid``/``setfsgid`` are already per-thread in glibc.
* Memory of the caller is read through ``/proc/PID/mem``: a read that hits an
  unmapped page fails with EIO, which the caller's own syscall would have
  reported as EFAULT.  Such reads are forced (FOLL_FORCE), so a PROT_NONE
  page reads fine where the kernel's copy_from_user would fault: a string
  running into one is accepted, never more than PATH_MAX bytes of it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from typing import Final

import pyseccomp

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> int:
    """Turn a libc ``-1``/errno result into ``OSError``."""
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _native_nr(name: str) -> int:
    nr = int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))
    if nr < 0:
        raise RuntimeError(f"libseccomp does not know syscall {name!r} on this architecture")
    return nr


# Native syscall numbers, resolved once by libseccomp (never guessed).
_NR = {name: _native_nr(name) for name in (
    "openat2", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "setns", "unshare",
    "capget", "capset", "setgroups", "seccomp")}


# --- seccomp user notification ----------------------------------------------------------


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


def _IOC(direction: int, nr: int, size: int) -> int:  # noqa: N802 - the kernel macro
    # include/uapi/asm-generic/ioctl.h; the seccomp ioctl type is '!'.
    return (direction << 30) | (size << 16) | (ord("!") << 8) | nr


_IOC_WRITE, _IOC_READ = 1, 2
SECCOMP_IOCTL_NOTIF_RECV: Final = _IOC(_IOC_READ | _IOC_WRITE, 0, ctypes.sizeof(seccomp_notif))
SECCOMP_IOCTL_NOTIF_SEND: Final = _IOC(_IOC_READ | _IOC_WRITE, 1, ctypes.sizeof(seccomp_notif_resp))
SECCOMP_IOCTL_NOTIF_ID_VALID: Final = _IOC(_IOC_WRITE, 2, 8)
SECCOMP_IOCTL_NOTIF_ADDFD: Final = _IOC(_IOC_WRITE, 3, ctypes.sizeof(seccomp_notif_addfd))
SECCOMP_IOCTL_NOTIF_SET_FLAGS: Final = _IOC(_IOC_WRITE, 4, 8)


@dataclass(frozen=True)
class NotifSizes:
    seccomp_notif: int
    seccomp_notif_resp: int
    seccomp_data: int


def notif_sizes() -> NotifSizes:
    """The struct sizes this kernel uses (``seccomp(SECCOMP_GET_NOTIF_SIZES)``)."""
    sizes = seccomp_notif_sizes()
    _check(_syscall(_NR["seccomp"], SECCOMP_GET_NOTIF_SIZES, 0, ctypes.byref(sizes)), "seccomp")
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
        fcntl.ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_ID_VALID, struct.pack("=Q", notif_id))
    except OSError as err:
        if err.errno == errno.ENOENT:
            return False
        raise
    return True


def notif_recv(listener_fd: int) -> seccomp_notif:
    """Receive one notification from a listener we own (kernel-tier tests, standalone mode)."""
    notif = seccomp_notif()
    fcntl.ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_RECV, notif, True)
    return notif


def notif_send(listener_fd: int, resp: seccomp_notif_resp) -> None:
    """Answer one notification directly on a listener we own (never for LXC's)."""
    fcntl.ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_SEND, resp, True)


def notif_addfd(listener_fd: int, notif_id: int, srcfd: int, flags: int = 0, newfd: int = 0,
                newfd_flags: int = os.O_CLOEXEC) -> int:
    """Install ``srcfd`` into the waiting task; returns the fd number it got there."""
    req = seccomp_notif_addfd(notif_id, flags, srcfd, newfd, newfd_flags)
    # With a mutable buffer, fcntl.ioctl returns the ioctl's own result: the new fd.
    return int(fcntl.ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_ADDFD, req, True))


def notif_set_flags(listener_fd: int, flags: int) -> None:
    """SET_FLAGS takes its argument by value, not through a pointer."""
    fcntl.ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, flags)


# --- architectures ----------------------------------------------------------------------

AUDIT_ARCH_X86_64: Final = pyseccomp.Arch.X86_64
AUDIT_ARCH_I386: Final = pyseccomp.Arch.X86
AUDIT_ARCH_X32: Final = pyseccomp.Arch.X32
AUDIT_ARCH_AARCH64: Final = pyseccomp.Arch.AARCH64
AUDIT_ARCH_ARM: Final = pyseccomp.Arch.ARM

# The arches whose calls can reach us on each host machine: the native one and
# its compat modes, as LXC adds them to a container's filter.
HOST_ARCHES: Final = {
    "x86_64": (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, AUDIT_ARCH_X32),
    "aarch64": (AUDIT_ARCH_AARCH64, AUDIT_ARCH_ARM),
}


def syscall_numbers(names: tuple[str, ...],
                    machine: str | None = None) -> dict[tuple[int, int], str]:
    """Map ``(audit arch, nr)`` to a syscall name for every arch this host can run.

    A name an arch lacks (``mknod`` on aarch64) is simply absent for that arch.
    An unknown host machine is an error: we do not guess numbers.
    """
    machine = machine or os.uname().machine
    try:
        arches = HOST_ARCHES[machine]
    except KeyError:
        raise RuntimeError(f"unsupported host architecture {machine!r}") from None
    table: dict[tuple[int, int], str] = {}
    for arch in arches:
        for name in names:
            nr = pyseccomp.resolve_syscall(arch, name)
            if nr >= 0:
                table[(arch, nr)] = name
    return table


# --- reading the caller's memory ---------------------------------------------------------

PATH_MAX: Final = 4096
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")


def read_memory(mem_fd: int, address: int, size: int) -> bytes:
    """Read exactly ``size`` bytes at ``address``; EFAULT if any of it is unmapped."""
    if address <= 0 or address + size > 1 << 64:
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
    NUL within ``limit`` bytes is ENAMETOOLONG, like getname() says.
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


# --- paths, namespaces, mounts ---------------------------------------------------------


class open_how(ctypes.Structure):
    """struct open_how { __u64 flags; __u64 mode; __u64 resolve; };"""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
RESOLVE_IN_ROOT: Final = 0x10


def openat2(dir_fd: int, path: bytes, flags: int, resolve: int, mode: int = 0) -> int:
    how = open_how(flags | os.O_CLOEXEC, mode, resolve)
    return _check(
        _syscall(_NR["openat2"], dir_fd, path, ctypes.byref(how), ctypes.sizeof(how)), "openat2"
    )


CLONE_FS: Final = 0x00000200
CLONE_NEWNS: Final = 0x00020000


def unshare(flags: int) -> None:
    _check(_syscall(_NR["unshare"], flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_syscall(_NR["setns"], fd, nstype), "setns")


OPEN_TREE_CLONE: Final = 1
OPEN_TREE_CLOEXEC: Final = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH: Final = 0x04
MOVE_MOUNT_T_EMPTY_PATH: Final = 0x40
FSOPEN_CLOEXEC: Final = 1
FSMOUNT_CLOEXEC: Final = 1
FSCONFIG_SET_STRING: Final = 1
FSCONFIG_CMD_CREATE: Final = 6
MOUNT_ATTR_NOSUID: Final = 0x02
MOUNT_ATTR_NOEXEC: Final = 0x08


def open_tree(dir_fd: int, path: bytes, flags: int) -> int:
    return _check(_syscall(_NR["open_tree"], dir_fd, path, flags), "open_tree")


def move_mount(from_fd: int, from_path: bytes, to_fd: int, to_path: bytes, flags: int) -> None:
    _check(_syscall(_NR["move_mount"], from_fd, from_path, to_fd, to_path, flags), "move_mount")


def private_tmpfs(options: dict[str, str], attrs: int) -> int:
    """A new tmpfs mounted nowhere: the fd of its root (fsopen, fsconfig, fsmount)."""
    fs_fd = _check(_syscall(_NR["fsopen"], b"tmpfs", FSOPEN_CLOEXEC), "fsopen")
    try:
        for key, value in options.items():
            _check(_syscall(_NR["fsconfig"], fs_fd, FSCONFIG_SET_STRING, key.encode(),
                            value.encode(), 0), "fsconfig")
        _check(_syscall(_NR["fsconfig"], fs_fd, FSCONFIG_CMD_CREATE, None, None, 0), "fsconfig")
        return _check(_syscall(_NR["fsmount"], fs_fd, FSMOUNT_CLOEXEC, attrs), "fsmount")
    finally:
        os.close(fs_fd)


class statx_timestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32), ("_pad", ctypes.c_int32)]


class statx_struct(ctypes.Structure):
    """struct statx (include/uapi/linux/stat.h), up to stx_mnt_id and padding."""

    _fields_ = [
        ("stx_mask", ctypes.c_uint32), ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64), ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32), ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16), ("_spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64), ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64), ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", statx_timestamp), ("stx_btime", statx_timestamp),
        ("stx_ctime", statx_timestamp), ("stx_mtime", statx_timestamp),
        ("stx_rdev_major", ctypes.c_uint32), ("stx_rdev_minor", ctypes.c_uint32),
        ("stx_dev_major", ctypes.c_uint32), ("stx_dev_minor", ctypes.c_uint32),
        ("stx_mnt_id", ctypes.c_uint64), ("_spare", ctypes.c_uint64 * 13),
    ]


STATX_MNT_ID: Final = 0x00001000
STATX_MNT_ID_UNIQUE: Final = 0x00004000
AT_EMPTY_PATH: Final = 0x1000
_libc.statx.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                        ctypes.POINTER(statx_struct))


STATX_UID: Final = 0x00000008
STATX_GID: Final = 0x00000010


@dataclass(frozen=True, slots=True)
class FileIdentity:
    uid: int
    gid: int
    mount_id: int
    mount_id_unique: bool  # Linux 6.8+: never reused this boot; older ids are reused


def file_identity(fd: int) -> FileIdentity:
    """Owner and mount of the file ``fd``, in one statx."""
    buf = statx_struct()
    _check(_libc.statx(fd, b"", AT_EMPTY_PATH,
                       STATX_UID | STATX_GID | STATX_MNT_ID_UNIQUE | STATX_MNT_ID,
                       ctypes.byref(buf)), "statx")
    return FileIdentity(int(buf.stx_uid), int(buf.stx_gid), int(buf.stx_mnt_id),
                        bool(buf.stx_mask & STATX_MNT_ID_UNIQUE))


# --- credentials ------------------------------------------------------------------------

CAP_CHOWN: Final = 0
CAP_DAC_OVERRIDE: Final = 1
CAP_DAC_READ_SEARCH: Final = 2
CAP_FOWNER: Final = 3
CAP_FSETID: Final = 4
CAP_MKNOD: Final = 27
CAP_SYS_ADMIN: Final = 21

_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522


class _cap_header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _cap_data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


@dataclass(frozen=True)
class ThreadCaps:
    effective: int
    permitted: int
    inheritable: int


def capget() -> ThreadCaps:
    """This thread's capability sets (tid 0 means the calling thread)."""
    header = _cap_header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_cap_data * 2)()
    _check(_syscall(_NR["capget"], ctypes.byref(header), data), "capget")
    return ThreadCaps(
        data[0].effective | data[1].effective << 32,
        data[0].permitted | data[1].permitted << 32,
        data[0].inheritable | data[1].inheritable << 32,
    )


_capset_args: dict[ThreadCaps, tuple[_cap_header, ctypes.Array[_cap_data]]] = {}


def capset(caps: ThreadCaps) -> None:
    """Set this thread's capability sets; only the calling thread changes.

    The C arguments are built once per distinct set: a supervisor thread
    switches between a handful of sets on every request.
    """
    args = _capset_args.get(caps)
    if args is None:
        data = (_cap_data * 2)()
        for i, shift in enumerate((0, 32)):
            data[i].effective = (caps.effective >> shift) & 0xFFFFFFFF
            data[i].permitted = (caps.permitted >> shift) & 0xFFFFFFFF
            data[i].inheritable = (caps.inheritable >> shift) & 0xFFFFFFFF
        args = (_cap_header(_LINUX_CAPABILITY_VERSION_3, 0), data)
        if len(_capset_args) < 64:
            _capset_args[caps] = args
    # The kernel may rewrite the header's version field; it is reset each time.
    args[0].version = _LINUX_CAPABILITY_VERSION_3
    _check(_syscall(_NR["capset"], ctypes.byref(args[0]), args[1]), "capset")


_libc.setfsuid.argtypes = (ctypes.c_uint32,)
_libc.setfsgid.argtypes = (ctypes.c_uint32,)


def setfsuid(uid: int, verify: bool = True) -> None:
    """Set this thread's fsuid.  The call returns the old value and never fails
    visibly, so success is checked by reading the value back (skip that only
    where the thread holds CAP_SETUID for certain)."""
    _libc.setfsuid(uid)
    # The C int it returns is negative for ids >= 2**31; compare as u32.
    if verify and _libc.setfsuid(0xFFFFFFFF) & 0xFFFFFFFF != uid:
        raise OSError(errno.EPERM, f"setfsuid({uid}) refused")


def setfsgid(gid: int, verify: bool = True) -> None:
    _libc.setfsgid(gid)
    if verify and _libc.setfsgid(0xFFFFFFFF) & 0xFFFFFFFF != gid:
        raise OSError(errno.EPERM, f"setfsgid({gid}) refused")


def setgroups_thread(groups: tuple[int, ...]) -> None:
    """setgroups for the calling thread only (glibc's wrapper changes every thread)."""
    array = (ctypes.c_uint32 * max(len(groups), 1))(*groups)
    _check(_syscall(_NR["setgroups"], len(groups), array), "setgroups")
