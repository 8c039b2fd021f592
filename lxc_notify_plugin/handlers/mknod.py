"""mknod(2) and mknodat(2) for character and block devices the policy allows.

The node is made as the caller would make it in a privileged container (see
caller.py).  A node on a mount where device nodes cannot be opened (a
``nodev`` mount, or any filesystem mounted inside a user namespace, such as
the container's ``/dev`` tmpfs: the kernel marks those SB_I_NODEV) would
exist but fail with EACCES on open.  There we also make an identical node on
a private tmpfs the daemon owns and bind-mount it over the caller's, as
LXD/Incus do with their host directory; a mount nobody can see from the host
leaves nothing to clean up.

Everything the policy does not allow, and every caller without CAP_MKNOD in
the container's user namespace, is handed back to the kernel unchanged
(CONTINUE): the kernel's checks on the caller's own privileges then give
exactly the answer the container would get without us.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import threading

from .. import kernel
from ..caller import AT_FDCWD, INODE_CAPS, CallerScope, Request, SupervisorThread
from ..policy.effective import ContainerPolicy
from ..policy.mknod import choose, mknod_rules, needs_path
from ..policy.profile import KERNEL
from . import DONE, KERNEL_DECIDES, Answer

log = logging.getLogger(__name__)

_PROBE_DEV = os.makedev(1, 3)  # /dev/null: opening it has no side effects


def decode(request: Request) -> tuple[int, int, int, int]:
    """(dirfd, path address, mode, dev) for either entry point."""
    args = request.args
    if request.syscall == "mknod":
        return AT_FDCWD, args[0], args[1] & 0xFFFF, args[2] & 0xFFFFFFFF
    dir_fd = args[0] & 0xFFFFFFFF
    if dir_fd >= 1 << 31:  # an int in the kernel: AT_FDCWD arrives as 0xffffff9c
        dir_fd -= 1 << 32
    return dir_fd, args[1], args[2] & 0xFFFF, args[3] & 0xFFFFFFFF


def handle(request: Request, thread: SupervisorThread, policy: ContainerPolicy) -> Answer:
    dir_fd, path_address, mode, dev = decode(request)
    if stat.S_ISCHR(mode):
        kind = "c"
    elif stat.S_ISBLK(mode):
        kind = "b"
    else:  # the filter traps only these two; anything else is not ours to judge
        return KERNEL_DECIDES
    # The kernel's dev argument is the 32-bit new_encode_dev() form.
    major, minor = os.major(dev), os.minor(dev)
    rules = mknod_rules(policy.devices, kind, major, minor, request.host_devices)
    if rules is None:
        return KERNEL_DECIDES
    if not rules:
        log.debug("%s %d:%d is not in the profile", kind, major, minor)
        return refused(policy)
    creds = request.read_creds(thread.status)
    if not (request.in_container_userns(creds) and creds.has_cap(kernel.CAP_MKNOD)):
        log.debug("caller lacks CAP_MKNOD in the container: the kernel decides")
        return KERNEL_DECIDES
    path = request.read_string(path_address)
    request.ensure_valid()  # read everything, then check, then act

    caps = 1 << kernel.CAP_MKNOD | creds.cap_effective & INODE_CAPS
    with thread.as_caller(request, creds, caps) as scope:
        parent_fd, leaf = scope.open_parent(dir_fd, path)
        try:
            parent = kernel.file_identity(parent_fd)
            if caps & INODE_CAPS and not request.container.maps_owner(parent.uid, parent.gid):
                # The caller's DAC capabilities do not reach a directory whose
                # owner is not mapped into its user namespace.
                scope.set_caps(caps & ~INODE_CAPS)
            if needs_path(rules):
                where = scope.container_path(parent_fd, leaf)
                rule = choose(rules, where)
                if rule is None:
                    log.debug("%s %d:%d is not allowed at %s", kind, major, minor, where)
                    return refused(policy)
            else:
                rule = rules[0]
            if rule.mode_cap is not None:
                mode = stat.S_IFMT(mode) | stat.S_IMODE(mode) & rule.mode_cap
            os.mknod(leaf, mode, dev, dir_fd=parent_fd)
            try:
                if not _nodes_usable_on(scope, parent_fd, parent):
                    _overmount_usable_node(scope, parent_fd, leaf, dev)
            except OSError:
                # Do not leave a node that cannot be used: undo and report.
                with scope.as_daemon():
                    _unlink_quietly(parent_fd, leaf)
                raise
        finally:
            os.close(parent_fd)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("made %s %d:%d at %s for host uid %d", kind, major, minor, os.fsdecode(path),
                  creds.fsuid)
    return DONE


def refused(policy: ContainerPolicy) -> Answer:
    """The profile's answer for a node it does not allow: the kernel's own by default."""
    answer = policy.deny_answer("mknod")
    if answer == KERNEL:
        return KERNEL_DECIDES
    return Answer(error=getattr(errno, answer))


# --- nodes that must be usable on nodev mounts -------------------------------------------

_usable_by_mount: dict[int, bool] = {}
_probe_names = itertools.count()


def _nodes_usable_on(scope: CallerScope, dir_fd: int, parent: kernel.FileIdentity) -> bool:
    """Whether a device node made in ``dir_fd`` will be usable, or needs a usable twin.

    A mount flagged ``nodev`` says so in statvfs: a privileged container gets
    an unusable node there too, so we leave it as it is (True: nothing to add).
    A filesystem mounted inside a user namespace is nodev without the flag
    (SB_I_NODEV), and no syscall reports that, so we make a /dev/null node
    beside the new one, as the caller, and try to open it.  The answer is
    cached by mount id where ids are unique for the boot (Linux 6.8+);
    older kernels reuse ids, so there it is probed every time.
    """
    usable = _usable_by_mount.get(parent.mount_id) if parent.mount_id_unique else None
    if usable is None and os.fstatvfs(dir_fd).f_flag & os.ST_NODEV:
        usable = True  # nothing to add, see above
    elif usable is None:
        name = f".lxc-notify-probe.{os.getpid()}.{next(_probe_names)}"
        umask = os.umask(0)  # a caller's umask 0777 must not make the probe unopenable
        try:
            os.mknod(name, stat.S_IFCHR | 0o600, _PROBE_DEV, dir_fd=dir_fd)
        finally:
            os.umask(umask)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
            os.close(fd)
            usable = True
        except PermissionError:
            usable = False
        finally:
            _unlink_quietly(dir_fd, name)
        if parent.mount_id_unique:
            _usable_by_mount[parent.mount_id] = usable
        log.debug("device nodes on mount %d are %susable", parent.mount_id,
                  "" if usable else "not ")
    return usable


class NodeStore:
    """A tmpfs of the daemon's own, mounted nowhere, where usable nodes are made."""

    _lock = threading.Lock()
    _root_fd = -1
    _names = itertools.count()

    @classmethod
    def root_fd(cls) -> int:
        with cls._lock:
            if cls._root_fd < 0:
                cls._root_fd = kernel.private_tmpfs(
                    {"mode": "0700"}, kernel.MOUNT_ATTR_NOSUID | kernel.MOUNT_ATTR_NOEXEC)
            return cls._root_fd

    @classmethod
    def next_name(cls) -> str:
        return f"node{next(cls._names)}"


def _overmount_usable_node(scope: CallerScope, parent_fd: int, leaf: bytes, dev: int) -> None:
    with scope.as_daemon():
        target_fd = os.open(leaf, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            placeholder = os.fstat(target_fd)
            if not (stat.S_ISCHR(placeholder.st_mode) or stat.S_ISBLK(placeholder.st_mode)) \
                    or placeholder.st_rdev != dev:
                # The container replaced the node between mknod and now.
                raise OSError(errno.EEXIST, "node replaced while being made")
            store = NodeStore.root_fd()
            name = NodeStore.next_name()
            os.mknod(name, placeholder.st_mode, dev, dir_fd=store)
            try:
                os.chown(name, placeholder.st_uid, placeholder.st_gid, dir_fd=store,
                         follow_symlinks=False)
                os.chmod(name, stat.S_IMODE(placeholder.st_mode), dir_fd=store)
                tree_fd = kernel.open_tree(store, name.encode(),
                                           kernel.OPEN_TREE_CLONE | kernel.OPEN_TREE_CLOEXEC)
                try:
                    scope.thread.enter_mount_ns(scope.request)
                    kernel.move_mount(tree_fd, b"", target_fd, b"",
                                      kernel.MOVE_MOUNT_F_EMPTY_PATH
                                      | kernel.MOVE_MOUNT_T_EMPTY_PATH)
                finally:
                    os.close(tree_fd)
            finally:
                # The mount keeps the inode; the name in our store is not needed.
                os.unlink(name, dir_fd=store)
        finally:
            os.close(target_fd)


def _unlink_quietly(dir_fd: int, name: bytes | str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError as err:
        log.warning("could not remove %r: %s", name, err)
