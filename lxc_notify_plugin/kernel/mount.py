"""Mounts: the new mount API (fsopen, fsconfig, fsmount, fspick, open_tree,
move_mount, mount_setattr) and the classic ``mount(2)`` flags.

Kernel facts that shaped this module:

* The new API (5.2) splits ``mount(2)`` in steps on fds: ``fsopen`` makes a
  filesystem context, ``fsconfig`` sets its parameters one by one (each
  ``FSCONFIG_*`` command says what ``key``, ``value`` and ``aux`` mean) and
  creates the superblock, ``fsmount`` turns it into a *detached* mount held
  by an fd, and ``move_mount`` attaches it.  ``open_tree(OPEN_TREE_CLONE)``
  makes a detached copy of an existing mount: a bind mount not yet anywhere.
  Detached mounts vanish with their last fd.
* ``mount_setattr`` (5.12) changes mount attributes, recursively with
  ``AT_RECURSIVE``, and propagation with the classic ``MS_*`` values; only it
  can make an idmapped mount (``MOUNT_ATTR_IDMAP`` with a user namespace fd),
  only on a detached mount, and only on filesystems that allow it: ext4, xfs,
  btrfs...; tmpfs since 6.3.  An idmapped mount shows a file owned by 0 as
  the id that 0 maps to in that namespace (100000 for ``0 100000 65536``).
* ``struct mount_attr`` is extensible: its size is passed, and
  ``MOUNT_ATTR_SIZE_VER0`` (32) is the first version.
* util-linux >= 2.39 uses this API for mount(8); ``mount(2)`` flags
  (``MS_*``) are still what a trapped ``mount`` call carries.
* A tmpfs the supervisor makes for itself is never attached anywhere
  (``private_tmpfs``): no namespace can see or unmount it.
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

from . import _ctypeslib

__all__ = [
    "MS_RDONLY", "MS_NOSUID", "MS_NODEV", "MS_NOEXEC", "MS_SYNCHRONOUS", "MS_REMOUNT",
    "MS_MANDLOCK", "MS_DIRSYNC", "MS_NOSYMFOLLOW", "MS_NOATIME", "MS_NODIRATIME", "MS_BIND",
    "MS_MOVE", "MS_REC", "MS_SILENT", "MS_POSIXACL", "MS_UNBINDABLE", "MS_PRIVATE", "MS_SLAVE",
    "MS_SHARED", "MS_RELATIME", "MS_KERNMOUNT", "MS_I_VERSION", "MS_STRICTATIME", "MS_LAZYTIME",
    "MS_MGC_VAL", "MS_MGC_MSK", "FSOPEN_CLOEXEC", "FSPICK_CLOEXEC", "FSPICK_SYMLINK_NOFOLLOW",
    "FSPICK_NO_AUTOMOUNT", "FSPICK_EMPTY_PATH", "FSCONFIG_SET_FLAG", "FSCONFIG_SET_STRING",
    "FSCONFIG_SET_BINARY", "FSCONFIG_SET_PATH", "FSCONFIG_SET_PATH_EMPTY", "FSCONFIG_SET_FD",
    "FSCONFIG_CMD_CREATE", "FSCONFIG_CMD_RECONFIGURE", "FSCONFIG_CMD_CREATE_EXCL",
    "FSMOUNT_CLOEXEC", "OPEN_TREE_CLONE", "OPEN_TREE_CLOEXEC", "MOVE_MOUNT_F_SYMLINKS",
    "MOVE_MOUNT_F_AUTOMOUNTS", "MOVE_MOUNT_F_EMPTY_PATH", "MOVE_MOUNT_T_SYMLINKS",
    "MOVE_MOUNT_T_AUTOMOUNTS", "MOVE_MOUNT_T_EMPTY_PATH", "MOVE_MOUNT_SET_GROUP",
    "MOVE_MOUNT_BENEATH", "MOUNT_ATTR_RDONLY", "MOUNT_ATTR_NOSUID", "MOUNT_ATTR_NODEV",
    "MOUNT_ATTR_NOEXEC", "MOUNT_ATTR__ATIME", "MOUNT_ATTR_RELATIME", "MOUNT_ATTR_NOATIME",
    "MOUNT_ATTR_STRICTATIME", "MOUNT_ATTR_NODIRATIME", "MOUNT_ATTR_IDMAP",
    "MOUNT_ATTR_NOSYMFOLLOW", "MOUNT_ATTR_SIZE_VER0", "mount_attr", "fsopen", "fspick", "fsconfig",
    "fsmount", "open_tree", "move_mount", "mount_setattr", "private_tmpfs", "MNT_DETACH",
    "umount2", "pivot_root", "fs_context_messages"
]

# --- classic mount(2) flags (include/uapi/linux/mount.h) ------------------------------------
MS_RDONLY: Final = 1
MS_NOSUID: Final = 2
MS_NODEV: Final = 4
MS_NOEXEC: Final = 8
MS_SYNCHRONOUS: Final = 16
MS_REMOUNT: Final = 32
MS_MANDLOCK: Final = 64
MS_DIRSYNC: Final = 128
MS_NOSYMFOLLOW: Final = 256
MS_NOATIME: Final = 1024
MS_NODIRATIME: Final = 2048
MS_BIND: Final = 4096
MS_MOVE: Final = 8192
MS_REC: Final = 16384
MS_SILENT: Final = 32768
MS_POSIXACL: Final = 1 << 16
MS_UNBINDABLE: Final = 1 << 17
MS_PRIVATE: Final = 1 << 18
MS_SLAVE: Final = 1 << 19
MS_SHARED: Final = 1 << 20
MS_RELATIME: Final = 1 << 21
MS_KERNMOUNT: Final = 1 << 22
MS_I_VERSION: Final = 1 << 23
MS_STRICTATIME: Final = 1 << 24
MS_LAZYTIME: Final = 1 << 25
MS_MGC_VAL: Final = 0xC0ED0000  # old magic in the top 16 bits, ignored by the kernel
MS_MGC_MSK: Final = 0xFFFF0000

# --- the new API's flags ------------------------------------------------------------------
FSOPEN_CLOEXEC: Final = 0x00000001

FSPICK_CLOEXEC: Final = 0x00000001
FSPICK_SYMLINK_NOFOLLOW: Final = 0x00000002
FSPICK_NO_AUTOMOUNT: Final = 0x00000004
FSPICK_EMPTY_PATH: Final = 0x00000008

FSCONFIG_SET_FLAG: Final = 0  # key; value NULL, aux 0
FSCONFIG_SET_STRING: Final = 1  # key, value a string; aux 0
FSCONFIG_SET_BINARY: Final = 2  # key, value a blob, aux its length
FSCONFIG_SET_PATH: Final = 3  # key, value a path, aux a dirfd (or AT_FDCWD)
FSCONFIG_SET_PATH_EMPTY: Final = 4  # likewise, an empty path allowed
FSCONFIG_SET_FD: Final = 5  # key; value NULL, aux an fd
FSCONFIG_CMD_CREATE: Final = 6  # make the superblock (or share a matching one)
FSCONFIG_CMD_RECONFIGURE: Final = 7  # apply the parameters to an existing superblock
FSCONFIG_CMD_CREATE_EXCL: Final = 8  # make a new superblock, EBUSY instead of sharing (6.6)

FSMOUNT_CLOEXEC: Final = 0x00000001

OPEN_TREE_CLONE: Final = 1
OPEN_TREE_CLOEXEC: Final = os.O_CLOEXEC

MOVE_MOUNT_F_SYMLINKS: Final = 0x00000001
MOVE_MOUNT_F_AUTOMOUNTS: Final = 0x00000002
MOVE_MOUNT_F_EMPTY_PATH: Final = 0x00000004
MOVE_MOUNT_T_SYMLINKS: Final = 0x00000010
MOVE_MOUNT_T_AUTOMOUNTS: Final = 0x00000020
MOVE_MOUNT_T_EMPTY_PATH: Final = 0x00000040
MOVE_MOUNT_SET_GROUP: Final = 0x00000100
MOVE_MOUNT_BENEATH: Final = 0x00000200  # 6.5

MOUNT_ATTR_RDONLY: Final = 0x00000001
MOUNT_ATTR_NOSUID: Final = 0x00000002
MOUNT_ATTR_NODEV: Final = 0x00000004
MOUNT_ATTR_NOEXEC: Final = 0x00000008
MOUNT_ATTR__ATIME: Final = 0x00000070  # the atime setting, one of the three below
MOUNT_ATTR_RELATIME: Final = 0x00000000
MOUNT_ATTR_NOATIME: Final = 0x00000010
MOUNT_ATTR_STRICTATIME: Final = 0x00000020
MOUNT_ATTR_NODIRATIME: Final = 0x00000080
MOUNT_ATTR_IDMAP: Final = 0x00100000
MOUNT_ATTR_NOSYMFOLLOW: Final = 0x00200000

MOUNT_ATTR_SIZE_VER0: Final = 32

MNT_DETACH: Final = 2  # umount2: lazily, even if busy


class mount_attr(ctypes.Structure):
    """struct mount_attr {
        __u64 attr_set;
        __u64 attr_clr;
        __u64 propagation;
        __u64 userns_fd;
    };"""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


_fsopen = _ctypeslib.syscall("fsopen")
_fsconfig = _ctypeslib.syscall("fsconfig")
_fsmount = _ctypeslib.syscall("fsmount")
_fspick = _ctypeslib.syscall("fspick")
_open_tree = _ctypeslib.syscall("open_tree")
_move_mount = _ctypeslib.syscall("move_mount")
_mount_setattr = _ctypeslib.syscall("mount_setattr")
_umount2 = _ctypeslib.function("umount2")
_pivot_root = _ctypeslib.syscall("pivot_root")


def fsopen(fs_name: bytes, flags: int = FSOPEN_CLOEXEC) -> int:
    """A new filesystem context for ``fs_name`` (``b"tmpfs"``): its fd."""
    return _fsopen(fs_name, flags)


def fspick(dir_fd: int, path: bytes, flags: int = FSPICK_CLOEXEC) -> int:
    """A context for the superblock mounted at ``path``, to reconfigure it."""
    return _fspick(dir_fd, path, flags)


def fsconfig(fs_fd: int, cmd: int, key: bytes | None = None, value: bytes | None = None,
             aux: int = 0) -> None:
    """One ``FSCONFIG_*`` command on a context; see the constants for the arguments."""
    _fsconfig(fs_fd, cmd, key, value, aux)


def fsmount(fs_fd: int, flags: int = FSMOUNT_CLOEXEC, attr_flags: int = 0) -> int:
    """A detached mount of a created context (``MOUNT_ATTR_*`` in ``attr_flags``)."""
    return _fsmount(fs_fd, flags, attr_flags)


def open_tree(dir_fd: int, path: bytes, flags: int) -> int:
    """An fd of the mount at ``path``; with ``OPEN_TREE_CLONE`` a detached copy of it."""
    return _open_tree(dir_fd, path, flags)


def move_mount(from_fd: int, from_path: bytes, to_fd: int, to_path: bytes, flags: int) -> None:
    _move_mount(from_fd, from_path, to_fd, to_path, flags)


def mount_setattr(dir_fd: int, path: bytes, flags: int, attr_set: int = 0, attr_clr: int = 0,
                  propagation: int = 0, userns_fd: int = 0) -> None:
    """Change the mount at ``path`` (``AT_RECURSIVE``: and every mount below it).

    ``propagation`` is one of ``MS_PRIVATE``, ``MS_SHARED``, ``MS_SLAVE``,
    ``MS_UNBINDABLE`` (0 leaves it); ``userns_fd`` goes with ``MOUNT_ATTR_IDMAP``.
    """
    attr = mount_attr(attr_set, attr_clr, propagation, userns_fd)
    _mount_setattr(dir_fd, path, flags, ctypes.byref(attr), ctypes.sizeof(attr))


def umount2(target: bytes, flags: int = 0) -> None:
    _umount2(target, flags)


def pivot_root(new_root: bytes, put_old: bytes) -> None:
    """``pivot_root(".", ".")`` stacks the old root under the new one: then
    ``umount2(".", MNT_DETACH)`` drops it."""
    _pivot_root(new_root, put_old)


def fs_context_messages(fs_fd: int) -> list[str]:
    """What a filesystem context said while it was configured: each ``read`` of
    the fd gives one message ("e ..." for errors, "w ...", "i ..."), ENODATA
    when none are left.  The reason a CMD_CREATE failed is here, not in errno."""
    messages = []
    for _ in range(32):  # the kernel keeps at most 8
        try:
            message = os.read(fs_fd, 1024)
        except OSError:
            break
        if not message:
            break
        messages.append(message.decode(errors="replace").rstrip("\n"))
    return messages


def private_tmpfs(options: dict[str, str], attrs: int) -> int:
    """A new tmpfs mounted nowhere: the fd of its root (fsopen, fsconfig, fsmount)."""
    fs_fd = fsopen(b"tmpfs")
    try:
        for key, value in options.items():
            fsconfig(fs_fd, FSCONFIG_SET_STRING, key.encode(), value.encode())
        fsconfig(fs_fd, FSCONFIG_CMD_CREATE)
        return fsmount(fs_fd, FSMOUNT_CLOEXEC, attrs)
    finally:
        os.close(fs_fd)
