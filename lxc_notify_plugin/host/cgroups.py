"""Where a task's cgroups are on the host: the files that put another task into them.

The caller's device cgroup is not read here any more: privileged steps run
in an actor placed in the caller's cgroups (``caller/actor.py``), where the
kernel checks the caller's device rules itself (cgroup v1's ``devices``
controller with the deny exceptions ``devices.list`` hides, and cgroup v2's
BPF device programs, which no other task can evaluate).
"""

from __future__ import annotations

import os


def procs_files(proc_cgroup: bytes, mountinfo: str) -> list[str]:
    """The ``cgroup.procs`` files that put a task into the cgroups of the task whose
    ``/proc/PID/cgroup`` is ``proc_cgroup``, in every hierarchy the host mounts
    (``mountinfo``: the host's ``/proc/self/mountinfo``)."""
    return [path for _, path in procs_files_by_hierarchy(proc_cgroup, mountinfo)]


def procs_files_by_hierarchy(proc_cgroup: bytes, mountinfo: str) -> list[tuple[str, str]]:
    """``procs_files``, each with its hierarchy's key in ``/proc/PID/cgroup``
    (``ID:controllers``: the same in every task's file on one host).

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
    files: list[tuple[str, str]] = []
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
            files.append((entry[:len(entry) - len(path) - 1],
                          os.path.join(where, path.lstrip("/"), "cgroup.procs")))
    return files


def cgroup_paths(proc_cgroup: bytes) -> dict[str, str]:
    """``{ID:controllers: path}`` of a ``/proc/PID/cgroup``."""
    paths = {}
    for entry in proc_cgroup.decode(errors="replace").splitlines():
        hierarchy, _, rest = entry.partition(":")
        controllers, _, path = rest.partition(":")  # a path may hold ':' itself
        if path:
            paths[f"{hierarchy}:{controllers}"] = path
    return paths


def holds(path: str, other: str) -> bool:
    """Whether cgroup ``path`` is ``other`` or one of its ancestors: then it cannot
    be removed while ``other`` has a task (rmdir of a cgroup with a task, or with
    a child cgroup, is EBUSY)."""
    return other == path or other.startswith(path.rstrip("/") + "/")
