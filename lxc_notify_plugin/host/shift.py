"""Shifting a mount's ownership into a container's user namespace: the backends.

A filesystem the supervisor mounts for a container is made by host root in
the host's user namespace, so its files show their on-disk owners as host
ids: 0 on the image shows as "nobody" (65534) inside the container.  A
*shifted* mount shows on-disk 0 as the container's root, 1000 as its 1000,
and container root writes files owned by 0 on disk.

Two kernel mechanisms do that, behind one small interface:

* **idmapped mounts** (5.12+): ``mount_setattr(MOUNT_ATTR_IDMAP)`` with the
  container's user namespace, on a detached mount (from ``fsmount``), before
  it is attached.  Only filesystems that declare FS_ALLOW_IDMAP accept it
  (ext4, xfs, btrfs, vfat, f2fs; tmpfs since 6.3); others answer EINVAL.
* **shiftfs** (Ubuntu's out-of-tree module; not in mainline, nor in this
  host's kernel): an overlay-like filesystem over a marked source.  Found at
  run time in /proc/filesystems.

Which backend works is a property of the filesystem type (and the kernel),
so it is learnt on the first mount of each type and cached: later mounts of
that type go straight to the backend that worked, or are refused at once.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .. import kernel
from ..kernel import features

log = logging.getLogger(__name__)

_AT_EMPTY_PATH = 0x1000
# A backend answering these for a filesystem does not support it (as opposed
# to failing for this one mount).
_UNSUPPORTED = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.ENODEV})


class ShiftBackend(Protocol):
    name: str

    def unavailable(self) -> str | None:
        """Why this kernel cannot use the backend at all; None when it can."""

    def shift(self, mount_fd: int, userns_fd: int) -> int:
        """Shift the detached mount ``mount_fd`` into the user namespace of
        ``userns_fd``; the fd of the mount to attach (``mount_fd`` itself, or a
        new one the caller then owns)."""


class IdmappedMounts:
    name = "idmapped"

    def unavailable(self) -> str | None:
        if not features.have("mount_setattr"):
            return "mount_setattr is not in this kernel (5.12+)"
        return None

    def shift(self, mount_fd: int, userns_fd: int) -> int:
        kernel.mount_setattr(mount_fd, b"", _AT_EMPTY_PATH, attr_set=kernel.MOUNT_ATTR_IDMAP,
                             userns_fd=userns_fd)
        return mount_fd


class Shiftfs:
    """shiftfs over the detached mount, reached through its fd.

    Not exercised on this project's hosts (no shiftfs module): its
    availability and the selection between backends are what is tested.
    """

    name = "shiftfs"

    def __init__(self, filesystems: str = "/proc/filesystems", proc_root: str = "/proc") -> None:
        self.filesystems = filesystems
        self.proc_root = proc_root

    def unavailable(self) -> str | None:
        try:
            with open(self.filesystems) as f:
                names = {line.split()[-1] for line in f if line.strip()}
        except OSError as err:
            return f"cannot read {self.filesystems}: {err.strerror}"
        return None if "shiftfs" in names else "shiftfs is not in this kernel"

    def shift(self, mount_fd: int, userns_fd: int) -> int:
        fs_fd = kernel.fsopen(b"shiftfs")
        try:
            source = f"{self.proc_root}/thread-self/fd/{mount_fd}".encode()
            kernel.fsconfig(fs_fd, kernel.FSCONFIG_SET_STRING, b"source", source)
            kernel.fsconfig(fs_fd, kernel.FSCONFIG_SET_FLAG, b"mark")
            kernel.fsconfig(fs_fd, kernel.FSCONFIG_CMD_CREATE)
            return kernel.fsmount(fs_fd, kernel.FSMOUNT_CLOEXEC)
        finally:
            os.close(fs_fd)


class ShiftUnsupported(Exception):
    """No backend shifts this filesystem type here; the reasons, per backend."""

    def __init__(self, fs_type: str, reasons: Sequence[str]) -> None:
        super().__init__(f"cannot shift {fs_type}: " + "; ".join(reasons))
        self.fs_type = fs_type
        self.reasons = tuple(reasons)


@dataclass
class _Learnt:
    backend: str | None  # None: none works for this type
    reasons: tuple[str, ...] = ()


class Shifter:
    """The backends in order of preference, and what each type was found to use."""

    def __init__(self, backends: Sequence[ShiftBackend] | None = None) -> None:
        self.backends = tuple(backends if backends is not None else (IdmappedMounts(), Shiftfs()))
        self._learnt: dict[str, _Learnt] = {}
        self._lock = threading.Lock()

    def learnt(self, fs_type: str) -> str | None:
        """The backend cached for ``fs_type`` ("" if none works; None if not yet tried)."""
        with self._lock:
            found = self._learnt.get(fs_type)
        return None if found is None else (found.backend or "")

    def shift(self, fs_type: str, mount_fd: int, userns_fd: int) -> tuple[str, int]:
        """(backend name, mount fd to attach); ShiftUnsupported when none can."""
        with self._lock:
            known = self._learnt.get(fs_type)
        if known is not None and known.backend is None:
            raise ShiftUnsupported(fs_type, known.reasons)
        reasons = []
        for backend in self.backends:
            if known is not None and backend.name != known.backend:
                continue
            why = backend.unavailable()
            if why is not None:
                reasons.append(f"{backend.name}: {why}")
                continue
            try:
                attach_fd = backend.shift(mount_fd, userns_fd)
            except OSError as err:
                if err.errno not in _UNSUPPORTED:
                    raise  # this mount failed, not the type: nothing learnt
                reasons.append(f"{backend.name}: {fs_type} refuses it ({err.strerror})")
                continue
            if known is None:
                log.info("shifting %s mounts with %s", fs_type, backend.name)
                with self._lock:
                    self._learnt[fs_type] = _Learnt(backend.name)
            return backend.name, attach_fd
        log.warning("no backend can shift %s mounts: %s", fs_type, "; ".join(reasons))
        with self._lock:
            self._learnt[fs_type] = _Learnt(None, tuple(reasons))
        raise ShiftUnsupported(fs_type, reasons)
