"""bpf(2) for cgroup device programs: loaded, attached and detached for a container.

The rules are ``policy/bpf.py``'s.  Here is what they are applied to, read
as the kernel would read it for the caller:

* **The attr and the instructions** come from the caller's memory
  (``process_vm_readv``: a page it cannot read is EFAULT, as for the
  kernel's copy), the size first (above a page E2BIG), the notification
  checked valid before anything is done.  Every pointer is the caller's and
  never reaches the kernel: the actor gets the bytes and puts its own.
* **An attach's attr** goes first to the kernel itself with every fd field
  -1 (``policy.dry_run``): the kernel answers what it finds before the fds
  (E2BIG, EINVAL) and then EBADF, having done nothing; so a hostile attr
  gets the kernel's own errors in the kernel's order.
* **The caller's fds** (the program, the cgroup, a program to replace) are
  copied into our table with ``pidfd_getfd`` (a pidfd of the calling
  thread's own fd table, ``PIDFD_THREAD``, or its thread group's where that
  table is shared), after which the notification is checked valid again:
  the thread id could only have been reused if the caller had gone.
* **The cgroup** is judged by the directory the fd is, never by a name: its
  ancestors are opened with ``..`` one by one (``RESOLVE_NO_XDEV``: the walk
  stops at the root of the mount the caller opened it on) until the
  container's subtree root is met, by device and inode, or not (EPERM).
  The cgroups above that root are walked on the host's own cgroup2 mount.
  Each is asked for its device programs (``BPF_PROG_QUERY``, ours).
* **The steps** run in the actor, in the caller's cgroups
  (``kernel/bpf.py: ACTOR_STEPS``): the load, so the program's memory is
  charged to the container's memory cgroup as the kernel charges its
  loader's; the attach, detach and link, with the fds we copied.  A
  program's or link's fd is placed in the caller with
  ``SECCOMP_IOCTL_NOTIF_ADDFD`` (close-on-exec, as the kernel makes it) and
  is the call's value.  If the caller is interrupted between that and our
  answer, the fd stays in its table unnamed (LXC's proxy answers the
  kernel itself after us: the atomic ``SECCOMP_ADDFD_FLAG_SEND`` is not
  ours to use there).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import logging
import os
import stat
from typing import NoReturn

from .. import kernel
from ..caller.actor import actor_for
from ..caller.task import in_container_userns, read_creds, read_whole_at, status_field
from ..errors import SupervisorFault
from ..kernel import bpf as kbpf
from ..kernel.fd import OwnedFd
from ..policy import bpf as policy
from ..request import DONE, KERNEL_DECIDES, NOT_OURS, Answer, Request
from .call import Call

log = logging.getLogger(__name__)

_DIR: int = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_UP: int = kernel.RESOLVE_NO_XDEV | kernel.RESOLVE_NO_SYMLINKS | kernel.RESOLVE_NO_MAGICLINKS
_DEPTH_MAX = 256  # cgroups walked up from a target before giving up (EPERM)
_LOG_TRUE_SIZE = kbpf.bpf_prog_load_attr.log_true_size.offset

Identity = tuple[int, int]  # (st_dev, st_ino): a cgroup's directory


def handle(call: Call) -> Answer:
    request = call.request
    cmd = policy.command(request.args[0])
    if cmd not in policy.TRAPPED:
        return NOT_OURS  # the filter sends no other; an arch we do not know might
    request.note(cmd=policy.COMMAND_NAMES[cmd])
    size = policy.attr_size(request.args[2])
    load = cmd == kbpf.BPF_PROG_LOAD
    # The kernel's own first answers; for a load the kernel gives them itself
    # (handing a load back is always safe: the kernel then checks the caller).
    too_big = policy.size_refusal(size)
    if too_big:
        if load:
            return KERNEL_DECIDES
        raise OSError(too_big, "the attr's size")
    try:
        data = request.read_bytes(request.args[1], size) if size else b""
    except OSError as err:
        if err.errno != errno.EFAULT or not load:
            raise
        return KERNEL_DECIDES
    if load:
        return _load(call, data)
    return _attach(call, cmd, data)


def _verdict(request: Request, verdict: policy.Kernel | policy.Refused) -> Answer:
    """A refusal raised with its errno (the dispatcher answers it, as every handler's),
    or the call handed back."""
    if isinstance(verdict, policy.Refused):
        log.debug("%s: pid %d bpf refused (%s): %s", request.container.name, request.tid,
                  errno.errorcode.get(verdict.errno, verdict.errno), verdict.why)
        raise OSError(verdict.errno, verdict.why)
    log.debug("%s: pid %d bpf to the kernel: %s", request.container.name, request.tid,
              verdict.why)
    return KERNEL_DECIDES if verdict.ours else NOT_OURS


# --- BPF_PROG_LOAD -------------------------------------------------------------------------


def _load(call: Call, data: bytes) -> Answer:
    request, thread = call.request, call.thread
    parsed = policy.parse_load(data, call.policy.of(policy.FAMILY))
    if not isinstance(parsed, policy.Load):
        return _verdict(request, parsed)
    attr = parsed.attr
    request.note(prog_type=int(attr.prog_type), insns=int(attr.insn_cnt))
    creds = read_creds(request, thread.status)
    admin = creds.has_cap(kernel.CAP_SYS_ADMIN)
    if not (in_container_userns(request, creds) and policy.may_load(
            admin or creds.has_cap(kernel.CAP_BPF), admin or creds.has_cap(kernel.CAP_NET_ADMIN))):
        return _verdict(request, policy.Kernel("the caller lacks CAP_BPF and CAP_NET_ADMIN "
                                               "in the container"))
    refusal = policy.load_refusal(attr)
    if refusal is not None:
        return _verdict(request, refusal)
    # EFAULT for a page the caller cannot read, as the kernel's copies answer.
    insns = request.read_bytes(int(attr.insns), parsed.insns_size)
    license_text = _read_license(request, int(attr.license))
    with contextlib.ExitStack() as fds:
        root = _subtree_root(call, fds)
        chain = [] if root is None else [root, *_up_to_the_top(root, fds)]
        if root is None or policy.replaces_a_program_above(_programs(chain)):
            log.info("%s: pid %d bpf: no device program loaded while a program with "
                     "override or exclusive semantics is on the container's cgroup or "
                     "above it (or the container has no cgroup of its own)",
                     request.container.name, request.tid)
            raise OSError(errno.EPERM, "no device program for this container now")
    request.ensure_valid()
    answer, got = actor_for(thread, request).step("bpf", "prog_load", {
        "attr": parsed.for_actor().hex(), "insns": base64.b64encode(insns).decode(),
        "license": license_text.hex(), "log_size": parsed.log_size,
        "log_buffer": bool(attr.log_buf)})
    with OwnedFd(got[0] if got else -1) as prog, contextlib.ExitStack() as extras:
        for extra in got[1:]:  # more than the one program: not ours to keep
            extras.enter_context(OwnedFd(extra))
        written = _write_log(request, attr, data, answer)
        if written:
            raise OSError(written, "the verifier's log")
        if answer["errno"]:
            raise OSError(int(answer["errno"]), "bpf")
        if prog.fd < 0:
            raise SupervisorFault("load", OSError(errno.EIO, "the actor sent no program"))
        return _give_fd(request, prog.fd)


def _read_license(request: Request, address: int) -> bytes:
    """The license string, as the kernel copies it: up to 127 bytes or its NUL."""
    text = kernel.read_task_memory_prefix(request.tid, address, policy.LICENSE_MAX)
    return text.split(b"\0", 1)[0]


def _write_log(request: Request, attr: kbpf.bpf_prog_load_attr, data: bytes,
               answer: dict[str, object]) -> int:
    """The verifier's log into the caller's buffer and ``log_true_size`` into its attr,
    as the kernel writes them; EFAULT (which the kernel answers then) or 0."""
    if "log" not in answer:
        return 0  # the kernel's call was not made
    try:
        if attr.log_buf and attr.log_level:
            text = base64.b64decode(str(answer.get("log", ""))) + b"\0"
            request.ensure_valid()  # before a write: see sysinfo
            request.write_bytes(int(attr.log_buf), text[:int(attr.log_size)])
        if len(data) >= _LOG_TRUE_SIZE + 4:
            true_size = int(str(answer.get("log_true_size", 0)))
            request.ensure_valid()
            request.write_bytes(request.args[1] + _LOG_TRUE_SIZE,
                                true_size.to_bytes(4, "little"))
    except OSError as err:
        if err.errno != errno.EFAULT:
            raise
        return errno.EFAULT
    return 0


def _give_fd(request: Request, fd: int) -> Answer:
    """``fd`` placed in the caller; its number is the call's value."""
    request.ensure_valid()
    try:
        number = kernel.notif_addfd(request.listener_fd, request.notif_id, fd)
    except OSError as err:
        if err.errno == errno.ENOENT:
            raise request.gone() from None
        if err.errno == errno.EMFILE:
            return Answer(error=errno.EMFILE)  # the caller's fd table: its own answer
        raise
    request.note(fd=number)
    return Answer(val=number)


# --- BPF_PROG_ATTACH, BPF_PROG_DETACH, BPF_LINK_CREATE ------------------------------------


def _attach(call: Call, cmd: int, data: bytes) -> Answer:
    request, thread = call.request, call.thread
    parsed = policy.parse_attach(cmd, data)
    if not isinstance(parsed, policy.Attach):
        return _verdict(request, parsed)
    request.note(target_fd=parsed.target_fd, prog_fd=parsed.prog_fd, flags=parsed.flags)
    try:
        kbpf.bpf_bytes(cmd, policy.dry_run(cmd, data))
    except OSError as err:
        if err.errno != errno.EBADF:
            raise OSError(err.errno or errno.EIO, "the kernel's check of the attr") from None
    else:
        raise SupervisorFault("check the attr", OSError(errno.EIO, "bpf took an attr "
                                                                 "whose fds are all -1"))
    creds = read_creds(request, thread.status)
    net_admin = in_container_userns(request, creds) and (
        creds.has_cap(kernel.CAP_NET_ADMIN) or creds.has_cap(kernel.CAP_SYS_ADMIN))
    refusal = policy.attach_refusal(parsed, net_admin)
    if refusal is not None:
        return _verdict(request, refusal)
    tgid = int(status_field(thread.status.read(request), b"Tgid") or request.tid)
    with contextlib.ExitStack() as fds:
        pidfd = kbpf.pidfd_of_thread(request.tid, tgid)
        fds.callback(os.close, pidfd)
        request.ensure_valid()  # the thread id was still the caller's when opened
        if cmd == kbpf.BPF_PROG_DETACH:
            return _detach(call, parsed, pidfd, fds)
        prog = _fetch(pidfd, parsed.prog_fd, fds)
        if kbpf.prog_type_of(prog, thread.host_proc_fd) != kbpf.BPF_PROG_TYPE_CGROUP_DEVICE:
            raise OSError(errno.EINVAL, "not a device program")
        target = _fetch_cgroup(pidfd, parsed.target_fd, fds)
        chain = _ancestors_in_subtree(call, target, fds)
        if chain is None:
            _outside(request)
        if policy.replaces_a_program_above(_programs(chain)):
            return _verdict(request, policy.Refused(
                errno.EPERM, "a cgroup above holds a program with override or exclusive "
                             "semantics: one attached below would replace it"))
        sent = [target, prog]
        if parsed.replace_fd >= 0:
            replaced = _fetch(pidfd, parsed.replace_fd, fds)
            if kbpf.prog_type_of(replaced, thread.host_proc_fd) != \
                    kbpf.BPF_PROG_TYPE_CGROUP_DEVICE:
                raise OSError(errno.EINVAL, "not a device program")
            sent.append(replaced)
        request.ensure_valid()
        step = "link_create" if cmd == kbpf.BPF_LINK_CREATE else "prog_attach"
        answer, got = actor_for(thread, request).step(
            "bpf", step, {"attach_type": kbpf.BPF_CGROUP_DEVICE, "flags": parsed.flags}, sent)
        for fd in got:
            fds.callback(os.close, fd)
        if answer["errno"]:
            raise OSError(int(answer["errno"]), "bpf")
        if cmd == kbpf.BPF_LINK_CREATE:
            if not got:
                raise SupervisorFault("link", OSError(errno.EIO, "the actor sent no link"))
            return _give_fd(request, got[0])
        return DONE


def _detach(call: Call, parsed: policy.Attach, pidfd: int, fds: contextlib.ExitStack) -> Answer:
    """The kernel's order: the cgroup, then the program (without a valid one, a multi
    cgroup is EINVAL)."""
    request, thread = call.request, call.thread
    target = _fetch_cgroup(pidfd, parsed.target_fd, fds)
    if _ancestors_in_subtree(call, target, fds) is None:
        _outside(request)
    refusal = policy.detach_refusal(*kbpf.prog_query(target, kbpf.BPF_CGROUP_DEVICE))
    if refusal is not None:
        return _verdict(request, refusal)
    try:
        prog = _fetch(pidfd, parsed.prog_fd, fds)
    except OSError as err:
        if err.errno != errno.EBADF:
            raise
        raise OSError(errno.EINVAL, "no program to detach") from None
    if kbpf.prog_type_of(prog, thread.host_proc_fd) != kbpf.BPF_PROG_TYPE_CGROUP_DEVICE:
        raise OSError(errno.EINVAL, "not a device program")
    request.ensure_valid()
    answer, got = actor_for(thread, request).step(
        "bpf", "prog_detach", {"attach_type": kbpf.BPF_CGROUP_DEVICE}, [target, prog])
    with contextlib.ExitStack() as unwanted:  # a detach hands back no fd to keep
        for fd in got:
            unwanted.enter_context(OwnedFd(fd))
    if answer["errno"]:
        raise OSError(int(answer["errno"]), "bpf")
    return DONE


def _outside(request: Request) -> NoReturn:
    log.info("%s: pid %d bpf: the cgroup is not in the container's own subtree (EPERM)",
             request.container.name, request.tid)
    raise OSError(errno.EPERM, "not in the container's subtree")


def _fetch(pidfd: int, number: int, fds: contextlib.ExitStack) -> int:
    """The caller's fd ``number``, copied into our table (EBADF if it has none; an
    O_PATH file is EBADF to bpf(2) as well)."""
    fd = kbpf.pidfd_getfd(pidfd, number)
    fds.callback(os.close, fd)
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH:
        raise OSError(errno.EBADF, "an O_PATH file")
    return fd


def _fetch_cgroup(pidfd: int, number: int, fds: contextlib.ExitStack) -> int:
    """The caller's fd ``number``, which must be a cgroup v2 directory (EBADF, as the
    kernel's cgroup_get_from_fd says of anything else)."""
    fd = _fetch(pidfd, number, fds)
    if kernel.fs_type(fd) != kbpf.CGROUP2_SUPER_MAGIC or not stat.S_ISDIR(os.fstat(fd).st_mode):
        raise OSError(errno.EBADF, "not a cgroup v2 directory")
    return fd


# --- the container's cgroups ---------------------------------------------------------------


def _identity(fd: int) -> Identity:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _subtree_root(call: Call, fds: contextlib.ExitStack) -> int | None:
    """The container's subtree root on the host's cgroup2 mount (O_RDONLY), None if
    the container has none of its own."""
    request, thread = call.request, call.thread
    path = policy.container_subtree(
        thread.cgroup.read(request),
        read_whole_at(thread.host_proc_fd, f"{request.container.init_pid}/cgroup"))
    if path is None:
        return None
    mount = policy.cgroup2_mount(read_whole_at(thread.host_proc_fd, "self/mountinfo").decode(
        errors="surrogateescape"))
    if mount is None:
        return None
    with OwnedFd(os.open(mount, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)) as top:
        try:
            root = kernel.openat2(top.fd, os.fsencode(path.lstrip("/")), _DIR,
                                  kernel.RESOLVE_BENEATH | _UP)
        except FileNotFoundError:
            return None  # the container's cgroup went away meanwhile
    fds.callback(os.close, root)
    return root


def _parent(fd: int, fds: contextlib.ExitStack) -> int | None:
    """The cgroup above ``fd`` on the same mount, None at the mount's root."""
    try:
        parent = kernel.openat2(fd, b"..", _DIR, _UP)
    except OSError as err:
        if err.errno == errno.EXDEV:
            return None
        raise
    fds.callback(os.close, parent)
    return parent


def _up_to_the_top(fd: int, fds: contextlib.ExitStack) -> list[int]:
    """Every cgroup above ``fd`` (on the host's mount), nearest first."""
    found: list[int] = []
    for _ in range(_DEPTH_MAX):
        parent = _parent(fd, fds)
        if parent is None:
            return found
        found.append(parent)
        fd = parent
    raise OSError(errno.ELOOP, "cgroup hierarchy deeper than we walk")


def _ancestors_in_subtree(call: Call, target: int, fds: contextlib.ExitStack
                          ) -> list[int] | None:
    """Every cgroup above ``target`` up to the top of the hierarchy, nearest first,
    if ``target`` is in the container's subtree (the subtree root met by its
    identity while walking up); None otherwise."""
    root = _subtree_root(call, fds)
    if root is None:
        return None
    wanted = _identity(root)
    above_root = _up_to_the_top(root, fds)
    if _identity(target) == wanted:
        return above_root
    chain, fd = [], target
    for _ in range(_DEPTH_MAX):
        parent = _parent(fd, fds)
        if parent is None:
            return None  # left the caller's mount without meeting the root
        chain.append(parent)
        if _identity(parent) == wanted:
            return chain + above_root
        fd = parent
    return None


def _programs(cgroups: list[int]) -> list[tuple[int, int]]:
    """(flags, count) of the device programs of each cgroup."""
    return [kbpf.prog_query(fd, kbpf.BPF_CGROUP_DEVICE) for fd in cgroups]
