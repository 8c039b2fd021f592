"""Run a program for the container, entirely as the caller (the FUSE redirect).

What the program gets, and from where (the actor, ``caller/actor.py``, does it):

* every namespace of the caller: ``/proc/TID/ns/{user,mnt,pid,net,uts,ipc,cgroup,time}``;
* its cgroups: the actor it is forked from lives in the caller's;
* its ids and groups, mapped into the container (``/proc/TID/status``: Uid,
  Gid, Groups), its umask, root and cwd (``/proc/TID/{root,cwd}``);
* its capability sets and bounding set (CapEff, CapPrm, CapInh, CapBnd) and
  no_new_privs (NoNewPrivs);
* the container's seccomp policy: the rules we compiled for it (LXC's
  defaults, ours), with a listener of its own that the dispatcher serves on
  another thread.

* its resource limits (``prlimit``) and OOM score adjustment, where they are
  not above ours (raising either needs host privilege the daemon lacks).

* its AppArmor profile, for the exec (``change_onexec``), where the host has
  AppArmor and the caller is confined; if AppArmor refuses, the program does
  not run (EPERM), rather than run unconfined.

What it cannot get: the caller's securebits (Linux shows no other task's
securebits anywhere; the program gets none, as a container's root has by
default); an SELinux or Smack label (not handled: Debian's LXC uses AppArmor).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
from typing import Any

from .. import kernel
from ..caller.actor import NAMESPACES, ProgramOrder, actor_for, seccomp_rules_wire
from ..caller.task import CallerCreds, status_field
from ..kernel.fd import OwnedFd
from ..policy.filter import ArgMatch, Rule
from ..policy.lxc_policy import rules as lxc_rules
from .call import Call

log = logging.getLogger(__name__)

_MISSING = 127  # the shell's "command not found"
_LSM_REFUSED = 125  # caller/actor.py: the caller's AppArmor profile could not be set
_MNT_FORCE = 1
# LXC's default profile says reject_force_umount: umount2(MNT_FORCE) is EACCES.
_REJECT_FORCE_UMOUNT = Rule("umount2", errno.EACCES, (ArgMatch(1, _MNT_FORCE, mask=_MNT_FORCE),))


_RLIMITS = tuple(getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_"))


def _limits(tid: int) -> list[tuple[int, int, int]]:
    """The caller's resource limits (per process: any of its threads' ids names them);
    checked valid with the rest of the order."""
    return [(r, *resource.prlimit(tid, r)) for r in sorted(set(_RLIMITS))]


def _proc_int(proc_fd: int, name: str, base: int = 10) -> int:
    """A number one /proc/TID file holds (oom_score_adj, personality, timerslack_ns)."""
    with OwnedFd(os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)) as fd:
        return int(os.read(fd.fd, 64).strip() or b"0", base)


def _scheduling(tid: int, proc_fd: int) -> dict[str, Any]:
    """What a child of the caller would inherit for CPU and I/O (ProgramOrder's
    fields); checked valid with the rest of the order."""
    return {"cpus": sorted(os.sched_getaffinity(tid)),
            "nice": os.getpriority(os.PRIO_PROCESS, tid),
            "sched_policy": os.sched_getscheduler(tid),
            "sched_priority": os.sched_getparam(tid).sched_priority,
            "ioprio": kernel.ioprio_get(tid),
            "personality": _proc_int(proc_fd, "personality", 16),
            "timerslack_ns": _timerslack(proc_fd)}


def _timerslack(proc_fd: int) -> int:
    """Another task's timer slack is readable only with CAP_SYS_NICE (the mount
    family declares it); without, -1: the program keeps ours, and says so."""
    try:
        return _proc_int(proc_fd, "timerslack_ns")
    except PermissionError:
        return -1


def apparmor_label(proc_fd: int) -> str:
    """The caller's AppArmor profile ("" where it is unconfined or the host has no
    AppArmor): ``/proc/TID/attr/apparmor/current`` says "NAME (MODE)"."""
    for name in ("attr/apparmor/current", "attr/current"):
        try:
            attr = OwnedFd(os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd))
        except (FileNotFoundError, PermissionError):
            continue
        with attr:
            try:
                text = os.read(attr.fd, 4096).decode(errors="replace").strip().rstrip("\0")
            except OSError:
                return ""  # no LSM answers this attribute here
        label = text.rsplit(" (", 1)[0] if text.endswith(")") else text
        return "" if label in ("", "unconfined") else label
    return ""


def run_as_caller(call: Call, creds: CallerCreds, argv: list[str], *, missing_errno: int,
                  what: str) -> None:
    """Run ``argv`` as the caller inside its container and wait for its foreground part.

    Exit 0 returns.  A program the container lacks is ``missing_errno``; a
    program that fails is EIO (its stderr in the log); our own steps that
    fail are a SupervisorFault with their errno."""
    request, thread = call.request, call.thread
    view = request.container
    uids = tuple(view.uid_map.to_inside(u) for u in creds.uids)
    gids = tuple(view.gid_map.to_inside(g) for g in creds.gids)
    if None in uids or None in gids:
        raise OSError(errno.EPERM, "caller's ids are not mapped in the container")
    status = thread.status.read(request)
    order = ProgramOrder(
        argv=argv,
        uid=uids,  # type: ignore[arg-type]  # no None: checked above
        gid=gids,  # type: ignore[arg-type]
        groups=[g for g in (view.gid_map.to_inside(h) for h in creds.groups) if g is not None],
        umask=creds.umask,
        cap_bounding=int(status_field(status, b"CapBnd"), 16),
        cap_effective=creds.cap_effective,
        cap_permitted=int(status_field(status, b"CapPrm"), 16),
        cap_inheritable=int(status_field(status, b"CapInh"), 16),
        securebits=0,
        no_new_privs=status_field(status, b"NoNewPrivs") == b"1",
        seccomp=seccomp_rules_wire([*lxc_rules(call.policy), _REJECT_FORCE_UMOUNT]),
        rlimits=_limits(request.tid),
        oom_score_adj=_proc_int(request.proc_fd, "oom_score_adj"),
        lsm_label=apparmor_label(request.proc_fd),
        cap_ambient=int(status_field(status, b"CapAmb") or b"0", 16),
        **_scheduling(request.tid, request.proc_fd),
    )
    actor = actor_for(thread, request)
    with contextlib.ExitStack() as held:
        fds: list[int] = []
        for name, _ in NAMESPACES:
            try:
                fd = os.open(f"ns/{name}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=request.proc_fd)
            except FileNotFoundError:
                fd = -1  # a kernel without that namespace: nothing to enter
            fds.append(held.enter_context(OwnedFd(fd)).fd)
        for name in ("root", "cwd"):
            fds.append(held.enter_context(OwnedFd(os.open(
                name, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=request.proc_fd))).fd)
        request.ensure_valid()  # the fds are the caller's, not a successor's
        report = actor.run_program(order, fds[:len(NAMESPACES)], fds[-2], fds[-1],
                                   call.serve_listener)
    if report.get("unmatched"):
        log.info("%s for %s runs with ours where the caller's are higher: %s", what,
                    view.name, ", ".join(map(str, report["unmatched"])))
    code = report.get("exit")
    if code == 0:
        return
    stderr = str(report.get("stderr", "")).strip()
    if code == _LSM_REFUSED:
        log.warning("%s: AppArmor refused the caller's profile for %s (%s)", what, argv[0],
                    view.name)
        raise OSError(errno.EPERM, "the caller's AppArmor profile could not be applied")
    if code == _MISSING:
        log.warning("%s: %r is not in the container (%s)", what, argv[0], view.name)
        raise OSError(missing_errno, f"{argv[0]} not found in the container")
    log.warning("%s %s failed (exit %s): %s", what, argv[0], code, stderr[-500:] or "no message")
    raise OSError(errno.EIO, f"{argv[0]} failed")

