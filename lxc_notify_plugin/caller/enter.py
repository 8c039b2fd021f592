"""Run a program inside the container as the caller: its namespaces, root, cwd, ids, cgroups.

The FUSE redirect of the mount handler runs a program (``fuse2fs``) that the
container itself provides, so that the mount needs no host privilege, is
judged by the kernel as the caller's own, and dies with the container.  It
must therefore run with nothing of the daemon's: the caller's user, mount
and pid namespaces, its root and cwd (the program is found in the
container's own root), its ids as the container sees them, and its cgroups
(so its memory and pids count against the container, not the host).

How, given that the daemon is threaded (no ``os.fork()`` there, no
``setns(CLONE_NEWUSER)`` either): the daemon *spawns* this module as a fresh
process (fork and exec in C) with the namespace and directory fds, while
still host root.  The spawner joins the caller's cgroups (it must still be
host root to write their ``cgroup.procs``), makes itself undumpable, enters
the namespaces (user first: its capabilities there let it enter the
others), takes the caller's root and cwd and ids, then forks the program:
only a child enters a pid namespace.  It waits for the program's foreground
process (a FUSE program returns once it has mounted and daemonized) and
reports on stdout, as one JSON line, how it ended.

What stays the daemon's: the container's seccomp filter, which only its
own tasks inherit (the program's own mount(2) of ``fuse`` must not come back
to us, which would deadlock LXC's one-at-a-time proxy), and an LSM profile
where the host has one (this host has none): see docs/CONTEXT.md.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from .. import kernel
from ..errors import SupervisorFault
from ..host.cgroups import procs_files
from ..request import Request
from .task import CallerCreds

if TYPE_CHECKING:
    from .thread import CallerThread

log = logging.getLogger(__name__)

_TIMEOUT_S = 20.0  # the program's foreground part; the daemon allows a little more
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MISSING = 127  # the shell's "command not found"


def run_in_container(thread: CallerThread, request: Request, creds: CallerCreds, argv: list[str], *,
                     missing_errno: int, what: str) -> None:
    """Run ``argv`` as the caller inside its container and wait for it.

    Exit 0 returns.  A program the container lacks is ``missing_errno``; a
    program that fails is EIO (its stderr in the log); our own steps that
    fail are a SupervisorFault with their errno.  Run outside any caller
    scope, with the daemon's identity (the spawned process inherits it).
    """
    assert not thread.in_scope, "spawned from the host's root only"
    view = request.container
    uid, gid = view.uid_map.to_inside(creds.uids[1]), view.gid_map.to_inside(creds.gids[1])
    if uid is None or gid is None:
        raise OSError(errno.EPERM, "caller's ids are not mapped in the container")
    groups = [g for g in (view.gid_map.to_inside(h) for h in creds.groups) if g is not None]
    with open("/proc/self/mountinfo") as f:
        cgroups = procs_files(thread.cgroup.read(request), f.read())
    thread.set_ids(0, 0, (), 0o022)
    fds: list[int] = []
    try:
        for name in ("ns/user", "ns/mnt", "ns/pid", "root", "cwd"):
            flags = os.O_RDONLY if name.startswith("ns/") else os.O_PATH | os.O_DIRECTORY
            fds.append(os.open(name, flags | os.O_CLOEXEC, dir_fd=request.proc_fd))
        request.ensure_valid()  # the fds are the caller's, not a successor's
        order = {"argv": argv, "uid": uid, "gid": gid, "groups": groups, "cgroups": cgroups,
                 "fds": fds, "umask": creds.umask}
        process = subprocess.Popen(
            [sys.executable, "-m", "lxc_notify_plugin.caller.enter"], pass_fds=fds,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    finally:
        for fd in fds:
            os.close(fd)
    try:
        out, errors = process.communicate(json.dumps(order).encode(), timeout=_TIMEOUT_S + 4)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise SupervisorFault(f"run the {what}", OSError(errno.ETIMEDOUT, "no answer")) from None
    try:
        report = json.loads(out.decode() or "{}")
    except ValueError:
        report = {}
    if "step" in report:
        raise SupervisorFault(f"{report['step']} for the {what}",
                              OSError(int(report.get("errno", errno.EIO)), "failed"))
    code = report.get("exit")
    if code == 0:
        return
    stderr = str(report.get("stderr", errors.decode(errors="replace"))).strip()
    if code == _MISSING:
        log.warning("%s: %r is not in the container (%s)", what, argv[0], request.container.name)
        raise OSError(missing_errno, f"{argv[0]} not found in the container")
    log.warning("%s %s failed (%s): %s", what, argv[0],
                f"exit {code}" if code is not None else f"spawner exit {process.returncode}",
                stderr[-500:] or "no message")
    raise OSError(errno.EIO, f"{argv[0]} failed")


# --- the spawned process -------------------------------------------------------------------


def _report(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _step(name: str, action: Any, *args: Any) -> None:
    try:
        action(*args)
    except OSError as err:
        _report(step=name, errno=err.errno or errno.EIO)
        sys.exit(1)


def _join_cgroup(path: str) -> None:
    with open(path, "w") as f:
        f.write(str(os.getpid()))


def _spawned(order: dict[str, Any]) -> None:
    userns_fd, mntns_fd, pidns_fd, root_fd, cwd_fd = order["fds"]
    for path in order["cgroups"]:
        _step(f"join cgroup {path}", _join_cgroup, path)
    kernel.set_dumpable(False)
    _step("enter the user namespace", kernel.setns, userns_fd, kernel.CLONE_NEWUSER)
    _step("enter the mount namespace", kernel.setns, mntns_fd, kernel.CLONE_NEWNS)
    _step("enter the pid namespace", kernel.setns, pidns_fd, kernel.CLONE_NEWPID)
    _step("take the caller's root", os.fchdir, root_fd)
    _step("take the caller's root", os.chroot, ".")
    _step("take the caller's cwd", os.fchdir, cwd_fd)
    for fd in order["fds"]:
        os.close(fd)
    _step("take the caller's groups", os.setgroups, order["groups"])
    _step("take the caller's gid", os.setresgid, order["gid"], order["gid"], order["gid"])
    _step("take the caller's uid", os.setresuid, order["uid"], order["uid"], order["uid"])
    os.umask(order["umask"])
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the program: the container's own, in its pid namespace
        try:
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
        except OSError:
            os.dup2(write_end, 0)  # a container without /dev/null still runs it
            os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.closerange(3, 1 << 16)
        argv = order["argv"]
        try:
            os.execvpe(argv[0], argv, {"PATH": _PATH})
        except FileNotFoundError:
            os._exit(_MISSING)
        except OSError:
            os._exit(126)
    os.close(write_end)
    deadline = time.monotonic() + _TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        _report(step="wait for the program", errno=errno.ETIMEDOUT)
        sys.exit(1)
    os.set_blocking(read_end, False)
    try:
        stderr = os.read(read_end, 8192).decode(errors="replace")
    except BlockingIOError:
        stderr = ""
    assert status is not None
    _report(exit=os.waitstatus_to_exitcode(status), stderr=stderr)


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)
    _spawned(json.loads(sys.stdin.read()))
