"""Path resolution and file identity: openat2 and statx.

Kernel facts that shaped this module:

* ``openat2`` (5.6) resolves a path under rules the caller picks:
  ``RESOLVE_IN_ROOT`` treats the dirfd as ``/`` (a container's root, with
  ``..`` and absolute symlinks kept inside), ``RESOLVE_NO_MAGICLINKS`` refuses
  ``/proc/*/fd/*`` style jumps.  With ``..`` in the path it answers EAGAIN
  when a rename or mount happened anywhere during the walk; callers retry, as
  the kernel's own walks do.  glibc has no wrapper: it is a raw syscall, and
  ``struct open_how`` is extensible (the size is passed; more than a page is
  E2BIG, so a truncated 64-bit size would be silently accepted).
* ``statx`` answers only what the mask asks and says in ``stx_mask`` what it
  filled.  ``STATX_MNT_ID_UNIQUE`` (6.8) gives a mount id never reused this
  boot; older kernels give the old, reusable id, and the mask tells which.
* Descriptors are opened close-on-exec: a helper we exec must not inherit a
  container's files.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Final

from . import _ctypeslib

__all__ = [
    "AT_FDCWD", "AT_SYMLINK_NOFOLLOW", "AT_REMOVEDIR", "AT_SYMLINK_FOLLOW", "AT_NO_AUTOMOUNT",
    "AT_EMPTY_PATH", "AT_STATX_SYNC_AS_STAT", "AT_STATX_FORCE_SYNC", "AT_STATX_DONT_SYNC",
    "AT_RECURSIVE", "open_how", "RESOLVE_NO_XDEV", "RESOLVE_NO_MAGICLINKS", "RESOLVE_NO_SYMLINKS",
    "RESOLVE_BENEATH", "RESOLVE_IN_ROOT", "RESOLVE_CACHED", "openat2", "statx_timestamp", "statx",
    "statx_struct", "STATX_TYPE", "STATX_MODE", "STATX_NLINK", "STATX_UID", "STATX_GID",
    "STATX_ATIME", "STATX_MTIME", "STATX_CTIME", "STATX_INO", "STATX_SIZE", "STATX_BLOCKS",
    "statx_raw", "STATX_BASIC_STATS", "STATX_BTIME", "STATX_MNT_ID", "STATX_DIOALIGN",
    "STATX_MNT_ID_UNIQUE",
    "STATX_SUBVOL", "FileIdentity", "file_identity", "statfs", "fs_type", "FUSE_SUPER_MAGIC",
    "STATX_ATTR_MOUNT_ROOT", "statx_attributes"
]

AT_FDCWD: Final = -100
AT_SYMLINK_NOFOLLOW: Final = 0x100
AT_REMOVEDIR: Final = 0x200
AT_SYMLINK_FOLLOW: Final = 0x400
AT_NO_AUTOMOUNT: Final = 0x800
AT_EMPTY_PATH: Final = 0x1000
AT_STATX_SYNC_AS_STAT: Final = 0x0000
AT_STATX_FORCE_SYNC: Final = 0x2000
AT_STATX_DONT_SYNC: Final = 0x4000
AT_RECURSIVE: Final = 0x8000


class open_how(ctypes.Structure):
    """struct open_how {
        __u64 flags;
        __u64 mode;
        __u64 resolve;
    };"""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
RESOLVE_IN_ROOT: Final = 0x10
RESOLVE_CACHED: Final = 0x20

_openat2 = _ctypeslib.syscall("openat2")
_statx = _ctypeslib.function("statx")
_fstatfs = _ctypeslib.function("fstatfs")


def openat2(dir_fd: int, path: bytes, flags: int, resolve: int, mode: int = 0) -> int:
    """Open ``path`` under ``resolve`` rules; the fd is always close-on-exec."""
    how = open_how(flags | os.O_CLOEXEC, mode, resolve)
    return _openat2(dir_fd, path, ctypes.byref(how), ctypes.sizeof(how))


class statx_timestamp(ctypes.Structure):
    """struct statx_timestamp {
        __s64 tv_sec;
        __u32 tv_nsec;
        __s32 __reserved;
    };"""

    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32),
                ("_reserved", ctypes.c_int32)]


class statx(ctypes.Structure):
    """struct statx {                                   (include/uapi/linux/stat.h, 6.16+)
        __u32 stx_mask;             __u32 stx_blksize;       __u64 stx_attributes;
        __u32 stx_nlink;            __u32 stx_uid;           __u32 stx_gid;
        __u16 stx_mode;             __u16 __spare0[1];
        __u64 stx_ino;              __u64 stx_size;          __u64 stx_blocks;
        __u64 stx_attributes_mask;
        struct statx_timestamp stx_atime, stx_btime, stx_ctime, stx_mtime;
        __u32 stx_rdev_major;       __u32 stx_rdev_minor;
        __u32 stx_dev_major;        __u32 stx_dev_minor;
        __u64 stx_mnt_id;                                   /* 0x90 */
        __u32 stx_dio_mem_align;    __u32 stx_dio_offset_align;
        __u64 stx_subvol;                                   /* 0xa0 */
        __u32 stx_atomic_write_unit_min;
        __u32 stx_atomic_write_unit_max;
        __u32 stx_atomic_write_segments_max;
        __u32 stx_dio_read_offset_align;
        __u32 stx_atomic_write_unit_max_opt;
        __u32 __spare2[1];
        __u64 __spare3[8];                                  /* 0xc0 */
    };                                                      /* 0x100 */

    Fields a kernel does not know are left zero by it.
    """

    _fields_ = [
        ("stx_mask", ctypes.c_uint32), ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32), ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16), ("_spare0", ctypes.c_uint16 * 1),
        ("stx_ino", ctypes.c_uint64), ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64), ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", statx_timestamp), ("stx_btime", statx_timestamp),
        ("stx_ctime", statx_timestamp), ("stx_mtime", statx_timestamp),
        ("stx_rdev_major", ctypes.c_uint32), ("stx_rdev_minor", ctypes.c_uint32),
        ("stx_dev_major", ctypes.c_uint32), ("stx_dev_minor", ctypes.c_uint32),
        ("stx_mnt_id", ctypes.c_uint64),
        ("stx_dio_mem_align", ctypes.c_uint32), ("stx_dio_offset_align", ctypes.c_uint32),
        ("stx_subvol", ctypes.c_uint64),
        ("stx_atomic_write_unit_min", ctypes.c_uint32),
        ("stx_atomic_write_unit_max", ctypes.c_uint32),
        ("stx_atomic_write_segments_max", ctypes.c_uint32),
        ("stx_dio_read_offset_align", ctypes.c_uint32),
        ("stx_atomic_write_unit_max_opt", ctypes.c_uint32),
        ("_spare2", ctypes.c_uint32 * 1),
        ("_spare3", ctypes.c_uint64 * 8),
    ]


statx_struct = statx  # the name this mirror had before it took the kernel's

STATX_TYPE: Final = 0x00000001
STATX_MODE: Final = 0x00000002
STATX_NLINK: Final = 0x00000004
STATX_UID: Final = 0x00000008
STATX_GID: Final = 0x00000010
STATX_ATIME: Final = 0x00000020
STATX_MTIME: Final = 0x00000040
STATX_CTIME: Final = 0x00000080
STATX_INO: Final = 0x00000100
STATX_SIZE: Final = 0x00000200
STATX_BLOCKS: Final = 0x00000400
STATX_BASIC_STATS: Final = 0x000007FF
STATX_BTIME: Final = 0x00000800
STATX_MNT_ID: Final = 0x00001000
STATX_DIOALIGN: Final = 0x00002000
STATX_MNT_ID_UNIQUE: Final = 0x00004000
STATX_SUBVOL: Final = 0x00008000


@dataclass(frozen=True, slots=True)
class FileIdentity:
    uid: int
    gid: int
    mount_id: int
    mount_id_unique: bool  # Linux 6.8+: never reused this boot; older ids are reused


STATX_ATTR_MOUNT_ROOT: Final = 0x00002000  # the file is the root of a mount (5.8)


def statx_attributes(fd: int) -> int:
    """``stx_attributes`` of the file ``fd`` (``STATX_ATTR_*``)."""
    buf = statx()
    _statx(fd, b"", AT_EMPTY_PATH, STATX_TYPE, ctypes.byref(buf))
    return int(buf.stx_attributes & buf.stx_attributes_mask)


def statx_raw(fd: int, flags: int, mask: int) -> tuple[int, int]:
    """``(stx_mask, stx_attributes_mask)`` for ``mask``: what this kernel fills."""
    buf = statx()
    _statx(fd, b"", flags, mask, ctypes.byref(buf))
    return int(buf.stx_mask), int(buf.stx_attributes_mask)


def file_identity(fd: int) -> FileIdentity:
    """Owner and mount of the file ``fd``, in one statx."""
    buf = statx()
    _statx(fd, b"", AT_EMPTY_PATH, STATX_UID | STATX_GID | STATX_MNT_ID_UNIQUE | STATX_MNT_ID,
           ctypes.byref(buf))
    return FileIdentity(int(buf.stx_uid), int(buf.stx_gid), int(buf.stx_mnt_id),
                        bool(buf.stx_mask & STATX_MNT_ID_UNIQUE))


class statfs(ctypes.Structure):
    """struct statfs (x86_64 and aarch64, <bits/statfs.h>) {
        __fsword_t f_type; __fsword_t f_bsize;
        fsblkcnt_t f_blocks, f_bfree, f_bavail; fsfilcnt_t f_files, f_ffree;
        fsid_t f_fsid; __fsword_t f_namelen, f_frsize, f_flags, f_spare[4];
    };  120 bytes.  Python's os.fstatvfs has no f_type."""

    _fields_ = [
        ("f_type", ctypes.c_long), ("f_bsize", ctypes.c_long),
        ("f_blocks", ctypes.c_uint64), ("f_bfree", ctypes.c_uint64),
        ("f_bavail", ctypes.c_uint64), ("f_files", ctypes.c_uint64),
        ("f_ffree", ctypes.c_uint64), ("f_fsid", ctypes.c_int * 2),
        ("f_namelen", ctypes.c_long), ("f_frsize", ctypes.c_long), ("f_flags", ctypes.c_long),
        ("f_spare", ctypes.c_long * 4),
    ]


FUSE_SUPER_MAGIC: Final = 0x65735546  # include/uapi/linux/magic.h


def fs_type(fd: int) -> int:
    """The filesystem magic of the file ``fd`` (``statfs.f_type``).  FUSE answers
    this even to a task it refuses everything else."""
    buf = statfs()
    _fstatfs(fd, ctypes.byref(buf))
    return int(buf.f_type) & 0xFFFFFFFF
