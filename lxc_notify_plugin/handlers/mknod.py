"""mknod(2) and mknodat(2) of the character and block devices the policy allows.

The node is made as the caller would make it in a privileged container
(``caller/``); where nodes cannot be opened, a usable twin is bound over it
(``handlers/nodes.py``).  Everything the policy does not allow, and every
caller without CAP_MKNOD in the container's user namespace, is handed back
to the kernel unchanged (CONTINUE): the kernel's checks on the caller's own
privileges then give exactly the answer the container would get without us.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat

from .. import kernel
from ..caller.actor import AbandonedNode, Actor, Identity, actor_for
from ..caller.task import INODE_CAPS, in_container_userns, read_creds, rebase_self_path
from ..caller.thread import AT_FDCWD
from ..kernel.fd import OwnedFd
from ..policy.effective import ContainerPolicy
from ..policy.mknod import FAMILY, DeviceRule, choose, mknod_rules, needs_path
from ..policy.profile import KERNEL
from ..request import DONE, KERNEL_DECIDES, NOT_OURS, Answer, Request
from . import nodes
from .call import Call, HostViews

log = logging.getLogger(__name__)

_S_IFMT = 0o170000  # the file type bits of a mode (stat.S_IFMT is a function)


def decode(syscall: str, args: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(dirfd, path address, mode, dev) for either entry point, as the kernel
    reads them: dirfd an int, mode a umode_t, dev the 32-bit new_encode_dev() form."""
    if syscall == "mknod":
        return AT_FDCWD, args[0], args[1] & 0xFFFF, args[2] & 0xFFFFFFFF
    dir_fd = args[0] & 0xFFFFFFFF
    if dir_fd >= 1 << 31:  # AT_FDCWD arrives as 0xffffff9c
        dir_fd -= 1 << 32
    return dir_fd, args[1], args[2] & 0xFFFF, args[3] & 0xFFFFFFFF


_KINDS = {stat.S_IFCHR: "c", stat.S_IFBLK: "b"}


def judge(syscall: str, args: tuple[int, ...], policy: ContainerPolicy,
          host: HostViews) -> Answer | None:
    """The answer from the notification and the policy alone: a node that is not a
    device, a whiteout, a device the profile does not name.  None: the profile may
    allow it, and the caller must be looked at (``handle``)."""
    judged = _judge(syscall, args, policy, host)
    return judged if isinstance(judged, Answer) else None


def _judge(syscall: str, args: tuple[int, ...], policy: ContainerPolicy,
           host: HostViews) -> Answer | tuple[DeviceRule, ...]:
    """``judge``'s decision, or the rules that may allow the node: one derivation
    for the dispatcher's early answer and for ``handle``, which stands alone (it
    is also called without the dispatcher judging first)."""
    _, _, mode, dev = decode(syscall, args)
    kind = _KINDS.get(mode & _S_IFMT)
    if kind is None:  # the filter traps only these two; anything else is not ours to judge
        return NOT_OURS
    rules = mknod_rules(policy.of(FAMILY), kind, os.major(dev), os.minor(dev), host.devices)
    if rules is None:
        return NOT_OURS  # a whiteout (c 0:0): the kernel allows it itself
    return rules or refused(policy)


def describe(syscall: str, args: tuple[int, ...]) -> dict[str, object]:
    """A judged call's audit arguments: the device, the mode and a dirfd, from the
    notification alone.  Not the path: reading it from the caller's memory cost the
    caller 3.2 us before its answer, and more after it, read while the caller runs
    again (bench/mknod_latency.py: 1.54x the responder against 1.31x without the
    read, same run); the kernel reads it itself for the answer it gives."""
    dir_fd, _, mode, dev = decode(syscall, args)
    details: dict[str, object] = {"dev": f"{_KINDS.get(mode & _S_IFMT, '?')} "
                                         f"{os.major(dev)}:{os.minor(dev)}",
                                  "mode": f"{stat.S_IMODE(mode):04o}"}
    if dir_fd != AT_FDCWD:
        details["dirfd"] = dir_fd
    return details


def handle(call: Call) -> Answer:
    request, policy, thread = call.request, call.policy, call.thread
    dir_fd, path_address, mode, dev = decode(request.syscall, request.args)
    rules = _judge(request.syscall, request.args, policy, call.host)
    if isinstance(rules, Answer):  # as the dispatcher answers it when it judges first
        if rules.ours:
            request.note(**describe(request.syscall, request.args))
        return rules
    kind = _KINDS[mode & _S_IFMT]
    major, minor = os.major(dev), os.minor(dev)
    request.note(dev=f"{kind} {major}:{minor}", mode=f"{stat.S_IMODE(mode):04o}")
    creds = read_creds(request, thread.status)
    if not (in_container_userns(request, creds) and creds.has_cap(kernel.CAP_MKNOD)):
        log.debug("caller lacks CAP_MKNOD in the container: the kernel decides")
        _note_path(request, path_address)
        return KERNEL_DECIDES
    # The node is made by the actor in the caller's cgroups: the kernel checks
    # the caller's device cgroup itself (v1 with its exceptions, v2's device
    # programs), after the path and the directory's permissions, as it would.
    actor = actor_for(thread, request)
    path = request.read_string(path_address)
    request.note(path=path, **({} if dir_fd == AT_FDCWD else {"dirfd": dir_fd}))
    request.ensure_valid()  # read everything, then check, then act
    dir_fd, path = rebase_self_path(path, dir_fd, creds)

    placeholder: nodes.Placeholder | None = None
    # The caller's directory: closed once, on every path below.
    with OwnedFd() as parent_dir:
        # The walk is exact (CallerScope.open_exactly); CAP_MKNOD is ours to lend.
        with thread.as_caller(request, creds, 1 << kernel.CAP_MKNOD, dir_fd=dir_fd,
                              relative=not path.startswith(b"/")) as scope:
            opened, leaf = scope.open_parent(path)
            parent_fd = parent_dir.own(opened)
            try:
                parent = kernel.file_identity(parent_fd)
            except PermissionError:
                if not _on_fuse(parent_fd):
                    raise
                return KERNEL_DECIDES
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
            usable = nodes.nodes_usable_on(scope, parent_fd, parent)
        # Made out of the caller's scope: the actor acts as the caller, and this
        # thread holds nothing of the caller's but the directory meanwhile.
        over = creds.caps_over(request.container, parent.uid, parent.gid)
        # CAP_FSETID keeps S_ISGID for a caller outside the file's group
        # (mode_strip_sgid), if the directory's owner is mapped.
        who = Identity(creds.fsuid, creds.fsgid, creds.groups, creds.umask,
                       1 << kernel.CAP_MKNOD | over & (1 << kernel.CAP_FSETID))
        # Refused on the directory's permissions (EACCES; EPERM is the device
        # cgroup's, final), the node is tried again with the caller's DAC
        # capabilities, which reach the directory only if its owner is mapped;
        # second, since most nodes are made where they are not needed.
        dac = over & INODE_CAPS
        if usable and request.early is not None:
            if not _made_and_answered(request, actor, parent_dir, leaf, mode, dev, who, dac):
                return KERNEL_DECIDES
            _log_made(kind, major, minor, path, creds.fsuid, " (the actor answered)")
            return DONE
        try:
            actor.mknodat(parent_fd, leaf, mode, dev, who)
        except PermissionError as err:
            if _on_fuse(parent_fd):
                return KERNEL_DECIDES
            if not dac or err.errno != errno.EACCES:
                raise
            actor.mknodat(parent_fd, leaf, mode, dev, who._replace(caps=who.caps | dac))
        try:
            # A caller interrupted meanwhile (a signal with SA_RESTART makes the
            # kernel restart its call as a new notification) must not find the
            # node of the call it abandoned in its way: undone here.
            request.ensure_valid()
            if not usable:
                placeholder = nodes.Placeholder(parent_fd, leaf, stat.S_IFMT(mode), dev)
        except BaseException:
            nodes.unlink_quietly(parent_fd, leaf)  # no node left behind
            raise
        if placeholder is not None:
            try:
                nodes.overmount_usable_twin(thread, request, placeholder, call.host.nodes)
            except nodes.Detached:
                # A cwd on a lazily unmounted filesystem: the node is made, as the
                # kernel would make it, but stays unusable (no mount can reach it).
                log.warning("%s %d:%d made on a detached mount: it cannot be made usable",
                            kind, major, minor)
            except BaseException:
                nodes.unlink_quietly(parent_fd, leaf)
                raise
            finally:
                placeholder.close()
    _log_made(kind, major, minor, path, creds.fsuid)
    return DONE


def _made_and_answered(request: Request, actor: Actor, parent_dir: OwnedFd, leaf: bytes,
                       mode: int, dev: int, who: Identity, dac: int) -> bool:
    """The node made by the actor, which answers the caller itself as soon as it is
    (the transport's EarlyReply: one hop less in the caller's wait), with the checks
    ``handle`` makes after ``mknodat`` made there: a caller that left meanwhile
    has its node undone; False: a FUSE directory, where the kernel answers.  Only
    for a node usable where it is made (no twin to bind over it after)."""
    assert request.early is not None
    try:
        return actor.mknodat_answering(parent_dir, leaf, mode, dev, who, dac, request.early,
                                       request.listener_fd, request.notif_id)
    except AbandonedNode:
        raise request.gone() from None


def _log_made(kind: str, major: int, minor: int, path: bytes, fsuid: int, how: str = "") -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug("made %s %d:%d at %s for host uid %d%s", kind, major, minor,
                  os.fsdecode(path), fsuid, how)


def _note_path(request: Request, address: int) -> None:
    """The path of a call handed back, for its audit line (one more read of caller
    memory, made only when an audit log keeps it); the kernel reads it again."""
    if not request.keeps_details:
        return
    with contextlib.suppress(OSError):
        request.note(path=request.read_string(address))


def _on_fuse(fd: int) -> bool:
    """A FUSE mount refuses every task that is not its mounter's (or, with
    allow_other, outside its user namespace), the daemon included: where we
    cannot act, the caller gets the kernel's own answer (EPERM)."""
    return kernel.fs_type(fd) == kernel.FUSE_SUPER_MAGIC


def refused(policy: ContainerPolicy) -> Answer:
    """The profile's answer for a node it does not allow: the kernel's own by default."""
    answer = policy.deny_answer("mknod")
    if answer == KERNEL:
        return KERNEL_DECIDES
    return Answer(error=getattr(errno, answer))
