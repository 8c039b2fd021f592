"""A helper process in the container's user namespace, for steps the kernel must judge there.

The kernel applies a capability to an inode only when the inode's owner and
group are mapped into the caller's user namespace, at every step of a path
walk.  The daemon lives in the host's namespace, where its capabilities
cover every inode, so it cannot reproduce that by itself; a process inside
the container's namespace, holding exactly the caller's ids and
capabilities, gets the kernel's own answer.

Why a process, and why this one:

* a threaded process cannot ``setns(CLONE_NEWUSER)``, and ``os.fork()`` of
  the threaded daemon is unsafe (locks held by other threads), so the helper
  is *spawned* (fork and exec in C, no Python in between) and enters the
  namespace as a fresh single-threaded process;
* it is made undumpable before it enters, so container root, which holds
  CAP_SYS_PTRACE in that namespace, can neither ptrace it nor read its
  memory (its mm belongs to the host's namespace); it is not in the
  container's pid namespace, so no container process can even name it;
* one helper serves a whole container connection: no process creation per
  request.  It dies with the thread that spawned it (PR_SET_PDEATHSIG) and
  exits when its socket closes.

It answers with fds over its socket, and with errors as an errno from a
fixed allowlist; anything else is EIO, logged by the daemon.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys

from .. import kernel
from ..errors import SupervisorFault
from . import cpus

log = logging.getLogger(__name__)

# Errors a path walk can give a caller; the helper reports only these.
ALLOWED_ERRNOS = frozenset({
    errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG,
    errno.EXDEV, errno.EAGAIN, errno.EBADF, errno.EINVAL, errno.ESRCH, errno.EISDIR,
    errno.EEXIST, errno.ENXIO, errno.EROFS, errno.ETXTBSY, errno.EFAULT, errno.ENOMEM})
_ANSWER = struct.Struct("=i")  # 0 and one fd attached, or a positive errno
_TIMEOUT_S = 25  # below LXC's 30 s: a hung walk (a hostile FUSE mount) is ours to end


class UsernsHelper:
    """The daemon's end: one helper process for one container's user namespace."""

    def __init__(self, init_pid: int, user_ns: str, proc_root: str = "/proc") -> None:
        userns_fd = os.open(f"{proc_root}/{init_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        ours, theirs = socket.socketpair(socket.AF_UNIX,
                                         socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            if os.readlink(f"/proc/self/fd/{userns_fd}") != user_ns:
                raise OSError(errno.ESRCH, f"container init {init_pid} is gone")
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lxc_notify_plugin.caller.userns",
                 str(theirs.fileno()), str(userns_fd)],
                pass_fds=(theirs.fileno(), userns_fd), stdin=subprocess.DEVNULL)
            cpus.unpin(self.process.pid)  # spawned from a serving thread, maybe pinned
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            os.close(userns_fd)
        ours.settimeout(_TIMEOUT_S)
        self.sock = ours

    def open_as(self, *, root_fd: int, start_fd: int, path: bytes, flags: int, resolve: int,
                uids: tuple[int, int, int, int], gids: tuple[int, int, int, int],
                groups: tuple[int, ...], caps: int) -> int:
        """openat2 as the caller, inside its user namespace.  Ids (real,
        effective, saved, fs) are the container's own (inside the namespace);
        ``start_fd`` -1 means ``path`` is absolute and resolved in ``root_fd``
        with RESOLVE_IN_ROOT."""
        message = json.dumps({"path": path.hex(), "flags": flags, "resolve": resolve,
                              "uids": list(uids), "gids": list(gids), "groups": list(groups),
                              "caps": caps}).encode()
        fds = [root_fd] if start_fd < 0 else [root_fd, start_fd]
        try:
            socket.send_fds(self.sock, [message], fds)
            data, got, _, _ = socket.recv_fds(self.sock, _ANSWER.size, 1)
        except OSError as err:
            self.close()
            raise SupervisorFault("the user-namespace helper", err) from err
        if len(data) != _ANSWER.size:
            for fd in got:
                os.close(fd)
            self.close()
            raise SupervisorFault("the user-namespace helper",
                                  OSError(errno.EIO, "helper exited"))
        (code,) = _ANSWER.unpack(data)
        if code == 0 and len(got) == 1:
            return got[0]
        for fd in got:
            os.close(fd)
        if code not in ALLOWED_ERRNOS:
            raise SupervisorFault("the user-namespace helper",
                                  OSError(errno.EIO, f"helper answered {code}"))
        raise OSError(code, os.strerror(code))

    @property
    def alive(self) -> bool:
        return self.sock.fileno() >= 0 and self.process.poll() is None

    def close(self) -> None:
        self.sock.close()  # the helper sees EOF and exits
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- the helper's end ---------------------------------------------------------------------


def _serve_one(sock: socket.socket, full_caps: kernel.ThreadCaps) -> bool:
    try:
        data, fds, _, _ = socket.recv_fds(sock, 65536, 2)
    except ConnectionResetError:
        return False
    if not data:
        return False
    chrooted = False
    result = -1
    try:
        request = json.loads(data)
        root_fd = fds[0]
        start_fd = fds[1] if len(fds) > 1 else -1
        groups = tuple(int(g) for g in request["groups"])
        ruid, euid, suid, fsuid = (int(u) for u in request["uids"])
        rgid, egid, sgid, fsgid = (int(g) for g in request["gids"])
        kernel.setgroups_thread(groups)
        # All of the caller's ids, not only the fs ones: a FUSE mount without
        # allow_other admits only tasks whose real, effective and saved ids
        # are its mounter's.  SECBIT_NO_SETUID_FIXUP keeps our capabilities.
        os.setresgid(rgid, egid, sgid)
        os.setresuid(ruid, euid, suid)
        kernel.setfsgid(fsgid, verify=False)
        kernel.setfsuid(fsuid, verify=False)
        # Every credential change resets these: set again after the last one.
        kernel.set_dumpable(False)
        kernel.set_pdeathsig(signal.SIGKILL)
        if start_fd >= 0:
            os.chroot(f"/proc/self/fd/{root_fd}")
            chrooted = True
        kernel.capset(kernel.ThreadCaps(int(request["caps"]) & full_caps.permitted,
                                        full_caps.permitted, full_caps.inheritable))
        path = bytes.fromhex(request["path"])
        result = kernel.openat2(root_fd if start_fd < 0 else start_fd, path,
                                int(request["flags"]), int(request["resolve"]))
        answer = _ANSWER.pack(0)
    except OSError as err:
        answer = _ANSWER.pack(err.errno if err.errno in ALLOWED_ERRNOS else errno.EIO)
    except (ValueError, KeyError, TypeError, IndexError):
        answer = _ANSWER.pack(errno.EIO)
    finally:
        kernel.capset(full_caps)
        if chrooted:
            os.chroot(".")  # cwd is the host's /
        for fd in fds:
            os.close(fd)
    try:
        socket.send_fds(sock, [answer], [result] if result >= 0 else [])
    finally:
        if result >= 0:
            os.close(result)
    return True


def main(argv: list[str]) -> int:
    sock_fd, userns_fd = int(argv[1]), int(argv[2])
    kernel.set_dumpable(False)
    kernel.set_pdeathsig(signal.SIGKILL)
    os.chdir("/")
    kernel.setns(userns_fd, kernel.CLONE_NEWUSER)
    os.close(userns_fd)
    kernel.set_securebits(kernel.SECBIT_NO_SETUID_FIXUP | kernel.SECBIT_NO_SETUID_FIXUP_LOCKED)
    full_caps = kernel.capget()
    with socket.socket(fileno=sock_fd) as sock:
        while _serve_one(sock, full_caps):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
