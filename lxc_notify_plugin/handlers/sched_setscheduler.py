"""sched_setscheduler(2) and sched_setparam(2) on a task of the caller's pid namespace.

For a caller with CAP_SYS_NICE in the container's user namespace: the pid
is translated from the caller's pid namespace to the host's (0: the calling
thread), the target must be in the container's user namespace or one
below it (CAP_SYS_NICE in the container covers nothing else: EPERM), and
the kernel's own call is made on it with CAP_SYS_NICE as the only
capability, so its checks on policy, priority and RT budget give its
errors.  Argument errors the kernel finds before looking the pid up (a
negative policy or pid, a NULL param) are left to it (CONTINUE), and so is
every caller without CAP_SYS_NICE.

The call names its target by number, and Linux has no pidfd form of it:
between the translation and the call the target could exit and its host
id be reused.  Ids are allocated cyclically up to pid_max, so reuse within
that window needs the whole id space to turn over in microseconds.
"""

from __future__ import annotations

import errno
import os
import sys

from .. import kernel
from ..caller.task import host_pid, in_container_userns, read_creds
from ..kernel.fd import OwnedFd
from ..request import DONE, KERNEL_DECIDES, Answer, Request
from .call import Call


def handle(call: Call) -> Answer:
    request, thread = call.request, call.thread
    args = request.args
    pid = to_int(args[0])
    if request.syscall == "sched_setscheduler":
        policy: int | None = to_int(args[1])
        param_address = args[2]
    else:
        policy, param_address = None, args[1]
    creds = read_creds(request, thread.status)
    if not (in_container_userns(request, creds) and creds.has_cap(kernel.CAP_SYS_NICE)):
        return KERNEL_DECIDES
    if pid < 0 or not param_address or (policy is not None and policy < 0):
        return KERNEL_DECIDES  # EINVAL, before the pid is looked up
    # struct sched_param { int sched_priority; }
    priority = int.from_bytes(request.read_bytes(param_address, 4), sys.byteorder, signed=True)
    request.note(pid=pid, priority=priority, **({} if policy is None else {"policy": policy}))
    request.ensure_valid()
    target = host_pid(request, pid, thread.proc_root)
    request.note(host_pid=target)
    check_in_container(request, thread.host_proc_fd, target)
    request.ensure_valid()
    param = os.sched_param(priority)
    with thread.as_caller(request, creds, 1 << kernel.CAP_SYS_NICE):
        if policy is None:
            os.sched_setparam(target, param)
        else:
            os.sched_setscheduler(target, policy, param)
    return DONE


def check_in_container(request: Request, host_proc_fd: int, tid: int) -> None:
    """EPERM unless task ``tid`` is in the container's user namespace or below it."""
    try:
        if os.readlink(f"{tid}/ns/user", dir_fd=host_proc_fd) == request.container.user_ns:
            return
        fd = os.open(f"{tid}/ns/user", os.O_RDONLY | os.O_CLOEXEC, dir_fd=host_proc_fd)
    except FileNotFoundError:
        raise OSError(errno.ESRCH, "the target exited") from None
    wanted = request.container.user_ns
    with OwnedFd(fd) as userns:
        while True:
            try:
                parent = kernel.ns_get_parent(userns.fd)
            except PermissionError:  # above the host's own namespace: not below the container's
                raise OSError(errno.EPERM, "target outside the container's user namespace"
                              ) from None
            userns.replace(parent)  # one level up, the one below closed
            if f"user:[{os.fstat(userns.fd).st_ino}]" == wanted:
                return


def to_int(register: int) -> int:
    value = register & 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value
