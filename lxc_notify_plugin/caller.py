"""Acting inside a container as the calling task would: one design for every handler.

A supervisor thread performs a syscall in the container's stead.  For the
result to be exactly what the caller would get in a privileged container, the
thread borrows, for the length of one request, the caller's:

* **root**: ``chroot`` to ``/proc/TID/root``, so absolute paths, absolute
  symlinks and ``..`` resolve inside the container and cannot climb out;
* **start directory**: ``/proc/TID/cwd`` or ``/proc/TID/fd/N`` for a dirfd;
* **filesystem credentials**: fsuid, fsgid and supplementary groups as the
  host sees them, so permission checks and the new file's owner are the
  caller's;
* **capabilities**: only those the handler needs and the caller holds in the
  container's user namespace (never more: an unprivileged caller gets
  nothing from us);
* **umask**: so the kernel applies it (or a default ACL) as for the caller;
* **mount namespace**: only when a handler must mount (``setns`` is needed
  for ``move_mount`` into it).

Kernel facts this relies on: ``unshare(CLONE_FS)`` gives the thread its own
root, cwd and umask, so ``chroot``/``umask`` here touch no other thread;
credentials are per thread in the kernel (see ``kernel.py`` for glibc's
broadcasting wrappers we avoid); changing fsuid away from 0 clears the
filesystem capabilities from the effective set, so they are set again with
``capset`` afterwards; magic links (``/proc/*/root``, ``/proc/*/fd/*``) are
refused during resolution (RESOLVE_NO_MAGICLINKS) because in the
container's ``/proc`` they could point anywhere.

Everything here is opened relative to the ``/proc/TID`` directory fd that LXC
sent: if the thread died and its id was reused, that fd still names the dead
task and reads fail with ESRCH instead of reading a stranger.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import kernel
from .errors import RequestGone, ThreadIdentityLost
from .policy.mknod import HostDevices
from .transport.lxc import Notification

AT_FDCWD = -100
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC

# Capabilities whose effect depends on the inode being mapped into the caller's
# user namespace (capable_wrt_inode_uidgid in the kernel).
INODE_CAPS = (1 << kernel.CAP_DAC_OVERRIDE | 1 << kernel.CAP_DAC_READ_SEARCH
              | 1 << kernel.CAP_FOWNER | 1 << kernel.CAP_FSETID)


@dataclass(frozen=True, slots=True)
class IdMap:
    """One ``uid_map``/``gid_map``: (inside, outside, count) ranges."""

    ranges: tuple[tuple[int, int, int], ...]

    @classmethod
    def parse(cls, text: str) -> IdMap:
        return cls(tuple((int(a), int(b), int(c)) for a, b, c in
                         (line.split() for line in text.splitlines() if line.strip())))

    def maps_host_id(self, host_id: int) -> bool:
        return any(outside <= host_id < outside + count for _, outside, count in self.ranges)


@dataclass(frozen=True, slots=True)
class ContainerView:
    """What stays true about a running container: read once per init pid."""

    name: str
    init_pid: int
    user_ns: str  # readlink of its ns/user: "user:[INODE]", unique while it lives
    uid_map: IdMap
    gid_map: IdMap

    @classmethod
    def read(cls, name: str, init_pid: int, proc_root: str = "/proc") -> ContainerView:
        base = f"{proc_root}/{init_pid}"
        user_ns = os.readlink(f"{base}/ns/user")
        with open(f"{base}/uid_map") as uid_map, open(f"{base}/gid_map") as gid_map:
            return cls(name, init_pid, user_ns,
                       IdMap.parse(uid_map.read()), IdMap.parse(gid_map.read()))

    def maps_owner(self, uid: int, gid: int) -> bool:
        return self.uid_map.maps_host_id(uid) and self.gid_map.maps_host_id(gid)


@dataclass(frozen=True, slots=True)
class CallerCreds:
    """The caller's filesystem identity, in host ids, and its capabilities in its own userns."""

    fsuid: int
    fsgid: int
    groups: tuple[int, ...]
    cap_effective: int
    umask: int
    user_ns: str

    def has_cap(self, cap: int) -> bool:
        return bool(self.cap_effective >> cap & 1)


def status_field(status: bytes, name: bytes) -> bytes:
    """The value of one ``Name:\tvalue`` line of /proc/PID/status (b"" if absent).

    Plain ``find`` is several times cheaper than a regex or splitting all
    ~55 lines, and this runs for every emulated request.
    """
    start = status.find(b"\n" + name + b":")
    if start < 0:
        return b""
    start += len(name) + 2
    end = status.find(b"\n", start)
    return status[start:end if end >= 0 else len(status)].strip()


def _read_status(proc_fd: int) -> bytes:
    fd = os.open("status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    try:
        return os.read(fd, 16384)
    finally:
        os.close(fd)


class StatusCache:
    """Keeps the last caller's /proc/TID/status open: a loop of calls from one task
    then costs one pread instead of open, read and close.

    Safe against pid reuse: the fd stays bound to the task it was opened for,
    and reading it once that task is gone fails with ESRCH.  A live task
    keeps its id, so a successful read for TID X is the task now calling as X.
    """

    def __init__(self) -> None:
        self.tid = -1
        self.fd = -1

    def read(self, request: Request) -> bytes:
        tid = request.notification.pid
        if tid == self.tid:
            try:
                return os.pread(self.fd, 16384, 0)
            except ProcessLookupError:
                pass  # that task is gone; this one reuses its id
        self.close()
        fd = os.open("status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=request.proc_fd)
        try:
            status = os.pread(fd, 16384, 0)
        except BaseException:
            os.close(fd)
            raise
        self.tid, self.fd = tid, fd
        return status

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.tid = self.fd = -1


class Request:
    """One notification and the three fds LXC sent with it (owned by the caller of this)."""

    def __init__(self, notification: Notification, syscall: str, container: ContainerView,
                 proc_fd: int, mem_fd: int, listener_fd: int,
                 host_devices: HostDevices | None = None) -> None:
        self.notification = notification
        self.syscall = syscall
        self.container = container
        self.proc_fd = proc_fd
        self.mem_fd = mem_fd
        self.listener_fd = listener_fd
        self.host_devices = host_devices  # udev's view of the host, when udev runs

    @property
    def args(self) -> tuple[int, ...]:
        return self.notification.args

    def read_string(self, address: int) -> bytes:
        return kernel.read_c_string(self.mem_fd, address)

    def read_creds(self, cache: StatusCache | None = None) -> CallerCreds:
        status = cache.read(self) if cache is not None else _read_status(self.proc_fd)
        user_ns = os.readlink("ns/user", dir_fd=self.proc_fd)
        try:
            return CallerCreds(
                fsuid=int(status_field(status, b"Uid").split()[3]),
                fsgid=int(status_field(status, b"Gid").split()[3]),
                groups=tuple(map(int, status_field(status, b"Groups").split())),
                cap_effective=int(status_field(status, b"CapEff"), 16),
                umask=int(status_field(status, b"Umask"), 8),
                user_ns=user_ns,
            )
        except (ValueError, IndexError) as err:
            raise OSError(errno.ESRCH, f"unreadable /proc/{self.notification.pid}/status") from err

    def in_container_userns(self, creds: CallerCreds) -> bool:
        """A task in a nested user namespace holds no capability in the container's."""
        return creds.user_ns == self.container.user_ns

    def ensure_valid(self) -> None:
        """Raise RequestGone unless the caller still waits in the syscall.

        Called after every read of its memory or /proc and before acting: the
        task may have died in between, and its pid been reused.
        """
        if not kernel.notif_id_valid(self.listener_fd, self.notification.notif_id):
            raise RequestGone(self.container.name, self.notification.pid, self.syscall,
                              self.notification.notif_id)


class SupervisorThread:
    """Per-thread state that lets one supervisor thread borrow a caller's identity.

    Create it *in* the thread that will use it: the constructor unshares the
    thread's filesystem state from the rest of the daemon.
    """

    def __init__(self) -> None:
        kernel.unshare(kernel.CLONE_FS)
        self.umask = 0
        os.umask(self.umask)
        self.host_root_fd = self.host_proc_fd = self.host_mnt_ns_fd = -1
        try:
            self.host_root_fd = os.open("/", _DIR_FLAGS)
            self.host_proc_fd = os.open("/proc", _DIR_FLAGS)
            self.host_mnt_ns_fd = os.open("/proc/thread-self/ns/mnt",
                                          os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            self.close()
            raise
        self.host_mnt_ns = _ns_id(os.fstat(self.host_mnt_ns_fd))
        self.mnt_ns = self.host_mnt_ns
        self.caps = kernel.capget()
        self.groups = tuple(os.getgroups())
        self.status = StatusCache()
        self._caps_sets: dict[int, kernel.ThreadCaps] = {}

    def close(self) -> None:
        if hasattr(self, "status"):
            self.status.close()
        for name in ("host_root_fd", "host_proc_fd", "host_mnt_ns_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def caps_set(self, effective: int) -> kernel.ThreadCaps:
        """This thread's capability sets with ``effective`` as the effective set (cached)."""
        caps = self._caps_sets.get(effective)
        if caps is None:
            caps = kernel.ThreadCaps(effective, self.caps.permitted, self.caps.inheritable)
            self._caps_sets[effective] = caps
        return caps

    def as_caller(self, request: Request, creds: CallerCreds, caps: int) -> CallerScope:
        """A context in which this thread resolves paths and creates files as the caller.

        ``caps`` must already be limited to what the caller holds in its
        namespace; see CallerScope.
        """
        return CallerScope(self, request, creds, caps)

    def enter_mount_ns(self, request: Request) -> None:
        """Join the caller's mount namespace (needed to mount into it); undone when the
        request's CallerScope exits."""
        fd = os.open("ns/mnt", os.O_RDONLY | os.O_CLOEXEC, dir_fd=request.proc_fd)
        try:
            ns = _ns_id(os.fstat(fd))
            if ns != self.mnt_ns:
                kernel.setns(fd, kernel.CLONE_NEWNS)
                self.mnt_ns = ns
        finally:
            os.close(fd)


def _ns_id(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


class CallerScope:
    """One request's borrowed identity: entered with ``with``, undone on exit.

    Entering switches the thread's umask, groups, fsgid, fsuid and effective
    capabilities to the caller's (in that order: fsuid last, since leaving
    fsuid 0 clears the filesystem capabilities that capset then sets
    exactly).  Leaving restores the daemon's identity, root and mount
    namespace, whatever happened inside.
    """

    def __init__(self, thread: SupervisorThread, request: Request, creds: CallerCreds,
                 caps: int) -> None:
        self.thread = thread
        self.request = request
        self.creds = creds
        self.caps = caps
        self.root_fd = -1
        self._chrooted = False

    def __enter__(self) -> CallerScope:
        thread, creds = self.thread, self.creds
        self.root_fd = os.open("root", _DIR_FLAGS, dir_fd=self.request.proc_fd)
        try:
            if creds.umask != thread.umask:
                os.umask(creds.umask)
                thread.umask = creds.umask
            if creds.groups != thread.groups:
                kernel.setgroups_thread(creds.groups)
                thread.groups = creds.groups
            kernel.setfsgid(creds.fsgid)
            kernel.setfsuid(creds.fsuid)
            self.set_caps(self.caps)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        thread = self.thread
        try:
            # Capabilities first: chroot and setns need CAP_SYS_CHROOT/CAP_SYS_ADMIN,
            # and with CAP_SETUID/CAP_SETGID back these two cannot fail.
            kernel.capset(thread.caps)
            kernel.setfsuid(0, verify=False)
            kernel.setfsgid(0, verify=False)
            # Supplementary groups and umask stay as the last caller's: they only
            # matter to permission checks and modes, which the daemon's own
            # capabilities and explicit chmods decide (two syscalls saved).
            if thread.mnt_ns != thread.host_mnt_ns:
                kernel.setns(thread.host_mnt_ns_fd, kernel.CLONE_NEWNS)  # resets the root
                thread.mnt_ns = thread.host_mnt_ns
                self._chrooted = False
            if self._chrooted:
                self._unchroot()
        except BaseException as err:
            # A thread that cannot get its own identity back must not serve
            # another request: the connection ends (its caller gets ENOSYS).
            raise ThreadIdentityLost(f"could not restore the supervisor thread: {err}") from err
        finally:
            if self.root_fd >= 0:
                os.close(self.root_fd)
                self.root_fd = -1

    def _unchroot(self) -> None:
        os.fchdir(self.thread.host_root_fd)
        os.chroot(".")
        self._chrooted = False

    @contextmanager
    def as_daemon(self) -> Iterator[None]:
        """The daemon's full identity for a step the caller could never do itself
        (mknod on the host's behalf, mounting); the caller's comes back after."""
        kernel.capset(self.thread.caps)
        kernel.setfsuid(0, verify=False)
        kernel.setfsgid(0, verify=False)
        try:
            yield
        finally:
            kernel.setfsgid(self.creds.fsgid)
            kernel.setfsuid(self.creds.fsuid)
            self.set_caps(self.caps)

    def set_caps(self, caps: int) -> None:
        kernel.capset(self.thread.caps_set(caps))
        self.caps = caps

    def container_path(self, dir_fd: int, leaf: bytes) -> str:
        """Where ``leaf`` in the directory ``dir_fd`` is, as the container names it.

        The kernel prints an fd's path up to the root of the mount namespace
        it lives in when our root is not on the way, which for a container's
        files is the container's own "/", with symlinks and ".." resolved.
        Path rules state intent, not a boundary against the container's
        root: it can bind-mount a node anywhere once it has one.
        """
        if self._chrooted:
            # Under the caller's chroot the kernel would print the path from
            # the caller's root; path rules speak of the container's root.
            with self.as_daemon():
                self._unchroot()
        directory = os.readlink(f"thread-self/fd/{dir_fd}", dir_fd=self.thread.host_proc_fd)
        return os.path.join(directory, os.fsdecode(leaf))

    def open_start_dir(self, dir_fd: int) -> int:
        """An fd for where a relative path starts: the caller's cwd or its dirfd."""
        if dir_fd == AT_FDCWD:
            return os.open("cwd", _DIR_FLAGS, dir_fd=self.request.proc_fd)
        if dir_fd < 0:
            raise OSError(errno.EBADF, "bad dirfd")
        try:
            fd = os.open(f"fd/{dir_fd}", os.O_PATH | os.O_CLOEXEC, dir_fd=self.request.proc_fd)
        except FileNotFoundError:
            raise OSError(errno.EBADF, "bad dirfd") from None
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.ENOTDIR, "dirfd is not a directory")
        return fd

    def open_dir(self, dir_fd: int, path: bytes) -> int:
        """Open directory ``path`` as the caller would reach it from ``dir_fd``.

        Absolute paths resolve with RESOLVE_IN_ROOT from the caller's root,
        which is chroot semantics ("/" and ".." stop at the root, absolute
        symlinks stay inside).  A relative path needs the caller's root and a
        different start (cwd or dirfd, and ".." may climb above it), which
        only a chroot gives, so the thread chroots for those alone.
        """
        if path.startswith(b"/"):
            return kernel.openat2(self.root_fd, path, _DIR_FLAGS,
                                  kernel.RESOLVE_IN_ROOT | kernel.RESOLVE_NO_MAGICLINKS)
        # Opening /proc/TID/cwd or fd/N needs ptrace access, and chroot needs
        # CAP_SYS_CHROOT: both are the daemon's steps, not the caller's.
        with self.as_daemon():
            start = self.open_start_dir(dir_fd)
            try:
                if not self._chrooted:
                    self._chrooted = True  # from fchdir on, exit must restore the cwd
                    os.fchdir(self.root_fd)
                    os.chroot(".")
            except BaseException:
                os.close(start)
                raise
        try:
            return kernel.openat2(start, path, _DIR_FLAGS, kernel.RESOLVE_NO_MAGICLINKS)
        finally:
            os.close(start)

    def open_parent(self, dir_fd: int, path: bytes) -> tuple[int, bytes]:
        """Resolve all but the last component of a path to create; returns (fd, leaf).

        Errors are the kernel's own (openat2 runs with the caller's
        credentials); the special cases mirror filename_create(): an empty
        path is ENOENT, a last component of "." or ".." (or "/") is EEXIST,
        and a trailing slash is EEXIST when the name exists, ENOENT otherwise.
        """
        if not path:
            raise OSError(errno.ENOENT, "empty path")
        stripped = path.rstrip(b"/")
        if not stripped:
            raise OSError(errno.EEXIST, "the root exists")
        head, _, leaf = stripped.rpartition(b"/")
        if not head and stripped.startswith(b"/"):
            head = b"/"
        parent = self.open_dir(dir_fd, head or b".")
        try:
            if leaf in (b".", b".."):
                raise OSError(errno.EEXIST, "last component is . or ..")
            if stripped != path:  # trailing slash: only a directory could be meant
                try:
                    os.stat(leaf, dir_fd=parent, follow_symlinks=False)
                except FileNotFoundError:
                    raise OSError(errno.ENOENT, "trailing slash on a new name") from None
                raise OSError(errno.EEXIST, "exists")
        except BaseException:
            os.close(parent)
            raise
        return parent, leaf
