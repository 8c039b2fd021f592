"""A supervisor thread that borrows a caller's identity, one step at a time.

For the result of a syscall we perform in a container's stead to be what the
caller would get in a privileged container, the thread takes on, for the
length of one ``CallerScope``, the caller's:

* **root**: absolute paths resolve with ``RESOLVE_IN_ROOT`` from
  ``/proc/TID/root``; a relative path needs the caller's root *and* another
  start (its cwd or dirfd, and ``..`` may climb above it), which only a
  ``chroot`` gives, so the thread chroots for those alone;
* **start directory**: ``/proc/TID/cwd`` or ``/proc/TID/fd/N``;
* **filesystem credentials**: fsuid, fsgid and groups as the host sees them;
* **capabilities**: only those the step needs and the caller holds;
* **umask**: so the kernel applies it (or a default ACL) as for the caller.

A ``MountNamespaceScope`` is the other kind of step: the daemon's identity in
the caller's mount namespace (``move_mount`` can only attach into the
thread's own namespace).  Each scope owns exactly the changes it makes and
undoes them on exit, whatever happened inside.

Kernel facts this relies on: ``unshare(CLONE_FS)`` gives the thread its own
root, cwd and umask; credentials are per thread in the kernel (``kernel``
issues setgroups as a raw syscall because glibc's wrapper changes every
thread); leaving fsuid 0 clears the filesystem capabilities from the
effective set, so ``capset`` sets them exactly afterwards; ``setns`` into a
mount namespace resets the thread's root and cwd to that namespace's root,
which is why a mount-namespace step may not run inside a CallerScope.

The thread's cwd is the host's ``/`` for its whole life, so leaving a chroot
is one ``chroot(".")``, and entering one is one ``chroot`` through the
``/proc/TID`` fd: two syscalls where fchdir and chroot each way took four.
Its fsuid, fsgid, groups and umask stay the last caller's between requests:
no step of the daemon's depends on them (those that create files for the
daemon switch to 0 explicitly, ``as_daemon``), and the next request from the
same caller then changes nothing.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Protocol, TypeVar

from .. import kernel
from ..errors import SupervisorFault, ThreadIdentityLost, own_step
from ..request import ContainerUserns, Request
from .task import INODE_CAPS, CallerCreds, TaskFile
from .userns import UsernsHelper


class Closable(Protocol):
    def close(self) -> None: ...


R = TypeVar("R", bound=Closable)

AT_FDCWD = -100
DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_RESOLVE = kernel.RESOLVE_NO_MAGICLINKS


class ThreadState:
    """Per-thread state of one supervisor thread.  Create it *in* that thread:
    the constructor unshares the thread's filesystem state from the daemon."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self.proc_root = proc_root
        self.host_root_fd = self.host_proc_fd = self.host_mnt_ns_fd = -1
        self.status = TaskFile("status")
        self.cgroup = TaskFile("cgroup")
        self._resources: dict[str, Closable] = {}
        self._rests: list[Callable[[], None]] = []  # the resources' rest methods
        kernel.unshare(kernel.CLONE_FS)
        try:
            self.host_root_fd = os.open("/", DIR_FLAGS)
            self.host_proc_fd = os.open(proc_root, DIR_FLAGS)
            self.host_mnt_ns_fd = os.open("/proc/thread-self/ns/mnt",
                                          os.O_RDONLY | os.O_CLOEXEC)
            os.fchdir(self.host_root_fd)  # chroot(".") leaves a chroot: see above
        except BaseException:
            self.close()
            raise
        self.umask = os.umask(0)
        os.umask(self.umask)
        self.caps = kernel.capget()
        self.groups = tuple(os.getgroups())
        self.fsuid, self.fsgid = os.geteuid(), os.getegid()
        self.in_scope = False
        self.broken = False  # its identity could not be restored: it must serve no more
        self._caps_sets: dict[int, kernel.ThreadCaps] = {}
        self._view: ContainerUserns | None = None
        self.helpers: dict[str, UsernsHelper] = {}  # by container user namespace

    def resource(self, key: str, make: Callable[[], R]) -> R:
        """A per-thread resource (a cache of fds), made on first use and closed
        with the thread: nothing in it is shared, so it needs no lock."""
        found = self._resources.get(key)
        if found is None:
            found = self._resources[key] = make()
            rest = getattr(found, "rest", None)
            if rest is not None:
                self._rests.append(rest)
        return found  # type: ignore[return-value]

    def rest(self) -> None:
        """Between requests, refused ones too: a resource that holds something only
        while it is in use (``Actors``: the thread's CPU) lets it go once that use
        is over.  A loop over what has a ``rest``: nothing, for most threads."""
        for rest in self._rests:
            rest()

    def close(self) -> None:
        self.status.close()
        self.cgroup.close()
        for resource in self._resources.values():
            resource.close()
        self._resources, self._rests = {}, []
        for helper in self.helpers.values():
            helper.close()
        self.helpers = {}
        for name in ("host_root_fd", "host_proc_fd", "host_mnt_ns_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    @property
    def cached_view(self) -> ContainerUserns | None:
        return self._view

    def view(self, name: str, init_pid: int) -> ContainerUserns:
        """The container's view, read again only when its init changes."""
        if self._view is None or self._view.init_pid != init_pid or self._view.name != name:
            self._view = ContainerUserns.read(name, init_pid, self.proc_root)
        return self._view

    def userns_helper(self, view: ContainerUserns) -> UsernsHelper:
        """The helper in ``view``'s user namespace, spawned on first use."""
        assert not self.in_scope, "the helper is never spawned under a caller's root"
        helper = self.helpers.get(view.user_ns)
        if helper is None or not helper.alive:
            if helper is not None:
                helper.close()
            helper = self.helpers[view.user_ns] = UsernsHelper(view.init_pid, view.user_ns,
                                                              self.proc_root)
        return helper

    def caps_set(self, effective: int) -> kernel.ThreadCaps:
        """This thread's capability sets with ``effective`` as the effective set (cached)."""
        caps = self._caps_sets.get(effective)
        if caps is None:
            caps = kernel.ThreadCaps(effective & self.caps.permitted, self.caps.permitted,
                                     self.caps.inheritable)
            self._caps_sets[effective] = caps
        return caps

    # --- identity changes (each a syscall only when something changes) -------------

    def set_ids(self, fsuid: int, fsgid: int, groups: tuple[int, ...] | None = None,
                umask: int | None = None) -> None:
        """Needs CAP_SETUID and CAP_SETGID in the effective set, which every caller
        of this holds: the kernel cannot refuse, so nothing is read back."""
        if umask is not None and umask != self.umask:
            os.umask(umask)
            self.umask = umask
        if groups is not None and groups != self.groups:
            kernel.setgroups_thread(groups)
            self.groups = groups
        if fsgid != self.fsgid:
            kernel.setfsgid(fsgid, verify=False)
            self.fsgid = fsgid
        if fsuid != self.fsuid:
            kernel.setfsuid(fsuid, verify=False)
            self.fsuid = fsuid

    def as_caller(self, request: Request, creds: CallerCreds, caps: int, *,
                  dir_fd: int = AT_FDCWD, relative: bool = False) -> CallerScope:
        """A scope in which this thread resolves paths and creates files as the caller.

        ``caps`` must already be limited to what the caller holds; ``relative``
        says whether paths will be relative (to ``dir_fd``: the caller's cwd
        for AT_FDCWD) or absolute.
        """
        return CallerScope(self, request, creds, caps, dir_fd, relative)

    def mount_namespace_of(self, request: Request) -> MountNamespaceScope:
        return MountNamespaceScope(self, os.open("ns/mnt", os.O_RDONLY | os.O_CLOEXEC,
                                                 dir_fd=request.proc_fd), "the caller's")

    def mount_namespace(self, ns_fd: int, whose: str) -> MountNamespaceScope:
        """The daemon's identity in the mount namespace ``ns_fd`` (kept open by its owner)."""
        return MountNamespaceScope(self, os.dup(ns_fd), whose)


class CallerScope:
    """One step done as the caller: entered with ``with``, undone on exit."""

    def __init__(self, thread: ThreadState, request: Request, creds: CallerCreds, caps: int,
                 dir_fd: int, relative: bool) -> None:
        self.thread = thread
        self.request = request
        self.creds = creds
        self.caps = caps
        self.dir_fd = dir_fd
        self.relative = relative
        self.root_fd = -1  # absolute paths start here
        self.start_fd = -1  # relative ones here, under the caller's root as ours
        self.chrooted = False
        self.root_prefix: str | None = None

    def __enter__(self) -> CallerScope:
        thread, request = self.thread, self.request
        assert not thread.in_scope, "caller scopes do not nest"
        thread.in_scope = True
        try:
            # The daemon's own opens first, while the thread is still itself:
            # /proc/TID/{root,cwd,fd/N} need ptrace access, chroot CAP_SYS_CHROOT.
            if self.relative:
                self.start_fd = open_start_dir(request, self.dir_fd)
                os.chroot(f"/proc/thread-self/fd/{request.proc_fd}/root")
                self.chrooted = True
            else:
                self.root_fd = os.open("root", DIR_FLAGS, dir_fd=request.proc_fd)
            creds = self.creds
            thread.set_ids(creds.fsuid, creds.fsgid, creds.groups, creds.umask)
            kernel.capset(thread.caps_set(self.caps))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        thread = self.thread
        try:
            # Capabilities first: leaving the chroot needs CAP_SYS_CHROOT.
            kernel.capset(thread.caps)
            if self.chrooted:
                os.chroot(".")  # the thread's cwd is the host's /
                self.chrooted = False
        except BaseException as err:
            # A thread that cannot get its own identity back must not serve
            # another request: its transport ends it (see dispatch).
            raise ThreadIdentityLost(f"could not restore the supervisor thread: {err}") from err
        finally:
            for name in ("root_fd", "start_fd"):
                fd = getattr(self, name)
                if fd >= 0:
                    os.close(fd)
                    setattr(self, name, -1)
            thread.in_scope = False

    def set_caps(self, caps: int) -> None:
        if caps != self.caps:
            kernel.capset(self.thread.caps_set(caps))
            self.caps = caps

    @contextmanager
    def as_daemon(self) -> Iterator[None]:
        """The daemon's full identity for a step the caller could never do itself
        (a node made for the host's store); the caller's comes back after.  The
        root stays the caller's: the step must use fds, not paths."""
        thread = self.thread
        kernel.capset(thread.caps)
        thread.set_ids(0, 0)
        try:
            yield
        finally:
            thread.set_ids(self.creds.fsuid, self.creds.fsgid)
            kernel.capset(thread.caps_set(self.caps))

    @contextmanager
    def with_daemon_caps(self) -> Iterator[None]:
        """The daemon's capabilities with the caller's fs ids: files made stay
        owned by ids the caller's filesystem maps (a tmpfs of the container's
        refuses others with EOVERFLOW), and no mode or ACL stops the daemon."""
        kernel.capset(self.thread.caps)
        try:
            yield
        finally:
            kernel.capset(self.thread.caps_set(self.caps))

    # --- resolving paths as the caller ----------------------------------------------

    def open_dir(self, path: bytes) -> int:
        """Open directory ``path`` as the caller would reach it."""
        return self.open_path(path, DIR_FLAGS)

    def open_path(self, path: bytes, flags: int, *, follow: bool = True) -> int:
        """Open ``path`` as the caller would reach it (``follow``: the last
        component may be a symlink to follow).  openat2 retries EAGAIN, which
        RESOLVE_IN_ROOT gives for ``..`` when a rename or mount raced the walk."""
        if not follow:
            flags |= os.O_NOFOLLOW
        if path.startswith(b"/"):
            assert self.root_fd >= 0, "scope entered for relative paths"
            return _openat2_retrying(self.root_fd, path, flags,
                                     _RESOLVE | kernel.RESOLVE_IN_ROOT)
        assert self.start_fd >= 0, "scope entered for absolute paths"
        return _openat2_retrying(self.start_fd, path, flags, _RESOLVE)

    def open_exactly(self, path: bytes, flags: int) -> int:
        """Open ``path`` with exactly the caller's rights at every step of the walk.

        In the host's user namespace our DAC capabilities would cover every
        inode, where the caller's cover only inodes whose owner and group its
        namespace maps.  So the walk runs first without them: where that
        succeeds, the caller's would too, to the same place.  Where it is
        refused (EACCES: the caller's capabilities might have let it through,
        or a FUSE mount of the container's refuses every task outside its
        user namespace), the walk is done again by a helper in the
        container's user namespace, with the caller's ids and capabilities,
        and the kernel itself decides.
        """
        self.set_caps(self.caps & ~INODE_CAPS)
        try:
            return self.open_path(path, flags)
        except PermissionError:
            pass
        except OSError as err:
            if err.errno != errno.ELOOP:
                raise
            # Our walk refuses magic links (following one would use our ptrace
            # rights).  The kernel follows them for the caller where the caller
            # may (/proc/1/root/... for container root): the helper, holding the
            # caller's ids and capabilities, follows them under the caller's
            # root, and the kernel's ptrace check decides; a real symlink loop
            # is ELOOP there too.
            return self._open_in_userns(path, flags, magic_links=True)
        return self._open_in_userns(path, flags)

    def _open_in_userns(self, path: bytes, flags: int, *, magic_links: bool = False) -> int:
        request, creds, view = self.request, self.creds, self.request.container
        helper = self._helper()
        uids = tuple(view.uid_map.to_inside(u) for u in (*creds.uids, creds.fsuid))
        gids = tuple(view.gid_map.to_inside(g) for g in (*creds.gids, creds.fsgid))
        if None in uids or None in gids:
            raise OSError(errno.EACCES, "caller's ids are not mapped in the container")
        groups = tuple(g for g in (view.gid_map.to_inside(h) for h in creds.groups)
                       if g is not None)
        root_fd = self.root_fd
        if root_fd < 0:
            with self.as_daemon():
                root_fd = os.open("root", DIR_FLAGS, dir_fd=request.proc_fd)
        try:
            absolute = path.startswith(b"/")
            if magic_links:  # under a chroot to the caller's root: no RESOLVE_* at all
                start_fd, resolve = (root_fd if absolute else self.start_fd), 0
            else:
                start_fd = -1 if absolute else self.start_fd
                resolve = _RESOLVE | (kernel.RESOLVE_IN_ROOT if absolute else 0)
            return helper.open_as(
                root_fd=root_fd, start_fd=start_fd, path=path,
                flags=flags | os.O_CLOEXEC,
                resolve=resolve,
                uids=uids, gids=gids,  # type: ignore[arg-type]  # no None: checked above
                groups=groups, caps=creds.cap_effective)
        finally:
            if root_fd != self.root_fd:
                os.close(root_fd)

    def _helper(self) -> UsernsHelper:
        """The helper, spawned if need be with the daemon's whole identity and
        outside the caller's root: spawned under the chroot, its paths (and the
        interpreter it execs, as host root) would be the container's to choose."""
        thread, view = self.thread, self.request.container
        helper = thread.helpers.get(view.user_ns)
        if helper is not None and helper.alive:
            return helper
        kernel.capset(thread.caps)
        try:
            if self.chrooted:
                os.chroot(".")  # the thread's cwd is the host's /
            thread.set_ids(0, 0, (), 0o022)
            thread.in_scope = False
            try:
                return thread.userns_helper(view)
            finally:
                thread.in_scope = True
                creds = self.creds
                thread.set_ids(creds.fsuid, creds.fsgid, creds.groups, creds.umask)
                if self.chrooted:
                    os.chroot(f"/proc/thread-self/fd/{self.request.proc_fd}/root")
        finally:
            kernel.capset(thread.caps_set(self.caps))

    def open_parent(self, path: bytes) -> tuple[int, bytes]:
        """Resolve all but the last component of a path to create; returns (fd, leaf).

        The walk is exact (``open_exactly``).  The special cases mirror
        filename_create(): an empty path is ENOENT, a last component of "."
        or ".." (or "/") is EEXIST, and a trailing slash is EEXIST when the
        name exists, ENOENT otherwise.
        """
        head, leaf, trailing_slash = split_parent(path)
        parent = self.open_exactly(head, DIR_FLAGS)
        try:
            check_leaf(parent, leaf, trailing_slash)
        except BaseException:
            os.close(parent)
            raise
        return parent, leaf

    def container_path(self, dir_fd: int, leaf: bytes) -> str:
        """Where ``leaf`` in the directory ``dir_fd`` is, as the container names it.

        The kernel prints an fd's path from the reader's root; outside a
        chroot, for a container's file that is the container's own "/" (the
        root of its mount namespace), with symlinks and ".." resolved.  Under
        the caller's root it is printed from there, so the caller's root is
        put in front.  Path rules state intent, not a boundary against the
        container's root: it can bind-mount a node anywhere once it has one.
        """
        directory = os.readlink(f"thread-self/fd/{dir_fd}", dir_fd=self.thread.host_proc_fd)
        if self.chrooted:
            if self.root_prefix is None:
                with self.as_daemon():
                    self.root_prefix = os.readlink("root", dir_fd=self.request.proc_fd)
            directory = os.path.join(self.root_prefix, directory.lstrip("/"))
        return os.path.join(directory, os.fsdecode(leaf))


class MountNamespaceScope:
    """The daemon's identity in another mount namespace (the caller's, or one of
    the daemon's own), for one step.

    Only outside a CallerScope: joining a mount namespace resets the thread's
    root and cwd to that namespace's root, and leaving it resets them to the
    host's, so a chroot could not survive either.  Owns ``ns_fd``.
    """

    def __init__(self, thread: ThreadState, ns_fd: int, whose: str) -> None:
        self.thread = thread
        self.ns_fd = ns_fd
        self.whose = whose
        self.joined = False

    def __enter__(self) -> MountNamespaceScope:
        assert not self.thread.in_scope, "a mount namespace step inside a caller scope"
        thread = self.thread
        try:
            kernel.capset(thread.caps)
            thread.set_ids(0, 0)
            if _ns_id(self.ns_fd) != _ns_id(thread.host_mnt_ns_fd):
                try:
                    kernel.setns(self.ns_fd, kernel.CLONE_NEWNS)
                except OSError as err:
                    raise SupervisorFault(f"setns into {self.whose} mount namespace",
                                          err) from err
                self.joined = True
        finally:
            os.close(self.ns_fd)
            self.ns_fd = -1
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.joined:
            try:
                kernel.setns(self.thread.host_mnt_ns_fd, kernel.CLONE_NEWNS)
            except BaseException as err:
                raise ThreadIdentityLost(f"could not return to the host's mount namespace: "
                                         f"{err}") from err
            self.joined = False


def _ns_id(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _openat2_retrying(dir_fd: int, path: bytes, flags: int, resolve: int) -> int:
    # The kernel's own walks retry a racing rename or mount; so do we, a
    # bounded number of times (each retry is a full, fresh walk).
    for _ in range(64):
        try:
            return kernel.openat2(dir_fd, path, flags, resolve)
        except BlockingIOError:
            continue
    raise OSError(errno.EAGAIN, "path walk kept racing renames or mounts")


def open_start_dir(request: Request, dir_fd: int) -> int:
    """An fd for where a relative path starts: the caller's cwd or its dirfd."""
    if dir_fd == AT_FDCWD:
        return os.open("cwd", DIR_FLAGS, dir_fd=request.proc_fd)
    if dir_fd < 0:
        raise OSError(errno.EBADF, "bad dirfd")
    try:
        fd = os.open(f"fd/{dir_fd}", os.O_PATH | os.O_CLOEXEC, dir_fd=request.proc_fd)
    except FileNotFoundError:
        raise OSError(errno.EBADF, "bad dirfd") from None
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.ENOTDIR, "dirfd is not a directory")
    return fd


def split_parent(path: bytes) -> tuple[bytes, bytes, bool]:
    """(directory, last component, trailing slash) of a path to create, or the
    kernel's error for paths that name no new entry."""
    if not path:
        raise OSError(errno.ENOENT, "empty path")
    stripped = path.rstrip(b"/")
    if not stripped:
        raise OSError(errno.EEXIST, "the root exists")
    head, _, leaf = stripped.rpartition(b"/")
    if not head and stripped.startswith(b"/"):
        head = b"/"
    return head or b".", leaf, stripped != path


def check_leaf(parent_fd: int, leaf: bytes, trailing_slash: bool) -> None:
    if leaf in (b".", b".."):
        raise OSError(errno.EEXIST, "last component is . or ..")
    if trailing_slash:  # only a directory could be meant
        try:
            os.stat(leaf, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise OSError(errno.ENOENT, "trailing slash on a new name") from None
        raise OSError(errno.EEXIST, "exists")


__all__ = ["AT_FDCWD", "INODE_CAPS", "CallerScope", "ThreadState", "MountNamespaceScope"]


def thread_state(proc_root: str = "/proc") -> ThreadState | SupervisorFault:
    """This thread's ThreadState, or the fault that kept it from being made (its
    fds: EMFILE when the daemon's fd table is full).  A transport answers each
    notification with ``Dispatcher.refuse`` until one can be made."""
    try:
        with own_step("prepare its thread for callers"):
            return ThreadState(proc_root)
    except SupervisorFault as fault:
        return fault
