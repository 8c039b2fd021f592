"""mount(2) of the filesystems the policy allows, and fsopen(2) of those we emulate.

The mount is made as a privileged container would see it made, by the new
mount API from host root, in five steps:

1. the **target** is resolved as the caller resolves it (its root and cwd,
   its rights at every step; a symlink pointing outside the container
   lands inside), first, as path_mount() does;
2. the **source** must be a block device node the caller reaches the same
   way and could open itself, for reading, and writing unless MS_RDONLY:
   its own permissions on the node (the node's mount not ``nodev``), then
   its device cgroup.  The device is then mounted by its *number*, through
   a node of our own in a tmpfs no namespace can see: never a host path the
   container named;
3. ``fsopen``, ``fsconfig`` (the source, the superblock flags, each option
   of the caller's data page), ``fsmount`` with the flags as
   ``MOUNT_ATTR_*``, the policy's forced flags added; options naming host
   paths or devices are refused (EPERM);
4. with ``mount.shift``, the detached mount is shifted into the container's
   user namespace (``host/shift.py``: idmapped, or shiftfs);
5. ``move_mount`` onto the target, in the caller's mount namespace (a nested
   one made with ``unshare -m`` is the one that gets it).

A filesystem redirected to FUSE (``mount.fuse``) is mounted instead by its
FUSE program, run in the container as the caller (``caller/enter.py``).

Callers without CAP_SYS_ADMIN in the container's user namespace, and every
filesystem the policy does not name, are handed back to the kernel: its
answer for them is what a privileged container gives (EPERM), or the
native mount (tmpfs, proc, fuse...).  When our own step fails, the caller
gets that errno, never the kernel's second opinion, and the log says why.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from .. import kernel
from ..caller.actor import Actor, MountRefused, actor_for
from ..caller.task import (
    INODE_CAPS,
    CallerCreds,
    in_container_userns,
    read_creds,
    rebase_self_path,
)
from ..caller.thread import AT_FDCWD, ThreadState
from ..errors import SupervisorFault
from ..host.shift import Shifter, ShiftUnsupported
from ..kernel import features
from ..kernel.fd import OwnedFd
from ..policy.mount import (
    EMULATE,
    FAMILY,
    NOT_NEW,
    Option,
    choice,
    config_steps,
    flags_error,
    forced_flags,
    fuse_options,
    mount_attrs,
    mount_flags,
    parse_options,
    refused_option,
)
from ..request import DONE, KERNEL_DECIDES, NOT_OURS, Answer, Request
from .call import Call
from .program import run_as_caller

log = logging.getLogger(__name__)

_PAGE = 4096
_ATIME_ATTRS = kernel.MOUNT_ATTR__ATIME | kernel.MOUNT_ATTR_NODIRATIME
_FSCONFIG_MAX = 256  # fsconfig() takes no key or value this long (strndup_user)
_SOURCE_FLAGS = os.O_PATH | os.O_CLOEXEC
_TARGET_FLAGS = os.O_PATH | os.O_CLOEXEC
_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC  # a directory held, never read


def handle(call: Call) -> Answer:
    if call.request.syscall == "fsopen":
        return _fsopen(call)
    return _mount(call)


def _fsopen(call: Call) -> Answer:
    """ENOSYS for a filesystem we emulate, so mount(8) falls back to mount(2)."""
    request, policy = call.request, call.policy
    try:
        name = request.read_string(request.args[0], _PAGE)
    except OSError:
        return KERNEL_DECIDES  # the kernel's EFAULT or ENAMETOOLONG
    if choice(policy.of(FAMILY), name.decode(errors="replace")) is None:
        return NOT_OURS
    request.note(fstype=name)
    creds = read_creds(request, call.thread.status)
    if not _privileged(request, creds):
        return KERNEL_DECIDES
    return Answer(error=errno.ENOSYS)


def _privileged(request: Request, creds: CallerCreds) -> bool:
    return in_container_userns(request, creds) and creds.has_cap(kernel.CAP_SYS_ADMIN)


def _mount(call: Call) -> Answer:
    request, policy, thread = call.request, call.policy, call.thread
    source_address, target_address, type_address, raw_flags, data_address = request.args[:5]
    flags = mount_flags(raw_flags)
    if flags & NOT_NEW or not type_address:
        return KERNEL_DECIDES  # not a new superblock (a filter without argument checks)
    try:
        fs_type = request.read_string(type_address, _PAGE).decode(errors="replace")
    except OSError:
        return KERNEL_DECIDES
    decided = choice(policy.of(FAMILY), fs_type)
    if decided is None:
        return NOT_OURS
    request.note(fstype=fs_type, flags=f"{raw_flags & 0xFFFFFFFF:#x}")
    creds = read_creds(request, thread.status)
    if not _privileged(request, creds):
        log.debug("mount %s: caller lacks CAP_SYS_ADMIN in the container", fs_type)
        return KERNEL_DECIDES
    # The strings in the kernel's order (copy_mount_string, copy_mount_options):
    # source, data, then the target's walk; then the flags, then the options.
    source = _read_source(request, source_address)
    data = _read_data(request, data_address)
    target = request.read_string(target_address)  # getname(): ENAMETOOLONG, EFAULT
    request.note(source=source, target=target)
    request.ensure_valid()
    kind, program = decided
    actor = actor_for(thread, request) if kind == EMULATE else None
    with OwnedFd(_open_target(call, creds, target)) as target_fd:
        source, options = _check_arguments(fs_type, flags, source, data,
                                           parse=kind == EMULATE)
        forced = forced_flags(policy.of(FAMILY))
        if kind != EMULATE or actor is None:
            return _redirect(call, creds, program, fs_type, source, target, flags | forced,
                             options)
        return _emulate(call, creds, actor, fs_type, flags, forced, source, options,
                        target_fd.fd)


def _read_source(request: Request, address: int) -> bytes | None:
    """strndup_user(PATH_MAX): no NUL within it is EINVAL (not getname's
    ENAMETOOLONG); a fault EFAULT; NULL None."""
    if not address:
        return None
    try:
        return request.read_string(address)
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise OSError(errno.EINVAL, "source longer than PATH_MAX") from None
        raise


def _check_arguments(fs_type: str, flags: int, source: bytes | None, data: bytes, *,
                     parse: bool) -> tuple[bytes | None, tuple[Option, ...]]:
    """path_mount()'s and the option parse's answers, in their order: the flags,
    then each option in turn (refused: EPERM; the filesystem's own parser, in a
    context of ours that is never created: EINVAL; a ``source=`` in the data is
    the source when the call gave none, a second one EINVAL), all before the
    source is looked up; then get_tree_bdev's "no source" (EINVAL)."""
    error = flags_error(flags)
    if error is not None:
        raise OSError(error, "unknown mount flags")
    kept = []
    with OwnedFd(kernel.fsopen(fs_type.encode()) if parse else -1) as fs_context:
        fs_fd = fs_context.fd
        for option in parse_options(data):
            bad = refused_option((option,))
            if bad is not None:
                log.info("mount %s: option %s is refused (it would act outside the "
                         "container)", fs_type, bad)
                raise PermissionError(errno.EPERM, f"mount option {bad} is refused")
            if option.key == b"source":
                if option.value is None or source is not None:
                    raise OSError(errno.EINVAL, "a second or empty source")  # "Multiple sources"
                source = option.value
                continue
            if fs_fd >= 0:
                if option.value is None:
                    kernel.fsconfig(fs_fd, kernel.FSCONFIG_SET_FLAG, option.key)
                else:
                    kernel.fsconfig(fs_fd, kernel.FSCONFIG_SET_STRING, option.key, option.value)
            kept.append(option)
    if not source:
        raise OSError(errno.EINVAL, "no source")  # get_tree_bdev, lookup_bdev("")
    return source, tuple(kept)


def _emulate(call: Call, creds: CallerCreds, actor: Actor, fs_type: str, flags: int,
             forced: int, source: bytes | None, options: tuple[Option, ...],
             target_fd: int) -> Answer:
    request, policy, thread = call.request, call.policy, call.thread
    assert source is not None
    # The forced flags are locked with the mount; so is the atime setting (the
    # kernel always locks it).  The caller's other flags come after the lock,
    # so it can change them later as on a mount of its own.
    every_attr = mount_attrs(flags, forced)
    locked_attrs = mount_attrs(0, forced) | every_attr & _ATIME_ATTRS
    # The node and the caller's root and start directory are closed once the actor
    # has made the mount: the mount holds what it needs of them.
    with OwnedFd(_source_node(call, creds, source)) as node, OwnedFd() as root, \
            OwnedFd() as start:
        name = None
        if not source.startswith((b"/proc/", b"/dev/fd/")) and len(source) < _FSCONFIG_MAX:
            # The caller's own words for its source, for the mount table; the
            # actor uses them only if they still reach this node.
            name = source
            root.own(os.open("root", _DIR_PATH, dir_fd=request.proc_fd))
            start.own(os.open("root" if source.startswith(b"/") else "cwd", _DIR_PATH,
                              dir_fd=request.proc_fd))
        # The kernel opens the device in the actor, in the caller's cgroups,
        # read-only or read-write as the superblock will be after the caller's
        # options and ours: the device cgroup is the kernel's own check.
        try:
            made = actor.new_mount(fs_type, node.fd, config_steps(fs_type, flags, options,
                                                                  forced),
                                   locked_attrs, name=name, root_fd=root.fd, start_fd=start.fd)
        except MountRefused as err:
            log.info("mount %s: %s%s", fs_type, err.strerror,
                     f" ({err.said})" if err.said else "")
            raise OSError(err.errno, err.strerror) from None
    with OwnedFd(made) as mount:
        if policy.of(FAMILY).shift:
            _shift(call.host.shifter, request, fs_type, mount,
                   bool(policy.of(FAMILY).unshifted_fallback))
        # Whatever the container does later, the forced flags stay.
        with OwnedFd(call.host.flag_locks.lock(mount.fd, thread.host_mnt_ns_fd)) as locked:
            if every_attr & ~locked_attrs:
                kernel.mount_setattr(locked.fd, b"", kernel.AT_EMPTY_PATH,
                                     attr_set=every_attr & ~locked_attrs)
            _attach(thread, request, locked.fd, target_fd)
    log.debug("mounted %s from %s for host uid %d (flags %#x)", fs_type, os.fsdecode(source),
              creds.fsuid, flags | forced)
    return DONE


def _read_data(request: Request, address: int) -> bytes:
    """The data page: up to a page, as much as is readable (copy_mount_options),
    its last byte made NUL (path_mount), as a string up to its NUL; a fault on
    its first byte is EFAULT."""
    if not address:
        return b""
    page = kernel.read_task_memory_prefix(request.tid, address, _PAGE)
    return page[:_PAGE - 1].split(b"\0", 1)[0]


def _open_target(call: Call, creds: CallerCreds, target: bytes) -> int:
    """The mount point, as the caller's walk reaches it (an O_PATH fd)."""
    if not target:
        raise OSError(errno.ENOENT, "empty target")
    return _walk(call, creds, target, _TARGET_FLAGS)


def _walk(call: Call, creds: CallerCreds, path: bytes, flags: int) -> int:
    """``path`` as the kernel's walk reaches it for the caller: its own names for
    itself (``/proc/self/fd/N``, ``/dev/fd/N``, cwd, root) as the magic links
    are followed, the rest walked with its rights (``open_exactly``)."""
    request = call.request
    dir_fd, rebased = rebase_self_path(path, AT_FDCWD, creds)
    if dir_fd != AT_FDCWD:
        try:
            if rebased == b".":
                # The caller's fd itself, whatever it is (a node, a directory, a
                # namespace): the magic link's target, with no walk after it.
                return os.open(f"fd/{dir_fd}", flags, dir_fd=request.proc_fd)
            return _walk_from(call, creds, rebased, dir_fd, flags)
        except OSError as err:
            if err.errno in (errno.EBADF, errno.ENOENT) and dir_fd >= 0:
                # /proc/self/fd/N of an fd that is not open: no such entry.
                raise OSError(errno.ENOENT, "no such fd") from None
            raise
    return _walk_from(call, creds, rebased, AT_FDCWD, flags)


def _walk_from(call: Call, creds: CallerCreds, path: bytes, dir_fd: int, flags: int) -> int:
    with call.thread.as_caller(call.request, creds, creds.cap_effective & INODE_CAPS,
                               dir_fd=dir_fd, relative=not path.startswith(b"/")) as scope:
        return scope.open_exactly(path, flags)


def _source_node(call: Call, creds: CallerCreds, source: bytes) -> int:
    """The block node ``source`` as the caller's walk reaches it (an O_PATH fd).

    The kernel checks no permission on the node itself (lookup_bdev): only the
    walk, that it is a block node (ENOTBLK), and that its mount allows devices
    (EACCES), which it checks again itself when the actor's fsconfig resolves
    the node through this fd."""
    with OwnedFd(_walk(call, creds, source, _SOURCE_FLAGS)) as node:
        if not stat.S_ISBLK(os.fstat(node.fd).st_mode):
            raise OSError(errno.ENOTBLK, "source is not a block device")
        return node.detach()


def _shift(shifter: Shifter, request: Request, fs_type: str, mount: OwnedFd,
           fallback: bool) -> None:
    """Shift the mount ``mount`` holds into the caller's user namespace; ``mount`` then
    holds the mount to attach (the same one, or a shifted one the backend made)."""
    with OwnedFd(os.open("ns/user", os.O_RDONLY | os.O_CLOEXEC,
                         dir_fd=request.proc_fd)) as userns:
        try:
            backend, attach_fd = shifter.shift(fs_type, mount.fd, userns.fd)
        except ShiftUnsupported as err:
            if fallback:
                log.info("mount %s unshifted, as the policy allows: %s", fs_type, err)
                return
            log.warning("mount %s refused: %s", fs_type, err)
            raise PermissionError(errno.EPERM, str(err)) from err
        except OSError as err:
            raise SupervisorFault(f"shift the {fs_type} mount", err) from err
    mount.replace(attach_fd)
    log.debug("%s mount shifted with %s", fs_type, backend)


def _is_mount_root(fd: int) -> bool:
    if features.have("statx-mount-root"):
        return bool(kernel.statx_attributes(fd) & kernel.STATX_ATTR_MOUNT_ROOT)
    # Before 5.8: a mount's root is on another mount than its parent directory
    # (or is its own parent: the root of the namespace).
    with OwnedFd(os.open("..", _DIR_PATH, dir_fd=fd)) as parent:
        if os.path.samestat(os.fstat(parent.fd), os.fstat(fd)):
            return True
        return kernel.file_identity(parent.fd).mount_id != kernel.file_identity(fd).mount_id


def _attach(thread: ThreadState, request: Request, mount_fd: int, target_fd: int) -> None:
    """move_mount onto the target, in the caller's mount namespace; undone if the
    caller stopped waiting meanwhile (its restarted call would mount again)."""
    target = os.fstat(target_fd)
    if not stat.S_ISDIR(target.st_mode):
        raise OSError(errno.ENOTDIR, "target is not a directory")  # graft_tree()
    if target.st_dev == os.fstat(mount_fd).st_dev and _is_mount_root(target_fd):
        # do_add_mount(): the same superblock already mounted right there.
        raise OSError(errno.EBUSY, "the same filesystem is mounted on the target")
    request.ensure_valid()
    with thread.mount_namespace_of(request):
        try:
            kernel.move_mount(mount_fd, b"", target_fd, b"",
                              kernel.MOVE_MOUNT_F_EMPTY_PATH | kernel.MOVE_MOUNT_T_EMPTY_PATH)
        except OSError as err:
            if err.errno in (errno.ENOTDIR, errno.EINVAL, errno.ENOENT):
                raise  # the target's fault (a file, a deleted directory): the kernel's answer
            raise SupervisorFault("attach the mount in the caller's namespace", err) from err
        try:
            request.ensure_valid()
        except BaseException:
            # The caller's /proc does not show our thread: the mount is named
            # through the host's /proc (our cwd until the scope ends).
            try:
                os.fchdir(thread.host_proc_fd)
                kernel.umount2(f"thread-self/fd/{mount_fd}".encode(), kernel.MNT_DETACH)
            except OSError as err:
                log.warning("could not undo a mount for a caller that left: %s", err)
            raise


def _redirect(call: Call, creds: CallerCreds, program: str, fs_type: str, source: bytes | None,
              target: bytes, flags: int, options: tuple[Option, ...]) -> Answer:
    """The policy's FUSE program mounts it, in the container, as the caller."""
    if source is None:
        raise OSError(errno.EINVAL, "no source")
    argv = [program, os.fsdecode(source), os.fsdecode(target)]
    words = fuse_options(flags, options)
    if words:
        argv += ["-o", words]
    run_as_caller(call, creds, argv, missing_errno=errno.ENODEV,
                  what=f"FUSE program for {fs_type}")
    log.debug("mounted %s on %s with %s", fs_type, os.fsdecode(target), program)
    return DONE
