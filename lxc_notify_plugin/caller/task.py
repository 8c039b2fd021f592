"""What the supervisor knows about a caller and its container, without acting.

Everything is read through the request's ``/proc/TID`` fd, never by pid
number: the fd stays bound to the task it was opened for, and reading it
once that task is gone fails with ESRCH.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

from .. import kernel
from ..request import ContainerUserns, Request

# Capabilities whose effect on an inode depends on its owner and group being
# mapped into the caller's user namespace (capable_wrt_inode_uidgid).
INODE_CAPS = (1 << kernel.CAP_DAC_OVERRIDE | 1 << kernel.CAP_DAC_READ_SEARCH
              | 1 << kernel.CAP_FOWNER | 1 << kernel.CAP_FSETID)


@dataclass(frozen=True, slots=True)
class CallerCreds:
    """The caller's filesystem identity, in host ids, and its capabilities in its own userns."""

    fsuid: int
    fsgid: int
    groups: tuple[int, ...]
    cap_effective: int
    umask: int
    user_ns: str
    ns_tgid: int = 0  # its process id and thread id in its own pid namespace
    ns_tid: int = 0
    uids: tuple[int, int, int] = (0, 0, 0)  # real, effective, saved (host ids)
    gids: tuple[int, int, int] = (0, 0, 0)

    def has_cap(self, cap: int) -> bool:
        return bool(self.cap_effective >> cap & 1)

    def caps_over(self, view: ContainerUserns, uid: int, gid: int) -> int:
        """The caller's effective capabilities as they apply to an inode owned by
        ``uid:gid``: the inode capabilities only when both are mapped into its
        namespace, as capable_wrt_inode_uidgid() decides."""
        if view.maps_owner(uid, gid):
            return self.cap_effective
        return self.cap_effective & ~INODE_CAPS


def status_field(status: bytes, name: bytes) -> bytes:
    """The value of one ``Name:\\tvalue`` line of /proc/PID/status (b"" if absent).

    Plain ``find`` is several times cheaper than a regex or splitting all
    ~55 lines, and this runs for every emulated request.
    """
    start = status.find(b"\n" + name + b":")
    if start < 0:
        return b""
    start += len(name) + 2
    end = status.find(b"\n", start)
    return status[start:end if end >= 0 else len(status)].strip()


_STATUS_READ = 16384


def read_whole(fd: int) -> bytes:
    """All of a /proc file from offset 0: one pread in the common case; a task
    with thousands of supplementary groups has a status longer than 16 KiB."""
    size = _STATUS_READ
    while True:
        data = os.pread(fd, size, 0)
        if len(data) < size:
            return data
        size *= 4


class TaskFile:
    """Keeps one /proc/TID file of the last caller open (``status``, ``cgroup``):
    a loop of calls from one task then costs one pread instead of open, read
    and close.

    Safe against pid reuse: the fd stays bound to the task it was opened for,
    and reading it once that task is gone fails with ESRCH.  A live task
    keeps its id, so a successful read for TID X is the task now calling as X.
    """

    def __init__(self, name: str = "status") -> None:
        self.name = name
        self.tid = -1
        self.fd = -1

    def read(self, request: Request) -> bytes:
        if request.tid == self.tid:
            try:
                return read_whole(self.fd)
            except ProcessLookupError:
                pass  # that task is gone; this one reuses its id
        self.close()
        fd = os.open(self.name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=request.proc_fd)
        try:
            status = read_whole(fd)
        except BaseException:
            os.close(fd)
            raise
        self.tid, self.fd = request.tid, fd
        return status

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.tid = self.fd = -1


def read_creds(request: Request, cache: TaskFile) -> CallerCreds:
    """The caller's credentials now, from its /proc/TID/status and ns/user."""
    status = cache.read(request)
    user_ns = os.readlink("ns/user", dir_fd=request.proc_fd)
    try:
        uids = tuple(map(int, status_field(status, b"Uid").split()))
        gids = tuple(map(int, status_field(status, b"Gid").split()))
        return CallerCreds(
            fsuid=uids[3],
            fsgid=gids[3],
            groups=tuple(map(int, status_field(status, b"Groups").split())),
            cap_effective=int(status_field(status, b"CapEff"), 16),
            umask=int(status_field(status, b"Umask"), 8),
            user_ns=user_ns,
            ns_tgid=int(status_field(status, b"NStgid").split()[-1]),
            ns_tid=int(status_field(status, b"NSpid").split()[-1]),
            uids=(uids[0], uids[1], uids[2]),
            gids=(gids[0], gids[1], gids[2]),
        )
    except (ValueError, IndexError) as err:
        raise OSError(errno.ESRCH, f"unreadable /proc/{request.tid}/status") from err


def in_container_userns(request: Request, creds: CallerCreds) -> bool:
    """A task in a nested user namespace holds no capability in the container's."""
    return creds.user_ns == request.container.user_ns


def _ns_inode(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def host_pid(request: Request, pid: int, proc_root: str = "/proc") -> int:
    """The host id of the task the caller calls ``pid`` (0: the caller itself).

    A task is ``pid`` in the caller's pid namespace when its ``NSpid:`` line
    (its ids from the host's namespace down to its own) has ``pid`` at the
    caller's depth and its namespace at that depth is the caller's; the
    second check (walking up with NS_GET_PARENT) tells two containers at the
    same depth apart.  Threads count: sched_setscheduler takes a thread id.
    ESRCH when the caller's namespace has no such task, as the kernel says.
    """
    if pid == 0:
        return request.tid
    if pid < 0:
        raise OSError(errno.EINVAL, "negative pid")
    caller_ids = status_field(read_whole_at(request.proc_fd, "status"), b"NSpid").split()
    depth = len(caller_ids) - 1
    if depth < 0:
        raise OSError(errno.ESRCH, "caller has no NSpid")
    caller_ns_fd = os.open("ns/pid", os.O_RDONLY | os.O_CLOEXEC, dir_fd=request.proc_fd)
    try:
        caller_ns = _ns_inode(caller_ns_fd)
    finally:
        os.close(caller_ns_fd)
    wanted = str(pid).encode()
    with os.scandir(proc_root) as processes:  # closed on return too: no fd left open
        for entry in processes:
            if entry.name.isdigit():
                found = _task_with_id(f"{proc_root}/{entry.name}", wanted, depth, caller_ns)
                if found is not None:
                    return found
    raise OSError(errno.ESRCH, f"no pid {pid} in the caller's pid namespace")


def _task_with_id(process: str, wanted: bytes, depth: int,
                  caller_ns: tuple[int, int]) -> int | None:
    try:
        with os.scandir(f"{process}/task") as tasks:
            for task in tasks:
                base = f"{process}/task/{task.name}"
                with open(f"{base}/status", "rb") as status_file:
                    ids = status_field(status_file.read(), b"NSpid").split()
                if len(ids) > depth and ids[depth] == wanted and \
                        _pid_ns_at_depth(f"{base}/ns/pid", len(ids) - 1 - depth) == caller_ns:
                    return int(task.name)
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        pass  # exited while we looked
    return None


def _pid_ns_at_depth(ns_path: str, up: int) -> tuple[int, int]:
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for _ in range(up):
            parent = kernel.ns_get_parent(fd)
            os.close(fd)
            fd = parent
        return _ns_inode(fd)
    finally:
        os.close(fd)


def read_whole_at(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return read_whole(fd)
    finally:
        os.close(fd)


AT_FDCWD = -100
_FD_DIR = re.compile(rb"^/(?:dev/fd|proc/(?:self|thread-self|(\d+)(?:/task/(\d+))?)/fd)"
                     rb"/(\d+)(?:/+(.*))?$", re.DOTALL)
_CWD_ROOT = re.compile(rb"^/proc/(?:self|thread-self|(\d+)(?:/task/(\d+))?)/(cwd|root)"
                       rb"(?:/+(.*))?$", re.DOTALL)
_SELF = re.compile(rb"^/proc/(self|thread-self)(/.*)?$", re.DOTALL)


def rebase_self_path(path: bytes, dir_fd: int, creds: CallerCreds) -> tuple[int, bytes]:
    """``(dir_fd, path)`` with the names a caller has for itself made explicit.

    In the caller's ``/proc``, ``self`` and ``thread-self`` name the caller;
    walked by us they would name the daemon, which has no pid there.  So a
    path through the caller's own fd (``/dev/fd/N/...``, ``/proc/self/fd/N/...``
    and the same with its pid) starts at that fd, as the kernel's walk would
    after following the magic link, and so do its ``cwd`` and ``root``; any
    other ``/proc/self/...`` names the
    caller's pid.  These are the caller's own: they reach nothing it could not
    reach by passing the fd as a dirfd.  Every other magic link (another
    task's ``/proc/PID/root``) is left to the exact walk, which follows it in
    the container's user namespace with the caller's rights
    (``CallerScope.open_exactly``), never with ours.
    """
    if not path.startswith((b"/proc/", b"/dev/fd/")):  # what the patterns below start with
        return dir_fd, path
    match = _FD_DIR.match(path)
    if match:
        pid, tid, fd, rest = match.groups()
        own = (pid is None or int(pid) == creds.ns_tgid) and (
            tid is None or int(tid) == creds.ns_tid)
        if own:
            return int(fd), rest or b"."
    match = _CWD_ROOT.match(path)
    if match:
        pid, tid, which, rest = match.groups()
        if (pid is None or int(pid) == creds.ns_tgid) and (tid is None or int(tid) == creds.ns_tid):
            if which == b"cwd":
                return AT_FDCWD, rest or b"."
            return dir_fd, b"/" + (rest or b"")
    match = _SELF.match(path)
    if match:
        which, rest = match.groups()
        if which == b"self":
            return dir_fd, b"/proc/%d%s" % (creds.ns_tgid, rest or b"")
        return dir_fd, b"/proc/%d/task/%d%s" % (creds.ns_tgid, creds.ns_tid, rest or b"")
    return dir_fd, path
