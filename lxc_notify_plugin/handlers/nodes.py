"""Usable device nodes where the caller's filesystem makes them unusable (shared by mknod, mount).

The kernel refuses to open a device node on a mount flagged ``nodev`` and on
any filesystem mounted inside a user namespace, such as the container's
``/dev`` tmpfs (it marks those superblocks SB_I_NODEV, and no syscall
reports it).  A privileged container gets an unusable node on the first and
a usable one on the second; so do our callers.  For the second, the node the
caller asked for is made as usual, and an identical node from the daemon's
own tmpfs (mounted nowhere on the host) is bind-mounted over it, as
LXD/Incus do with their host directory.  The store's node keeps its name, so
the caller's node can be bind-mounted again (Docker passes ``--device`` that
way); each container's store directory goes when its connection ends.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import shutil
import stat
import threading

from .. import kernel
from ..caller.thread import CallerScope, ThreadState
from ..errors import SupervisorFault, own_step
from ..host.mountns import tmpfs_namespace
from ..kernel.fd import OwnedFd
from ..request import Request

log = logging.getLogger(__name__)

_PROBE_DEV = os.makedev(1, 3)  # /dev/null: opening it has no side effects
_ACL_ACCESS = "system.posix_acl_access"


class UsabilityCache:
    """Whether device nodes open on a superblock (SB_I_NODEV is the superblock's).

    Keyed by mount id where ids are unique for the boot (Linux 6.8+); older
    kernels reuse ids, so there the key adds the superblock's device number:
    a new mount on a reused id inherits an answer only if it also has the
    old one's st_dev, which for a new superblock needs that number freed and
    handed out again in between.
    """

    _limit = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[tuple[int, int, bool], bool] = {}

    def key(self, dir_fd: int, parent: kernel.FileIdentity) -> tuple[int, int, bool]:
        if parent.mount_id_unique:
            return (parent.mount_id, 0, True)
        return (parent.mount_id, os.fstat(dir_fd).st_dev, False)

    def get(self, key: tuple[int, int, bool]) -> bool | None:
        return self._answers.get(key)

    def put(self, key: tuple[int, int, bool], usable: bool) -> None:
        with self._lock:
            if len(self._answers) >= self._limit:
                self._answers.clear()
            self._answers[key] = usable


USABILITY = UsabilityCache()
_probe_names = itertools.count()


def nodes_usable_on(scope: CallerScope, dir_fd: int, parent: kernel.FileIdentity) -> bool:
    """Whether a device node made in ``dir_fd`` is usable as it is (True), or
    needs a usable twin bound over it (False).

    The superblock decides (SB_I_NODEV), probed once with a /dev/null node
    owned by the caller's ids (the only ones a filesystem of the container's
    maps) and opened with the daemon's capabilities, so no ACL or umask of
    the caller's can spoil the probe.  A mount flagged ``nodev`` says so in
    statvfs: a privileged container gets an unusable node there, so we leave
    it as it is.  The flag can change with any remount, so it is read every
    time the answer would be a twin; a cached "usable" needs no flag (the
    node then behaves as the mount says, for us as for a privileged caller).
    """
    key = USABILITY.key(dir_fd, parent)
    usable = USABILITY.get(key)
    if usable:
        return True
    if os.fstatvfs(dir_fd).f_flag & os.ST_NODEV:
        return True  # nothing to add: see above
    if usable is not None:
        return usable
    with scope.with_daemon_caps():
        usable = _probe(dir_fd)
    if usable is None:
        return False
    USABILITY.put(key, usable)
    log.debug("device nodes on mount %d are %susable", parent.mount_id, "" if usable else "not ")
    return usable


def _probe(dir_fd: int) -> bool | None:
    name = f".lxc-notify-probe.{os.getpid()}.{next(_probe_names)}"
    try:
        os.mknod(name, stat.S_IFCHR | 0o600, _PROBE_DEV, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            # Room for the caller's node only: a twin works either way; not cached.
            return None
        raise
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
        os.close(fd)
        return True
    except PermissionError:
        return False
    finally:
        unlink_quietly(dir_fd, name)


class NodeStore:
    """A tmpfs of the daemon's own, the root of a mount namespace of its own (seen
    by no other), where usable twins are made: one directory per container user
    namespace, removed with the last ``release``.

    One per daemon, in its ``HostViews`` (the transports hold and release
    names through it, the mknod handler makes twins in it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._root_fd = self._ns_fd = -1
        self._names = itertools.count()
        self._holders: dict[str, int] = {}  # key -> connections and listeners serving it now

    # Every step here is the daemon's own, on its own tmpfs: an OSError in one is
    # the supervisor's fault (own_step), never an errno the caller would read as
    # the kernel's answer about its own path.

    @own_step("make the node store's directory")
    def directory(self, key: str) -> int:
        """An fd of the store directory for ``key`` (made on first use)."""
        with self._lock:
            if self._root_fd < 0:
                with own_step("make its private tmpfs"):
                    self._ns_fd, self._root_fd = tmpfs_namespace(
                        {"mode": "0700"}, kernel.MOUNT_ATTR_NOSUID | kernel.MOUNT_ATTR_NOEXEC)
        name = _store_name(key)
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=self._root_fd)
        return os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._root_fd)

    @own_step("make a usable twin in the node store")
    def make_twin(self, thread: ThreadState, key: str, like: os.stat_result, acl_from: int
                  ) -> int:
        """A detached clone (OPEN_TREE_CLONE) of a new node in ``key``'s directory
        with the type, device, owner, mode and access ACL of ``like`` (the node
        ``acl_from`` holds), ready to be bound over it; the caller owns the fd.
        ``open_tree`` wants its source in the thread's own namespace: the clone
        is made in the store's."""
        with OwnedFd(self.directory(key)) as held_store:
            store = held_store.fd
            name = self.next_name()
            os.mknod(name, like.st_mode, like.st_rdev, dir_fd=store)
            os.chown(name, like.st_uid, like.st_gid, dir_fd=store, follow_symlinks=False)
            os.chmod(name, stat.S_IMODE(like.st_mode), dir_fd=store)
            _copy_acl(thread.proc_root, acl_from, store, name)
            with thread.mount_namespace(self._ns_fd, "the node store's"):
                return kernel.open_tree(store, name.encode(),
                                        kernel.OPEN_TREE_CLONE | kernel.OPEN_TREE_CLOEXEC)

    def next_name(self) -> str:
        return f"node{next(self._names)}"

    def hold(self, key: str) -> None:
        """A connection (or listener) serves the container ``key`` names."""
        with self._lock:
            self._holders[key] = self._holders.get(key, 0) + 1

    def release(self, key: str) -> None:
        """That connection ended; with the last one, the container stopped: its names go.

        Counted, not dropped at every end: LXC reconnects while an old connection's
        thread is still finishing, and an exec'd process's listener ends while the
        container runs on; its twins must keep their names (link count 1, bindable)."""
        with self._lock:  # forgotten under it: a hold meanwhile finds its names
            left = self._holders.get(key, 0) - 1
            if left > 0:
                self._holders[key] = left
                return
            self._holders.pop(key, None)
            # Its names go (its mounts, if any are left, keep their inodes).
            if self._root_fd >= 0:
                shutil.rmtree(_store_name(key), dir_fd=self._root_fd, ignore_errors=True)


def _store_name(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key)


class Detached(SupervisorFault):
    """The caller's node lies on a mount detached from every namespace."""

    def __init__(self, cause: OSError) -> None:
        super().__init__("bind its node over the caller's (detached mount)", cause)


class Placeholder:
    """The caller's freshly made node, held by an O_PATH fd while a twin is mounted on it."""

    def __init__(self, parent_fd: int, leaf: bytes, node_type: int, dev: int) -> None:
        self._held = OwnedFd(os.open(leaf, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     dir_fd=parent_fd))
        try:
            self.stat = os.fstat(self.fd)
        except BaseException:
            self.close()
            raise
        if stat.S_IFMT(self.stat.st_mode) != node_type or self.stat.st_rdev != dev:
            self.close()
            # The container replaced the node between mknod and now.
            raise OSError(errno.EEXIST, "node replaced while being made")

    @property
    def fd(self) -> int:
        return self._held.fd

    def close(self) -> None:
        self._held.close()


def overmount_usable_twin(thread: ThreadState, request: Request, node: Placeholder,
                          nodes: NodeStore) -> None:
    """Bind an identical, usable node over ``node``, in the caller's mount namespace.
    Runs as the daemon, outside any caller scope."""
    # The last caller's fs ids, groups and umask must not shape the store.
    thread.set_ids(0, 0, (), 0o022)
    tree_fd = nodes.make_twin(thread, request.container.user_ns, node.stat, node.fd)
    with OwnedFd(tree_fd), thread.mount_namespace_of(request):
        try:
            kernel.move_mount(tree_fd, b"", node.fd, b"",
                              kernel.MOVE_MOUNT_F_EMPTY_PATH | kernel.MOVE_MOUNT_T_EMPTY_PATH)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.EINVAL):
                # The node's mount is in no namespace (lazily unmounted,
                # the caller's cwd kept it alive): nothing can be bound there.
                raise Detached(err) from err
            raise SupervisorFault("bind its node over the caller's", err) from err


def _copy_acl(proc_root: str, from_fd: int, store_fd: int, name: str) -> None:
    """The twin gets the caller node's access ACL (from the directory's default ACL)."""
    try:
        acl = os.getxattr(f"{proc_root}/thread-self/fd/{from_fd}", _ACL_ACCESS)
    except OSError as err:
        if err.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return
        raise
    with OwnedFd(os.open(name, os.O_PATH | os.O_CLOEXEC, dir_fd=store_fd)) as target:
        os.setxattr(f"{proc_root}/thread-self/fd/{target.fd}", _ACL_ACCESS, acl)


def unlink_quietly(dir_fd: int, name: bytes | str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError as err:
        log.warning("could not remove %r: %s", name, err)
