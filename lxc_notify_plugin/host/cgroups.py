"""The caller's device cgroup: whether it may make a given device node.

The kernel refuses mknod of a device the caller's device cgroup does not
allow ``m`` for (EPERM, after the path checks); a supervisor acting in the
caller's stead must ask the caller's cgroup, never its own.

cgroup v1 (this host): the ``devices`` controller's ``devices.list`` of the
caller's cgroup lists what it allows when its default is deny, which is how
LXC and Docker set it up (``devices.deny = a``, then allows); the kernel
checks only the task's own cgroup, since children can never hold more than
their parent.  A cgroup whose default is *allow* prints only
``a *:* rwm`` and hides its deny exceptions: there we cannot see them, and
allow.  cgroup v2 has no list: device rules are BPF programs attached to
the cgroup, which a supervisor cannot evaluate for another task; there the
check is not made (documented in docs/CONTEXT.md).

Per request this costs two preads: the caller's ``/proc/TID/cgroup``
(through an fd kept per thread, like its status) and the cgroup's
``devices.list`` (through an fd kept per cgroup), so a rule an admin
changes applies to the very next call.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from ..caller.task import read_whole


@dataclass(frozen=True, slots=True)
class DeviceException:
    """One ``devices.list`` line: ``TYPE MAJOR:MINOR ACCESS`` (``*`` for any)."""

    kind: str  # "a", "c" or "b"
    major: int | None
    minor: int | None
    access: str

    def covers(self, kind: str, major: int, minor: int) -> bool:
        return (self.kind in ("a", kind) and self.major in (None, major)
                and self.minor in (None, minor))


@functools.lru_cache(maxsize=256)
def parse_devices_list(text: str) -> tuple[DeviceException, ...]:
    """Parsed once per distinct text: a container's list rarely changes."""
    entries = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or ":" not in parts[1]:
            continue
        major, _, minor = parts[1].partition(":")
        entries.append(DeviceException(parts[0], None if major == "*" else int(major),
                                       None if minor == "*" else int(minor), parts[2]))
    return tuple(entries)


def allows_access(entries: tuple[DeviceException, ...], kind: str, major: int, minor: int,
                  access: str) -> bool:
    """Every letter of ``access`` (``m``, ``r``, ``w``) allowed for the device: the
    kernel grants a request only if one exception covers all of it."""
    return any(e.covers(kind, major, minor) and all(a in e.access for a in access)
               for e in entries)


def allows_mknod(entries: tuple[DeviceException, ...], kind: str, major: int,
                 minor: int) -> bool:
    return allows_access(entries, kind, major, minor, "m")


def devices_cgroup(proc_cgroup: bytes) -> str | None:
    """The cgroup v1 ``devices`` path in ``/proc/PID/cgroup`` text, None without one."""
    for line in proc_cgroup.split(b"\n"):
        _, _, rest = line.partition(b":")
        controllers, _, path = rest.partition(b":")
        if b"devices" in controllers.split(b","):
            return os.fsdecode(path)
    return None


class DeviceLists:
    """One thread's open ``devices.list`` fds, by cgroup path (not shared: no lock)."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class DeviceCgroups:
    """Where the host's device cgroups are; the per-thread fds live in DeviceLists."""

    def __init__(self, mount: Path = Path("/sys/fs/cgroup/devices")) -> None:
        self.mount = mount
        self.enabled = (mount / "devices.list").exists()

    def allows_mknod(self, lists: DeviceLists, proc_cgroup: bytes, kind: str, major: int,
                     minor: int) -> bool:
        """Whether the cgroup named in ``proc_cgroup`` (the caller's /proc/TID/cgroup)
        lets its tasks make this node."""
        return self.allows(lists, proc_cgroup, kind, major, minor, "m")

    def allows(self, lists: DeviceLists, proc_cgroup: bytes, kind: str, major: int,
               minor: int, access: str) -> bool:
        """Whether that cgroup lets its tasks have ``access`` (letters of "mrw")
        to the device: "r" or "rw" to open it, as a mount of it does."""
        if not self.enabled:
            return True  # cgroup v2 or no devices controller: see the module's doc
        path = devices_cgroup(proc_cgroup)
        if path is None:
            return True
        return allows_access(parse_devices_list(self._read(lists, path)), kind, major, minor,
                             access)

    def _read(self, lists: DeviceLists, path: str) -> str:
        fd = lists.fds.get(path, -1)
        if fd >= 0:
            try:
                return read_whole(fd).decode()
            except OSError:
                # The cgroup went away; a new one may have its name.
                os.close(lists.fds.pop(path))
        if len(lists.fds) >= 256:
            lists.close()
        fd = os.open(self.mount / path.lstrip("/") / "devices.list", os.O_RDONLY | os.O_CLOEXEC)
        lists.fds[path] = fd
        return read_whole(fd).decode()


def procs_files(proc_cgroup: bytes, mountinfo: str) -> list[str]:
    """The ``cgroup.procs`` files that put a task into the cgroups of the task whose
    ``/proc/PID/cgroup`` is ``proc_cgroup``, in every hierarchy the host mounts
    (``mountinfo``: the host's ``/proc/self/mountinfo``).

    A v1 line ``ID:controllers:path`` belongs to the ``cgroup`` mount whose
    super options name those controllers (``name=systemd`` for a named one);
    the v2 line ``0::path`` to the ``cgroup2`` mount.  Only mounts of a
    hierarchy's root count, where paths in /proc/PID/cgroup start.
    """
    v1: dict[frozenset[str], str] = {}
    v2 = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        root, mount_point = fields[3], fields[4]
        fs_type, super_options = fields[dash + 1], fields[dash + 3]
        if root != "/":
            continue
        if fs_type == "cgroup2" and v2 is None:
            v2 = mount_point
        elif fs_type == "cgroup":
            names = frozenset(super_options.split(",")) - {"rw", "ro"}
            v1.setdefault(names, mount_point)
    files = []
    for entry in proc_cgroup.decode(errors="replace").splitlines():
        _, _, rest = entry.partition(":")
        controllers, _, path = rest.partition(":")
        if not path:
            continue
        if not controllers:
            where = v2
        else:
            wanted = frozenset(controllers.split(","))
            where = next((point for names, point in v1.items() if wanted <= names), None)
        if where is not None:
            files.append(os.path.join(where, path.lstrip("/"), "cgroup.procs"))
    return files
