"""setxattr(2), lsetxattr(2) and fsetxattr(2) of the attribute names the policy allows.

A user namespace's root cannot set ``trusted.*`` attributes (the kernel asks
for CAP_SYS_ADMIN in the host's namespace), which overlayfs mounted by the
host, and storage drivers written for privileged containers, rely on.  For
a name the profile allows and a caller holding CAP_SYS_ADMIN in the
container's user namespace, the attribute is set on the file the caller
named, by the kernel's own setxattr, with:

* the file found as the caller finds it (``caller/thread.py``: its root,
  cwd, the exact walk; ``lsetxattr`` keeps a last symlink; ``fsetxattr``
  takes the caller's own open file, and refuses an O_PATH one, EBADF);
* the caller's fsuid, fsgid and groups, and of capabilities CAP_SYS_ADMIN
  (which the caller holds in its namespace) plus its DAC capabilities only
  where the file's owner and group are mapped into the container: the
  kernel then checks write permission on the inode exactly as it would for
  the caller if its CAP_SYS_ADMIN counted;
* a file whose owner or group the container does not map refused (EPERM),
  as the kernel refuses xattr changes on inodes with unmapped ids;
* the kernel's own answers for everything else: XATTR_CREATE on an existing
  attribute is EEXIST, XATTR_REPLACE on a missing one ENODATA, a read-only
  mount EROFS, an immutable file EPERM.

Everything before the decision is left to the kernel (CONTINUE): bad flags,
an unreadable or too long name, a value over 64 KiB, a name not allowed, a
caller without CAP_SYS_ADMIN; the kernel answers those as it would without us.

The act goes through ``/proc/thread-self/fd/N`` of an O_PATH fd of ours for
the file: setxattr cannot take an O_PATH fd, and the magic link lands on the
file itself (a symlink stays a symlink), on the mount the caller reached.
That path must be the host's /proc, so a relative path (resolved under a
chroot to the caller's root) is acted on in a second, unchrooted scope.
"""

from __future__ import annotations

import errno
import logging
import os

from .. import kernel
from ..caller.task import INODE_CAPS, in_container_userns, read_creds, rebase_self_path
from ..caller.thread import AT_FDCWD, CallerScope
from ..kernel.fd import OwnedFd
from ..policy.setxattr import (
    FAMILY,
    XATTR_CREATE,
    XATTR_NAME_MAX,
    XATTR_REPLACE,
    XATTR_SIZE_MAX,
    name_allowed,
)
from ..request import DONE, KERNEL_DECIDES, NOT_OURS, Answer, Request
from .call import Call

log = logging.getLogger(__name__)

_O_PATH_FLAG = 0o10000000  # O_PATH as /proc/PID/fdinfo prints it (octal "flags:")
_SYS_ADMIN = 1 << kernel.CAP_SYS_ADMIN


def handle(call: Call) -> Answer:
    request, thread, policy = call.request, call.thread, call.policy
    target, name_address, value_address, size, flags = request.args[:5]
    flags &= 0xFFFFFFFF  # an int in the kernel
    if flags & ~(XATTR_CREATE | XATTR_REPLACE):
        return KERNEL_DECIDES  # EINVAL (or, for fsetxattr, EBADF first)
    try:
        name = request.read_string(name_address, XATTR_NAME_MAX + 1)
    except OSError as err:
        if err.errno in (errno.EFAULT, errno.ENAMETOOLONG):
            return KERNEL_DECIDES  # EFAULT or ERANGE, after any EBADF
        raise
    if not name or not name_allowed(policy.of(FAMILY).allowed, name):
        return NOT_OURS
    request.note(name=name, size=size, flags=flags)
    if size > XATTR_SIZE_MAX:
        return KERNEL_DECIDES  # E2BIG
    creds = read_creds(request, thread.status)
    if not (in_container_userns(request, creds) and creds.has_cap(kernel.CAP_SYS_ADMIN)):
        log.debug("caller lacks CAP_SYS_ADMIN in the container: the kernel decides")
        return KERNEL_DECIDES
    if request.syscall == "fsetxattr":
        request.note(fd=to_int(target))
        # EBADF comes first for it
        with OwnedFd(open_callers_fd(request, to_int(target))) as file_fd:
            value = request.read_bytes(value_address, size) if size else b""
            request.ensure_valid()  # read everything, then check, then act
            with thread.as_caller(request, creds, _SYS_ADMIN) as scope:
                set_on(scope, file_fd.fd, name, value, flags)
        return DONE
    value = request.read_bytes(value_address, size) if size else b""
    path = request.read_string(target)
    request.note(path=path)
    request.ensure_valid()
    dir_fd, path = rebase_self_path(path, AT_FDCWD, creds)
    relative = not path.startswith(b"/")
    follow = request.syscall == "setxattr"
    open_flags = os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    with OwnedFd() as file_fd:
        with thread.as_caller(request, creds, _SYS_ADMIN, dir_fd=dir_fd,
                              relative=relative) as scope:
            file_fd.own(scope.open_exactly(path, open_flags))
            if not relative:
                set_on(scope, file_fd.fd, name, value, flags)
        if relative:  # acted on outside the chroot: the path below is the host's /proc
            with thread.as_caller(request, creds, _SYS_ADMIN) as scope:
                set_on(scope, file_fd.fd, name, value, flags)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("set %s (%d bytes) on %s for host uid %d", os.fsdecode(name), len(value),
                  os.fsdecode(path), creds.fsuid)
    return DONE


def set_on(scope: CallerScope, file_fd: int, name: bytes, value: bytes, flags: int) -> None:
    """The kernel's setxattr on the file ``file_fd`` (O_PATH), as the caller."""
    owner = kernel.file_identity(file_fd)
    view = scope.request.container
    if not view.maps_owner(owner.uid, owner.gid):
        raise OSError(errno.EPERM, "the file's owner is not mapped into the container")
    scope.set_caps(_SYS_ADMIN | scope.creds.caps_over(view, owner.uid, owner.gid) & INODE_CAPS)
    try:
        os.setxattr(f"{scope.thread.proc_root}/thread-self/fd/{file_fd}", name, value, flags)
    except PermissionError:
        if kernel.fs_type(file_fd) == kernel.FUSE_SUPER_MAGIC:
            # A FUSE mount of the container's refuses every task outside its
            # user namespace, us included: the kernel's own answer stands (EPERM).
            raise OSError(errno.EPERM, "FUSE refuses the supervisor") from None
        raise


def open_callers_fd(request: Request, fd: int) -> int:
    """An O_PATH fd of ours for the caller's open file ``fd``: EBADF for a number it
    has not open, or an O_PATH fd of its (which fsetxattr refuses)."""
    if fd < 0:
        raise OSError(errno.EBADF, "bad fd")
    try:
        info = kernel_fdinfo_flags(request, fd)
        ours = OwnedFd(os.open(f"fd/{fd}", os.O_PATH | os.O_CLOEXEC, dir_fd=request.proc_fd))
    except FileNotFoundError:
        raise OSError(errno.EBADF, "the caller has no such fd") from None
    with ours:
        if info & _O_PATH_FLAG:
            raise OSError(errno.EBADF, "an O_PATH fd")
        return ours.detach()


def kernel_fdinfo_flags(request: Request, fd: int) -> int:
    """The open flags of the caller's fd, from /proc/TID/fdinfo/FD."""
    with OwnedFd(os.open(f"fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC,
                         dir_fd=request.proc_fd)) as info:
        text = os.read(info.fd, 4096)
    for line in text.split(b"\n"):
        if line.startswith(b"flags:"):
            return int(line.split()[1], 8)
    return 0


def to_int(register: int) -> int:
    """A C int argument (an fd) from its register."""
    value = register & 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value
