"""A caller's memory and task limits, read from its cgroups: what sysinfo should say.

The kernel's sysinfo answers for the whole machine; a container's view is
its cgroups'.  This module reads the numbers (no policy: ``policy/sysinfo.py``
turns them into the struct's fields).

Facts that shaped it:

* ``/proc/TID/cgroup``, read by us (the host's cgroup namespace), names each
  of the caller's cgroups by its full path from the hierarchy's root:
  ``N:memory:/lxc.payload.c1`` for a cgroup v1 controller, ``0::/path`` for
  the unified (v2) hierarchy.  The kernel writes it: the container cannot
  put a path there it is not in.
* A cgroup's limits hold for its whole subtree, so a task's memory is
  bounded by every ancestor's, not only its own cgroup's: the levels from
  the caller's cgroup up to (not including) the hierarchy's root, which has
  no limit in either version, are each read.
* cgroup v1 (this host): ``memory.limit_in_bytes`` and ``memory.usage_in_bytes``;
  swap only as memory+swap, ``memory.memsw.limit_in_bytes`` and
  ``memory.memsw.usage_in_bytes`` (absent without swap accounting); shared
  memory as ``total_shmem`` of ``memory.stat`` (the subtree's).  "No limit"
  is a huge number (PAGE_COUNTER_MAX pages), not a word.
* cgroup v2: ``memory.max`` and ``memory.current``; swap on its own,
  ``memory.swap.max`` and ``memory.swap.current``; ``shmem`` of ``memory.stat``
  (hierarchical there).  "No limit" is the word ``max``.
* ``pids.current`` counts tasks (threads), as sysinfo's ``procs`` does.
* The root of the cgroup filesystem is a parameter, so the v2 path is tested
  against a directory of plain files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..policy.sysinfo import MemoryLevel

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """Where one controller's files are, and which version lays them out."""

    root: Path
    version: int  # 1 or 2
    controller: str

    def cgroup_of(self, proc_cgroup: bytes) -> str | None:
        """The task's cgroup in this hierarchy, from its /proc/TID/cgroup text."""
        name = self.controller.encode()
        for line in proc_cgroup.split(b"\n"):
            _, _, rest = line.partition(b":")
            controllers, sep, path = rest.partition(b":")
            if not sep:
                continue
            if (self.version == 2 and controllers == b"") or (
                    self.version == 1 and name in controllers.split(b",")):
                return os.fsdecode(path)
        return None

    def levels(self, cgroup: str) -> list[str]:
        """``cgroup`` and its ancestors, innermost first, the hierarchy's root left out."""
        found = []
        parts = [part for part in cgroup.split("/") if part]
        while parts:
            found.append("/" + "/".join(parts))
            parts.pop()
        return found

    def file(self, cgroup: str, name: str) -> Path:
        return self.root / cgroup.lstrip("/") / name


def _read(path: Path) -> str | None:
    try:
        with open(path, "rb") as file:
            return file.read().decode()
    except (FileNotFoundError, NotADirectoryError):
        return None  # no such file here (no swap accounting), or the cgroup went away


def _number(path: Path, unlimited: int | None = None) -> int | None:
    """A cgroup's number; None for v2's "max", a missing file, or v1's "no limit"."""
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    value = int(text)
    return None if unlimited is not None and value >= unlimited else value


def _stat(path: Path, key: str) -> int:
    text = _read(path) or ""
    prefix = key + " "
    for line in text.splitlines():
        if line.startswith(prefix):
            return int(line[len(prefix):])
    return 0


# cgroup v1 prints PAGE_COUNTER_MAX pages for "no limit": LONG_MAX rounded down
# to a page.  Anything at or above 2**62 bytes is no limit on any machine.
_V1_UNLIMITED = 1 << 62


class SysinfoCgroups:
    """The memory and pids hierarchies of this host, found once."""

    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self.memory = self._find(root, "memory", "memory.limit_in_bytes")
        self.pids = self._find(root, "pids", "cgroup.procs")

    @staticmethod
    def _find(root: Path, controller: str, v1_file: str) -> Hierarchy | None:
        if (root / controller / v1_file).exists():
            return Hierarchy(root / controller, 1, controller)
        controllers = _read(root / "cgroup.controllers")
        if controllers is not None and controller in controllers.split():
            return Hierarchy(root, 2, controller)
        return None

    def close(self) -> None:
        """Nothing held open (a per-thread resource must be closable)."""

    def memory_levels(self, proc_cgroup: bytes) -> tuple[MemoryLevel, ...]:
        """Every memory cgroup bounding the task, innermost first; () without any."""
        hierarchy = self.memory
        if hierarchy is None:
            return ()
        cgroup = hierarchy.cgroup_of(proc_cgroup)
        if cgroup is None:
            return ()
        read = self._level_v1 if hierarchy.version == 1 else self._level_v2
        return tuple(read(hierarchy, level) for level in hierarchy.levels(cgroup))

    @staticmethod
    def _level_v1(hierarchy: Hierarchy, cgroup: str) -> MemoryLevel:
        def number(name: str, unlimited: int | None = None) -> int | None:
            return _number(hierarchy.file(cgroup, name), unlimited)

        limit = number("memory.limit_in_bytes", _V1_UNLIMITED)
        usage = number("memory.usage_in_bytes") or 0
        both_limit = number("memory.memsw.limit_in_bytes", _V1_UNLIMITED)
        both_usage = number("memory.memsw.usage_in_bytes")
        swap_limit = None
        if both_limit is not None:
            # memory+swap: what the memory limit leaves of it is the swap there is.
            swap_limit = max(0, both_limit - limit) if limit is not None else both_limit
        swap_usage = max(0, both_usage - usage) if both_usage is not None else 0
        shmem = _stat(hierarchy.file(cgroup, "memory.stat"), "total_shmem")
        return MemoryLevel(cgroup, limit, usage, swap_limit, swap_usage, shmem)

    @staticmethod
    def _level_v2(hierarchy: Hierarchy, cgroup: str) -> MemoryLevel:
        def number(name: str) -> int | None:
            return _number(hierarchy.file(cgroup, name))

        return MemoryLevel(cgroup, number("memory.max"), number("memory.current") or 0,
                           number("memory.swap.max"), number("memory.swap.current") or 0,
                           _stat(hierarchy.file(cgroup, "memory.stat"), "shmem"))

    def task_count(self, proc_cgroup: bytes, init_cgroup: bytes) -> int | None:
        """Tasks in the container's pids cgroup: the deepest one holding both the
        caller and the container's init (a caller in a sub-cgroup of its own
        counts its whole container, not its corner).  None without one."""
        hierarchy = self.pids
        if hierarchy is None:
            return None
        mine, init = hierarchy.cgroup_of(proc_cgroup), hierarchy.cgroup_of(init_cgroup)
        if mine is None or init is None:
            return None
        common = os.path.commonpath([mine, init])
        if common == "/":
            return None  # the host's root cgroup: not a container's count
        return _number(hierarchy.file(common, "pids.current"))


def lxcfs_running(proc_root: str = "/proc") -> bool:
    """Whether lxcfs serves this host (a ``fuse.lxcfs`` mount in our namespace):
    LXC's 00-lxcfs.conf then binds its /proc/meminfo into containers, which
    agrees with what sysinfo interception answers."""
    try:
        with open(f"{proc_root}/self/mountinfo", encoding="utf-8", errors="replace") as f:
            # Field after " - " is the filesystem type.
            return any(line.split(" - ", 1)[-1].startswith("fuse.lxcfs ") for line in f)
    except OSError:
        return False
