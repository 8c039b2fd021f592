"""Act as the caller: the one way every handler performs a privileged step.

The kernel judges a privileged step (making a device node, opening a block
device for a new superblock, running a program for the container) by the
*acting task's* context: its cgroups decide the device rules (cgroup v1's
``devices`` controller with its exceptions, cgroup v2's BPF device programs,
read versus write), its namespaces decide what it reaches.  A supervisor
that acts from its own context and copies pieces of the caller's by hand
leaks whatever it forgets.  So every such step happens here, in an *actor*:

* a process spawned by the daemon (fork and exec in C: the daemon is
  threaded) that keeps host privilege (root, the host's user and mount
  namespaces: it must make nodes and superblocks the container could not)
  but is placed in **the caller's cgroups**, every v1 hierarchy and v2,
  before it acts.  The kernel's own device cgroup checks then see the
  caller's rules, exceptions and programs included, for exactly the access
  the step needs (``fsconfig(FSCONFIG_CMD_CREATE)`` opens the device read
  only or read-write as the superblock will be; an external journal device
  named by the image's superblock is opened there too);
* one actor per distinct set of cgroups a thread's callers are in (Docker
  inside a container puts its containers in cgroups of their own), kept
  for the next request: no process creation on the hot path;
* a program that keeps running for the container (a FUSE redirect) is
  forked by the actor (it is single-threaded, so fork is safe) and takes
  *everything* of the caller before it execs: every namespace (user, mount,
  pid, net, uts, ipc, cgroup, time), its cgroups (inherited from the
  actor), its capability sets and bounding set, securebits, no_new_privs,
  ids, groups, umask, root and cwd, and the container's seccomp policy
  with a listener of its own, which the daemon serves on another thread so
  that a call of the program's that the policy traps is answered without
  waiting on the request that started it (LXC's proxy serves one request at
  a time per container).
* a step a family's kernel bindings declare (``ACTOR_STEPS`` of a module of
  ``kernel/``: loading a cgroup device program, attaching one) runs here
  through one generic operation (``Actor.step``): the step is the module's,
  the context is the actor's, and adding a family adds no operation here.

An actor must not keep a cgroup alive that its owner wants to remove
(``rmdir`` of a cgroup with a task in it is EBUSY, and LXC does not retry:
seen, a container's cgroups were left behind).  The caller may exit as soon
as its call returns, and its cgroup's owner (systemd in the container for a
unit, Docker for its container) remove the cgroup right after; so before it
answers, the actor leaves the caller's cgroup in every hierarchy where that
cgroup does not hold the container's init (``Actor.leave_for``).  Where it
does (it is init's, or an ancestor of init's), nothing can remove it while
the container runs, and the actor stays for the next call, in the daemon's
own again after 2 ms idle (bench/cgroup_move.py: out and back costs 9-12 us
in cgroup v2); it exits at once when the container's init exits (a
pidfd, polled with its socket), when its connection's thread ends
(PR_SET_PDEATHSIG), and when the daemon closes it after 10 s idle.  For the
same reason it closes the fds an order came with before it answers (a
directory's fd keeps its mount busy: ``_let_go``).

Undumpable from the start, and never in the container's pid namespace: no
task of the container can name it, ptrace it or read its memory.  It
answers errors as an errno from a fixed allowlist; anything else is EIO,
logged by the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import logging
import os
import re
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import pyseccomp

from .. import kernel
from ..errors import OWN_STEP_ERRNO, SupervisorFault
from ..host.cgroups import cgroup_paths, holds, procs_files_by_hierarchy
from ..policy.filter import EQ, MASKED_EQ, NE
from . import cpus
from .task import read_whole

if TYPE_CHECKING:
    from ..kernel.fd import OwnedFd
    from ..request import EarlyReply, Request
    from .thread import ThreadState

log = logging.getLogger(__name__)

_TIMEOUT_S = 25.0  # below LXC's 30 s: a hung device is ours to end
_PROGRAM_TIMEOUT_S = 20.0  # a FUSE program's foreground part
_LEAVE_S = 0.002  # idle this long, an actor leaves the caller's cgroups (back in: ~0.25 ms)
_PIN_IDLE_S = 0.002  # its actors idle this long, a serving thread is unpinned
_IDLE_S = 10.0  # idle this long, the daemon closes it (the daemon: no send can race an exit)
_MAX_ACTORS = 8  # per thread; the least recently used goes first
_MISSING = 127  # the shell's "command not found"
_LSM_REFUSED = 125  # the caller's LSM profile could not be set for the exec
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MESSAGE_MAX = 1 << 16
_STEP_MODULE = re.compile(r"^[a-z_]+$")  # a module of kernel/, by name

# Errors a step can give a caller; an actor reports only these.
ALLOWED_ERRNOS = frozenset({
    errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG,
    errno.EXDEV, errno.EAGAIN, errno.EBADF, errno.EINVAL, errno.ESRCH, errno.EISDIR,
    errno.EEXIST, errno.ENXIO, errno.EROFS, errno.ETXTBSY, errno.EFAULT, errno.ENOMEM,
    errno.ENOSPC, errno.EDQUOT, errno.EOVERFLOW, errno.ENODEV, errno.ENOTBLK, errno.EBUSY,
    errno.EIO, errno.EOPNOTSUPP, errno.EUCLEAN, errno.EMLINK, errno.ERANGE, errno.E2BIG,
    errno.ETIMEDOUT, errno.ENOSYS, errno.EMFILE, errno.ENFILE})

# The caller's namespaces a program run for it enters, user last: host root
# may enter every namespace, but once in the container's user namespace it
# holds no capability over those the container shares with the host (a
# container without its own time or network namespace): EPERM.
NAMESPACES = (("mnt", kernel.CLONE_NEWNS), ("pid", kernel.CLONE_NEWPID),
              ("net", kernel.CLONE_NEWNET), ("uts", kernel.CLONE_NEWUTS),
              ("ipc", kernel.CLONE_NEWIPC), ("cgroup", kernel.CLONE_NEWCGROUP),
              ("time", kernel.CLONE_NEWTIME), ("user", kernel.CLONE_NEWUSER))


# The mknodat message: op, mode, dev, the hierarchies to leave before the answer
# (a bit per one, in the order the actor was given them: see Actor.leave),
# fsuid, fsgid, umask, caps, group count; then the groups (u32 each; in a memfd
# passed last where they would not fit) and the leaf name.  The answer: one
# errno (0: done).
_MKNOD = struct.Struct("=cIQQIIIQI")
_MKNOD_WHO = 21  # where the identity starts in it (fsuid, after op, mode, dev and leave)
_OP_MKNOD = b"M"
# The same, answering the caller (Actor.mknodat_answering): after _MKNOD come the
# notification id, the capabilities to add for a second try on EACCES, and the
# reply datagram's length, then the datagram, the groups and the leaf.  The fds:
# the directory, the transport's connection, the seccomp listener (the groups'
# memfd last).  Sent after it, once the daemon's own fd of the directory is
# closed: _GO.  The answer: an errno, or one of the codes below.
_OP_MKNOD_ANSWER = b"A"
_EARLY = struct.Struct("=QQI")
_GO = b"G"
_ANSWERED = -1  # made, and the caller answered
_ABANDONED = -2  # made for a caller that had left meanwhile, and undone
_ON_FUSE = -3  # refused on a FUSE directory, which refuses every task but its mounter's
_UNSENT = -4  # made, but the answer could not be sent (the monitor is gone)
_OP_LONG = b"L"  # a JSON order longer than a message: in the memfd passed first
_ORDER_MAX = 16 << 20  # far above any order (65536 groups are about 450 KB of JSON)
_ERRNO = struct.Struct("=i")
_FD = struct.Struct("=i")

_SECBITS_LOCKED = (kernel.SECBIT_NOROOT_LOCKED | kernel.SECBIT_NO_SETUID_FIXUP_LOCKED
                   | kernel.SECBIT_KEEP_CAPS_LOCKED | kernel.SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED)


class ActorFailed(SupervisorFault):
    """The actor itself failed (not the step it was asked for): our own process, so
    the caller gets OWN_STEP_ERRNO, never its socket's EPIPE or ECONNRESET."""

    def __init__(self, step: str, cause: OSError) -> None:
        super().__init__(step, cause, OWN_STEP_ERRNO)


class Identity(NamedTuple):
    """Who a step is done as, in host ids: fs ids, groups, umask, capabilities.

    A tuple: one is made for every emulated mknod, where a frozen dataclass's
    field-by-field ``__init__`` costs several times more."""

    fsuid: int
    fsgid: int
    groups: tuple[int, ...]
    umask: int
    caps: int  # the effective set for the step (limited to the actor's permitted set)


@dataclass(frozen=True)
class ProgramOrder:
    """A program to run as the caller, inside its container (ids as the container sees them)."""

    argv: list[str]
    uid: tuple[int, int, int]  # real, effective, saved
    gid: tuple[int, int, int]
    groups: list[int]
    umask: int
    cap_bounding: int
    cap_effective: int
    cap_permitted: int
    cap_inheritable: int
    securebits: int
    no_new_privs: bool
    seccomp: list[dict[str, Any]]  # rules, see seccomp_rules_wire(); [] for none
    rlimits: list[tuple[int, int, int]]  # (resource, soft, hard), the caller's
    oom_score_adj: int
    lsm_label: str  # the caller's AppArmor profile to exec under; "" for none
    # What else a child of the caller would inherit from it:
    cpus: list[int]  # its CPU affinity
    nice: int
    sched_policy: int  # SCHED_RESET_ON_FORK included, where the caller has it
    sched_priority: int
    ioprio: int  # class << 13 | data (0: none set, the nice-derived default)
    personality: int
    timerslack_ns: int
    cap_ambient: int


class Actor:
    """The daemon's end of one actor process (one set of cgroups)."""

    _timeout = -1.0  # the socket's SO_RCVTIMEO now, in seconds (-1: not set yet)

    def __init__(self, procs_files: Sequence[tuple[str, str]], init_pid: int) -> None:
        """``procs_files``: (hierarchy, cgroup.procs file) of the caller's cgroups, as
        ``host.cgroups.procs_files_by_hierarchy`` gives them."""
        self.hierarchies = tuple(hierarchy for hierarchy, _ in procs_files)
        self.procs_files = tuple(path for _, path in procs_files)
        self.init_pid = init_pid
        self.cpu = -1
        self.follow_cpu = True
        # The hierarchies the actor leaves before it answers an order (bit i: the
        # i-th of procs_files), for the order about to be sent (see ``leave_for``).
        self.leave = 0
        self._leave_by_init: dict[bytes, int] = {}
        self._spawn()

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX,
                                         socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        pidfd = -1
        try:
            pidfd = os.pidfd_open(self.init_pid)
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lxc_notify_plugin.caller.actor", str(theirs.fileno()),
                 str(pidfd), json.dumps(list(zip(self.hierarchies, self.procs_files,
                                                 strict=True)))],
                pass_fds=(theirs.fileno(), pidfd), stdin=subprocess.DEVNULL, cwd="/")
        except OSError as err:
            ours.close()
            raise ActorFailed("spawn the actor", err) from err
        finally:
            theirs.close()
            if pidfd >= 0:
                os.close(pidfd)
        # Timeouts kept by the kernel (SO_RCVTIMEO/SO_SNDTIMEO: EAGAIN when they
        # pass), not by Python: a Python socket with a timeout polls before
        # every send and receive, two syscalls more per round trip.
        self.sock = ours
        self._timeout = -1.0
        self.used = time.monotonic()
        try:
            self._set_timeout(_TIMEOUT_S, socket.SO_SNDTIMEO)
            self._set_timeout(_TIMEOUT_S)
            answer, fds = self._receive()  # "ready" once it is in the cgroups
        except BaseException:
            self.close()
            raise
        _close_all(fds)
        if answer.get("step"):
            self.close()
            raise ActorFailed(f"set the actor up: {answer['step']}",
                              OSError(int(answer.get("errno", errno.EIO)), "failed"))

    @property
    def alive(self) -> bool:
        """Not closed by us.  No waitpid on the hot path (a syscall per request):
        an actor that died by itself (OOM-killed in the caller's memory cgroup)
        is found by ``_send``, which starts a new one for the order."""
        return self.sock.fileno() >= 0 and self.process.returncode is None

    def leave_for(self, proc_cgroup: bytes, init_cgroup: bytes | None) -> int:
        """The hierarchies in which the actor must not stay in the caller's cgroup
        once it has answered: all but those where that cgroup holds the container's
        init (``init_cgroup``, its /proc/PID/cgroup; None: gone).

        A cgroup with a task in it cannot be removed (EBUSY).  The caller's call
        returns with our answer, the caller may exit at once, and whoever owns its
        cgroup (systemd in the container for a unit, Docker for its container, a
        container root with its own subtree) may remove the cgroup right after:
        an actor still in it would make that fail, which the kernel would not.
        A cgroup that is init's or one of its ancestors cannot be removed while
        init lives, so there the actor stays for the next call (out and back
        costs 9-12 us in cgroup v2 here, ~110 us through a hybrid host's ten
        hierarchies: bench/cgroup_move.py); it leaves those when idle, and at
        once when init exits."""
        key = init_cgroup or b""
        found = self._leave_by_init.get(key)
        if found is None:
            caller, init = cgroup_paths(proc_cgroup), cgroup_paths(key)
            found = 0
            for bit, hierarchy in enumerate(self.hierarchies):
                theirs, inits = caller.get(hierarchy), init.get(hierarchy)
                if theirs is None or inits is None or not holds(theirs, inits):
                    found |= 1 << bit
            if len(self._leave_by_init) >= 8:  # init moved often: keep the last few
                self._leave_by_init.clear()
            self._leave_by_init[key] = found
        return found

    def _send(self, message: bytes, fds: Sequence[int]) -> None:
        """Hand the actor one order.  A send refused by a dead peer delivered
        nothing: a new actor takes the order, once."""
        try:
            socket.send_fds(self.sock, [message], list(fds))
            return
        except (BrokenPipeError, ConnectionResetError, ConnectionRefusedError) as err:
            log.warning("actor pid %d died (%s): starting another", self.process.pid, err)
            self.close()
        self.cpu = -1
        self._spawn()
        self._follow_cpu()
        socket.send_fds(self.sock, [message], list(fds))

    def _set_timeout(self, seconds: float, option: int = socket.SO_RCVTIMEO) -> None:
        if option == socket.SO_RCVTIMEO:
            if seconds == self._timeout:
                return
            self._timeout = seconds
        self.sock.setsockopt(socket.SOL_SOCKET, option, timeval(seconds))

    def close(self) -> None:
        self.sock.close()  # the actor sees EOF and exits
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    # --- the steps --------------------------------------------------------------------

    def mknodat(self, dir_fd: int, leaf: bytes, mode: int, dev: int, who: Identity) -> None:
        """``mknodat(dir_fd, leaf, mode, dev)`` as ``who``, in the caller's cgroups.

        The hot path: a fixed binary message (``_MKNOD``) instead of JSON, one
        errno back."""
        self.used = time.monotonic()
        message, groups_fd = _mknod_order(_OP_MKNOD, mode, dev, self.leave, who, b"", leaf)
        fds = [dir_fd] if groups_fd < 0 else [dir_fd, groups_fd]
        self._follow_cpu()
        try:
            self._set_timeout(_TIMEOUT_S)  # a program's run may have set a longer one
            self._send(message, fds)
            data = self.sock.recv(_ERRNO.size)
        except OSError as err:
            self.close()
            raise ActorFailed("read the actor's answer", err) from err
        finally:
            if groups_fd >= 0:
                os.close(groups_fd)
        if len(data) != _ERRNO.size:
            self.close()
            raise ActorFailed("read the actor's answer", OSError(errno.EIO, "actor exited"))
        code = _ERRNO.unpack(data)[0]
        if code:
            _raise_for({"errno": code})

    def mknodat_answering(self, directory: OwnedFd, leaf: bytes, mode: int, dev: int,
                          who: Identity, retry_caps: int, early: EarlyReply,
                          listener_fd: int, notif_id: int) -> bool:
        """``mknodat`` as ``mknodat`` does it, and once the node is made, the caller
        answered by the actor itself (``early``), unless it left meanwhile.

        True: made and answered (``early.answered``).  False: the directory is on
        FUSE, which refuses every task but its mounter's: the kernel's answer is the
        caller's own.  RequestGone is not ours to raise here, so a caller that left
        after its node was made (the node is undone) is ``AbandonedNode``; an
        errno of the step is raised as OSError.

        ``retry_caps`` are added for a second try if the first is refused with
        EACCES (the caller's DAC capabilities, where they reach the directory).
        The actor answers only once this thread holds nothing of the caller's:
        ``directory`` is closed here after the order is sent, and the actor waits
        for that (``_GO``): held past the caller's return, it would keep the
        directory's mount busy (``_let_go``).  So the caller's scope must be left
        before this call as well."""
        self.used = time.monotonic()
        done = early.done()
        message, groups_fd = _mknod_order(
            _OP_MKNOD_ANSWER, mode, dev, self.leave, who,
            _EARLY.pack(notif_id, retry_caps, len(done)) + done, leaf)
        fds = [directory.fd, early.sink_fd, listener_fd]
        if groups_fd >= 0:
            fds.append(groups_fd)
        self._follow_cpu()
        go = False
        try:
            self._set_timeout(_TIMEOUT_S)
            self._send(message, fds)
            directory.close()
            self.sock.send(_GO)
            go = True
            data = self.sock.recv(_ERRNO.size)
        except OSError as err:
            data, failure = b"", err
        else:
            failure = OSError(errno.EIO, "actor exited")
        finally:
            if groups_fd >= 0:
                os.close(groups_fd)
        if len(data) != _ERRNO.size:
            self.close()
            # Past _GO, the actor may have answered before it died: a second datagram
            # would be read by LXC's monitor as the answer to the next call.
            if go and not _still_waiting(listener_fd, notif_id):
                early.answered = True
            raise ActorFailed("read the actor's answer", failure)
        code = _ERRNO.unpack(data)[0]
        if code == _ANSWERED:
            early.answered = True
            return True
        if code == _ON_FUSE:
            return False
        if code == _ABANDONED:
            raise AbandonedNode(notif_id)
        if code == _UNSENT:
            raise ActorFailed("answer the caller", OSError(errno.EPIPE, "monitor gone"))
        _raise_for({"errno": code or errno.EIO})
        raise AssertionError("unreachable")

    def _follow_cpu(self) -> None:
        """Run this thread and the actor on one CPU while they talk.  A wake-up
        across CPUs costs this VM about 25 us each way; on one CPU the round trip
        is a few us plus the work (bench/actor_cost.py).  Pinning the actor alone
        was not enough: its answer woke this thread on the other, idle CPU about
        one call in six, and the next call moved the actor again (p50 40-60 us
        against 26 us with both pinned).  So this thread stays on the CPU it had
        while it uses actors (``Actors.rest`` gives it the daemon's CPUs back
        when they have been idle a moment), and the actor follows it; no
        syscall while neither moves.  Where the caller's cpuset excludes our
        CPU, the actor runs where it may."""
        if self.cpu >= 0 or not self.follow_cpu:
            return  # this thread is pinned to self.cpu: it cannot have moved
        cpu = kernel.sched_getcpu()
        if not cpus.pin(0, cpu):
            return  # a thread confined elsewhere stays so, and asks again next time
        self.cpu = cpu
        if not cpus.pin(self.process.pid, cpu):
            cpus.unpin(self.process.pid)

    def new_mount(self, fs_type: str, source_fd: int, steps: Sequence[tuple[str, bytes,
                  bytes | None]], attrs: int, *, name: bytes | None = None,
                  root_fd: int = -1, start_fd: int = -1) -> int:
        """A detached mount of a new (or shared) superblock of ``fs_type`` on the block
        node ``source_fd`` (the caller's own node, an O_PATH fd): fsopen, the source,
        ``steps`` in order (("flag", key, None) or ("string", key, value)), CMD_CREATE,
        fsmount with ``attrs``.  The kernel opens the device here, in the caller's
        cgroups, with the access the superblock will have.  The fs context's messages
        come back in the error.

        ``name`` is the source as the caller wrote it: the mount shows it (findmnt,
        ``umount /dev/x``), as the kernel's would.  It is resolved under the caller's
        root (``root_fd``) from ``start_fd``, and used only if it reaches the very
        node ``source_fd`` is (checked before and, by device number, after the
        superblock is made); otherwise the mount is made through the fd."""
        wire = [[kind, key.hex(), None if value is None else value.hex()]
                for kind, key, value in steps]
        message: dict[str, Any] = {"op": "mount", "fs_type": fs_type, "steps": wire,
                                   "attrs": attrs}
        fds = [source_fd]
        if name is not None and root_fd >= 0 and start_fd >= 0:
            message["name"] = name.hex()
            fds += [root_fd, start_fd]
        answer, fds = self._call(message, fds)
        if answer.get("errno"):
            _close_all(fds)
            code = int(answer["errno"])
            said = "; ".join(str(m) for m in answer.get("messages", ()))
            stage = str(answer.get("stage", ""))
            if stage in ("fsopen", "fsmount"):
                raise SupervisorFault(f"{stage} {fs_type}" + (f" ({said})" if said else ""),
                                      OSError(code, os.strerror(code)))
            raise MountRefused(code, said)
        if len(fds) != 1:
            _close_all(fds)
            raise ActorFailed("take the new mount from the actor",
                              OSError(errno.EIO, "no mount fd came back"))
        return fds[0]

    def run_program(self, order: ProgramOrder, ns_fds: Sequence[int], root_fd: int,
                    cwd_fd: int, on_listener: Callable[[int], None]) -> dict[str, Any]:
        """Run ``order.argv`` as the caller inside its container; wait for its
        foreground part.  ``ns_fds`` are the caller's namespaces in NAMESPACES
        order.  A seccomp listener of the program's filter is handed to
        ``on_listener`` (which owns it from then on) while the program runs.
        Returns ``{"exit": status, "stderr": text}``."""
        # -1 (a namespace this kernel lacks) cannot travel: which ones do is said.
        message = {"op": "run", "order": order.__dict__,
                   "namespaces": [fd >= 0 for fd in ns_fds]}
        answer, fds = self._call(message, [*(fd for fd in ns_fds if fd >= 0), root_fd, cwd_fd],
                                 timeout=_PROGRAM_TIMEOUT_S + 4)
        while answer.get("listener"):
            if len(fds) == 1:
                try:
                    on_listener(fds[0])
                except BaseException:
                    # The actor is mid-conversation: its next answers would reach the
                    # next caller.  Closed (the program dies with it), then raised.
                    self.close()
                    raise
            else:
                _close_all(fds)
            answer, fds = self._receive(timeout=_PROGRAM_TIMEOUT_S + 4)
        _close_all(fds)
        if answer.get("step"):
            raise SupervisorFault(str(answer["step"]),
                                  OSError(int(answer.get("errno", errno.EIO)), "failed"))
        return answer

    def step(self, module: str, step: str, args: dict[str, Any],
             fds: Sequence[int] = ()) -> tuple[dict[str, Any], list[int]]:
        """Run ``ACTOR_STEPS[step]`` of ``kernel/<module>.py`` here, with ``args`` and
        ``fds`` (sent, not given away).  Returns its answer, whose ``errno`` is one of
        ALLOWED_ERRNOS (0: done), and the fds it sent back (the caller's now)."""
        answer, got = self._call({"op": "step", "module": module, "step": step,
                                  "args": args}, fds)
        code = answer.get("errno")
        if not isinstance(code, int) or (code and code not in ALLOWED_ERRNOS):
            _close_all(got)
            raise ActorFailed(f"{module}.{step}", OSError(errno.EIO, f"actor answered {code}"))
        return answer, got

    # --- the wire ---------------------------------------------------------------------

    def _call(self, message: dict[str, Any], fds: Sequence[int],
              timeout: float = _TIMEOUT_S) -> tuple[dict[str, Any], list[int]]:
        self.used = time.monotonic()
        self._follow_cpu()
        data, passed = json.dumps({**message, "leave": self.leave}).encode(), list(fds)
        if len(data) > _MESSAGE_MAX:
            # An order too long for one message (a program's caller with thousands
            # of groups): in a memfd, passed first.
            try:
                passed.insert(0, _memfd_holding(data))
            except OSError as err:
                raise ActorFailed("pass an order to the actor", err) from err
            data = _OP_LONG
        try:
            self._send(data, passed)
        except OSError as err:
            self.close()
            raise ActorFailed("send to the actor", err) from err
        finally:
            if data == _OP_LONG:
                os.close(passed[0])
        return self._receive(timeout)

    def _receive(self, timeout: float = _TIMEOUT_S) -> tuple[dict[str, Any], list[int]]:
        try:
            self._set_timeout(timeout)
            data, fds, _, _ = socket.recv_fds(self.sock, _MESSAGE_MAX, 16)
        except OSError as err:
            self.close()
            raise ActorFailed("read the actor's answer", err) from err
        try:
            answer = json.loads(data) if data else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            _close_all(fds)
            self.close()
            raise ActorFailed("read the actor's answer", OSError(errno.EIO, "actor exited"))
        return answer, fds


def _time_t_size() -> int:
    """The C library's time_t, in bytes: 8 on 64-bit hosts and on 32-bit ones
    built for 64-bit time (Debian's armhf since trixie), else 4.  Python's
    ``time`` converts through time_t and refuses what it cannot hold."""
    try:
        time.gmtime(1 << 40)
    except (OverflowError, OSError, ValueError):
        return 4
    return 8


# struct timeval as SO_RCVTIMEO and SO_SNDTIMEO take it: the C library maps
# those names to the option whose timeval has its own time_t (on 32-bit hosts
# with 64-bit time, SO_RCVTIMEO_NEW and two 64-bit fields), so two time_t.
_TIMEVAL = struct.Struct("@qq" if _time_t_size() == 8 else "@ii")


def timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return _TIMEVAL.pack(whole, int((seconds - whole) * 1e6))


class MountRefused(OSError):
    """The kernel refused the superblock (the caller's answer); ``said`` is the fs
    context's log."""

    def __init__(self, code: int, said: str) -> None:
        super().__init__(code, os.strerror(code))
        self.said = said


def _raise_for(answer: dict[str, Any]) -> None:
    code = int(answer.get("errno", 0) or 0)
    if not code:
        return
    if code not in ALLOWED_ERRNOS:
        raise ActorFailed("make sense of the actor's answer",
                          OSError(errno.EIO, f"actor answered {code}"))
    raise OSError(code, os.strerror(code))


class AbandonedNode(Exception):
    """The node was made for a caller that left before its answer, and undone."""

    def __init__(self, notif_id: int) -> None:
        super().__init__(f"notification {notif_id:#x} left before its node was answered")


def _mknod_order(op: bytes, mode: int, dev: int, leave: int, who: Identity, extra: bytes,
                 leaf: bytes) -> tuple[bytes, int]:
    """A mknodat order's message, and the memfd holding the caller's groups where the
    message cannot (-1: none)."""
    groups = struct.pack(f"={len(who.groups)}I", *who.groups)
    groups_fd = -1
    if _MKNOD.size + len(extra) + len(groups) + len(leaf) > _MESSAGE_MAX:
        # A task may have up to NGROUPS_MAX (65536) groups, more than one message
        # holds: those travel in a memfd, and the hot path keeps its small buffer.
        try:
            groups_fd = _memfd_holding(groups)
        except OSError as err:
            raise ActorFailed("pass the caller's groups", err) from err
        groups = b""
    return (_MKNOD.pack(op, mode, dev, leave, who.fsuid, who.fsgid, who.umask, who.caps,
                        len(who.groups)) + extra + groups + leaf, groups_fd)


def _still_waiting(listener_fd: int, notif_id: int, seconds: float = 0.1) -> bool:
    """Whether the caller of ``notif_id`` still waits, a moment after an actor died
    past _GO: its answer, if it sent one, reaches the kernel through LXC's monitor
    within that moment (an error of the check itself: assumed waiting)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if not kernel.notif_id_valid(listener_fd, notif_id):
                return False
        except OSError:
            return True
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.002)


def _fds_in(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds of a message's SCM_RIGHTS (socket.recv_fds' parsing, without its
    per-call array; the common case is one message of one fd)."""
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(x for (x,) in _FD.iter_unpack(data[:len(data) - len(data) % _FD.size]))
    return fds


def _let_go(fds: list[int], where: _Membership | None = None, leave: int = 0) -> None:
    """Close the fds an order came with, and leave the caller's cgroup in the
    hierarchies ``leave`` names (``Actor.leave_for``), before its answer is sent.
    Held past the answer, they would outlive the caller's call: a directory's fd
    keeps its mount busy, a task in a cgroup keeps it from being removed, and the
    caller's own ``umount`` (or its cgroup's owner's ``rmdir``) right after the
    call returned would fail with EBUSY, which the kernel would not answer.
    (The daemon, woken on this CPU by the answer, runs before the actor does
    again.)"""
    _close_all(fds)
    fds.clear()
    if where is not None and leave:
        where.leave(leave)


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


class Actors:
    """One thread's actors, by the caller's ``/proc/TID/cgroup`` text (not shared:
    no lock).  Closed with the thread."""

    def __init__(self) -> None:
        self.by_cgroups: dict[bytes, Actor] = {}
        # Made on the thread it serves: by TID, so closing it from elsewhere
        # gives the right thread its CPUs back.
        self._tid = threading.get_native_id()
        self._init_pid = -1  # the container init whose /proc/PID/cgroup _init_fd is
        self._init_fd = -1

    def init_cgroup(self, init_pid: int, host_proc_fd: int) -> bytes | None:
        """The container init's /proc/PID/cgroup now (None: it is gone), through an fd
        kept open: one pread per request."""
        if init_pid != self._init_pid:
            self._close_init()
            try:
                self._init_fd = os.open(f"{init_pid}/cgroup", os.O_RDONLY | os.O_CLOEXEC,
                                        dir_fd=host_proc_fd)
            except FileNotFoundError:
                return None
            self._init_pid = init_pid
        try:
            return read_whole(self._init_fd)
        except ProcessLookupError:
            return None

    def _close_init(self) -> None:
        if self._init_fd >= 0:
            os.close(self._init_fd)
        self._init_fd = self._init_pid = -1

    def get(self, proc_cgroup: bytes, init_pid: int, mountinfo: Callable[[], str]) -> Actor:
        # Idle ones go here, never by themselves: an actor that exited on its own
        # could meet a request already on its way (EPIPE for the caller).
        stale = time.monotonic() - _IDLE_S
        for key in [k for k, a in self.by_cgroups.items() if a.used < stale]:
            self.by_cgroups.pop(key).close()
        if not self.by_cgroups:
            self._unpin()
        actor = self.by_cgroups.get(proc_cgroup)
        if actor is not None and actor.alive:
            return actor
        if actor is not None:
            actor.close()
            del self.by_cgroups[proc_cgroup]
        if len(self.by_cgroups) >= _MAX_ACTORS:
            oldest = min(self.by_cgroups, key=lambda k: self.by_cgroups[k].used)
            self.by_cgroups.pop(oldest).close()
        files = procs_files_by_hierarchy(proc_cgroup, mountinfo())
        if not files:
            raise ActorFailed("find the caller's cgroups",
                              OSError(errno.ESRCH, "no cgroup hierarchy found"))
        actor = self.by_cgroups[proc_cgroup] = Actor(files, init_pid)
        return actor

    def close(self) -> None:
        for actor in self.by_cgroups.values():
            actor.close()
        self.by_cgroups = {}
        self._close_init()
        self._unpin()

    def rest(self) -> None:
        """Between requests (``ThreadState.rest``): once no actor of this thread
        has worked for ``_PIN_IDLE_S``, the thread gets the daemon's CPUs back
        (the next actor call pins it again), so a connection that used an actor
        once does not stay on one CPU for the container's life."""
        pinned = [actor for actor in self.by_cgroups.values() if actor.cpu >= 0]
        if not pinned:
            return  # the common case, after every refused call: no clock read
        idle_since = time.monotonic() - _PIN_IDLE_S
        if all(actor.used < idle_since for actor in pinned):
            for actor in pinned:
                actor.cpu = -1
            self._unpin()

    def _unpin(self) -> None:
        """The daemon's CPUs again (``Actor._follow_cpu`` pinned the thread to one)."""
        cpus.unpin(self._tid)


def actor_for(thread: ThreadState, request: Request) -> Actor:
    """The actor in ``request``'s caller's cgroups (spawned on first use, with the
    daemon's identity: never under a caller's root or ids)."""
    proc_cgroup = thread.cgroup.read(request)
    actors = thread.resource("actors", Actors)
    init_pid = request.container.init_pid
    actor = actors.by_cgroups.get(proc_cgroup)
    if actor is None or not actor.alive:
        assert not thread.in_scope, "an actor is never spawned under a caller's root"
        thread.set_ids(0, 0, (), 0o022)

        def mountinfo() -> str:
            fd = os.open("self/mountinfo", os.O_RDONLY | os.O_CLOEXEC,
                         dir_fd=thread.host_proc_fd)
            with open(fd, closefd=True) as f:
                return f.read()

        actor = actors.get(proc_cgroup, init_pid, mountinfo)
    actor.leave = actor.leave_for(proc_cgroup, actors.init_cgroup(init_pid, thread.host_proc_fd))
    return actor


# --- the actor's end -------------------------------------------------------------------


def _send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    socket.send_fds(sock, [json.dumps(message).encode()], list(fds))


class _Membership:
    """Where the actor is, hierarchy by hierarchy: in the caller's cgroup or in its
    own (the daemon's).

    Each move writes this pid to a ``cgroup.procs`` opened once, as root, when the
    actor started: the kernel judges such a write by the credentials the file
    was opened with (Linux 5.16), so the actor moves with a caller's identity in
    place, and without an open per move."""

    def __init__(self, theirs: Sequence[str], ours: Sequence[str]) -> None:
        self.paths = list(theirs)
        self.theirs: list[int] = []
        self.ours: list[int] = []
        try:
            for path in theirs:
                self.theirs.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
            for path in ours:
                self.ours.append(os.open(path, os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            self.close()
            raise
        self.every = (1 << len(self.theirs)) - 1
        self.outside = self.every  # a bit per hierarchy where the actor is in its own
        self._pid = str(os.getpid()).encode()

    def enter(self) -> None:
        """Into the caller's cgroup in every hierarchy (OSError: one is gone; the
        actor is then in each it could join, as ``outside`` says)."""
        outside = self.outside
        bit = 0
        while outside:
            if outside & 1:
                try:
                    os.write(self.theirs[bit], self._pid)
                except OSError as err:
                    raise OSError(err.errno, err.strerror, self.paths[bit]) from err
                self.outside &= ~(1 << bit)
            outside >>= 1
            bit += 1

    def leave(self, which: int) -> None:
        """Back into our own cgroup in the hierarchies ``which`` names (a failure,
        our own cgroup gone, leaves the actor where it is)."""
        which &= self.every & ~self.outside
        bit = 0
        while which:
            if which & 1:
                with contextlib.suppress(OSError):
                    os.write(self.ours[bit], self._pid)
                    self.outside |= 1 << bit
            which >>= 1
            bit += 1

    @property
    def inside(self) -> bool:
        return self.outside != self.every

    def close(self) -> None:
        _close_all(self.theirs + self.ours)
        self.theirs, self.ours = [], []


class _Identity:
    """The actor's own fs ids, groups, umask and effective capabilities, changed
    only where the next step needs something else (a loop of one caller's
    calls then changes nothing)."""

    def __init__(self, full: kernel.ThreadCaps) -> None:
        self.full = full
        self.now = Identity(0, 0, (), 0o022, full.effective)
        self.wire = b""  # ``now`` as the last mknodat message said it (b"": not from one)

    def become(self, who: Identity) -> None:
        now = self.now
        if who == now:
            return
        self.wire = b""
        full = self.full
        if (who.fsuid, who.fsgid, who.groups) != (now.fsuid, now.fsgid, now.groups):
            # Changing ids needs CAP_SETUID/CAP_SETGID, which the last step's set
            # may lack (setfsuid fails silently then).
            kernel.capset(full)
        if who.umask != now.umask:
            os.umask(who.umask)
        if who.groups != now.groups:
            kernel.setgroups_thread(who.groups)
        if who.fsgid != now.fsgid:
            kernel.setfsgid(who.fsgid, verify=False)
        if who.fsuid != now.fsuid:
            kernel.setfsuid(who.fsuid, verify=False)
        # Leaving fsuid 0 clears the fs capabilities: set exactly, afterwards.
        kernel.capset(kernel.ThreadCaps(who.caps & full.permitted, full.permitted,
                                        full.inheritable))
        self.now = who

    def take_order(self, data: bytes, packed: bytes) -> None:
        """Become who an mknodat order (``_MKNOD``, its groups ``packed``) names.  Who,
        as the bytes that say it: the same as the last order's (a loop of one
        caller's calls) is known without building an Identity."""
        who = data[_MKNOD_WHO:_MKNOD.size] + packed
        if who != self.wire:
            _, _, _, _, fsuid, fsgid, umask, caps, count = _MKNOD.unpack_from(data)
            self.become(Identity(fsuid, fsgid, struct.unpack(f"={count}I", packed), umask,
                                 caps))
            self.wire = who

    def ourselves(self) -> None:
        self.become(Identity(0, 0, (), 0o022, self.full.effective))


def _errno_of(err: OSError) -> int:
    return err.errno if err.errno in ALLOWED_ERRNOS else errno.EIO


def _memfd_holding(data: bytes) -> int:
    fd = os.memfd_create("lxc-notify-groups", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        os.close(fd)
        raise
    return fd


def _do_mknodat(sock: socket.socket, data: bytes, fds: list[int], ids: _Identity,
                where: _Membership) -> None:
    leave = where.every  # unreadable, it leaves everything
    try:
        _, mode, dev, leave, _, _, _, _, count = _MKNOD.unpack_from(data)
        # More groups than a message holds come in a memfd, passed last (Actor.mknodat).
        packed, leaf = _groups_and_leaf(data, _MKNOD.size, count, fds[1] if len(fds) == 2 else -1)
        ids.take_order(data, packed)
        os.mknod(leaf, mode, dev, dir_fd=fds[0])
        answer = 0
    except OSError as err:
        answer = _errno_of(err)
    except (struct.error, IndexError, ValueError):
        answer = errno.EIO
    _let_go(fds, where, leave)
    sock.send(_ERRNO.pack(answer))


def _groups_and_leaf(data: bytes, at: int, count: int, groups_fd: int) -> tuple[bytes, bytes]:
    """An mknodat order's packed groups and leaf, which follow at ``at`` (the groups
    in ``groups_fd`` instead, where the order passed one)."""
    if groups_fd >= 0:
        return os.pread(groups_fd, 4 * count, 0), data[at:]
    return data[at:at + 4 * count], data[at + 4 * count:]


def _do_mknodat_answering(sock: socket.socket, data: bytes, fds: list[int], ids: _Identity,
                          where: _Membership) -> None:
    """Make the node (``Actor.mknodat_answering``) and answer its caller, then the daemon."""
    leave = where.every
    code = errno.EIO
    try:
        _, mode, dev, leave, _, _, _, _, count = _MKNOD.unpack_from(data)
        notif_id, retry_caps, done_size = _EARLY.unpack_from(data, _MKNOD.size)
        at = _MKNOD.size + _EARLY.size
        done, at = data[at:at + done_size], at + done_size
        directory, sink, listener = fds[0], fds[1], fds[2]
        packed, leaf = _groups_and_leaf(data, at, count, fds[3] if len(fds) == 4 else -1)
        ids.take_order(data, packed)
        code = _make_node(leaf, mode, dev, directory, ids, retry_caps)
        if code == 0:
            code = _answer_made(leaf, directory, sink, listener, notif_id, done, fds, ids,
                                where, leave)
    except OSError as err:
        code = _errno_of(err)
    except (struct.error, IndexError, ValueError):
        code = errno.EIO
    _let_go(fds, where, leave)
    sock.send(_ERRNO.pack(code))


def _make_node(leaf: bytes, mode: int, dev: int, directory: int, ids: _Identity,
               retry_caps: int) -> int:
    """mknodat as the order's identity, then, refused with EACCES, with ``retry_caps``
    added: 0, an errno, or _ON_FUSE (the handler's order of checks, kept)."""
    try:
        os.mknod(leaf, mode, dev, dir_fd=directory)
        return 0
    except PermissionError as err:
        if kernel.fs_type(directory) == kernel.FUSE_SUPER_MAGIC:
            return _ON_FUSE
        if not retry_caps or err.errno != errno.EACCES:
            return _errno_of(err)
    ids.become(ids.now._replace(caps=ids.now.caps | retry_caps))
    try:
        os.mknod(leaf, mode, dev, dir_fd=directory)
    except OSError as err:
        return _errno_of(err)
    return 0


def _answer_made(leaf: bytes, directory: int, sink: int, listener: int, notif_id: int,
                 done: bytes, fds: list[int], ids: _Identity, where: _Membership,
                 leave: int) -> int:
    """Answer the caller of a node just made, as the daemon would after ``mknodat``:
    a caller that left meanwhile (a signal with SA_RESTART makes the kernel restart
    its call as a new notification) must not meet the node of the call it
    abandoned, so the node is undone; else everything of the caller's is let go
    (``_let_go``: only the connection and the listener are kept) and the answer
    sent.  The code for the daemon."""
    try:
        waiting = kernel.notif_id_valid(listener, notif_id)
    except OSError as err:
        waiting, code = False, _errno_of(err)
    else:
        code = _ABANDONED
    if not waiting:
        ids.ourselves()
        with contextlib.suppress(OSError):
            os.unlink(leaf, dir_fd=directory)
        return code
    held = [directory, *fds[3:]]
    del fds[3:]
    del fds[0]
    _let_go(held, where, leave)
    try:
        os.write(sink, done)  # a datagram: whole or not at all
    except OSError:
        # LXC's monitor is gone, and with it the caller's answer (the kernel gives
        # ENOSYS once the listener closes); the directory is let go, the node stays.
        return _UNSENT
    return _ANSWERED


def _do_mount(sock: socket.socket, message: dict[str, Any], fds: list[int],
              where: _Membership) -> None:
    node = os.fstat(fds[0])
    name = bytes.fromhex(message["name"]) if "name" in message and len(fds) == 3 else None
    if name is not None and not _names_node(name, fds[1], fds[2], node):
        name = None
    answer, mount_fd = _make_mount(message, fds[0], name, fds[1:])
    if mount_fd >= 0 and name is not None and os.fstat(mount_fd).st_dev != node.st_rdev:
        # The kernel walked the name as host root: it may have reached another
        # device (the container raced us), or the superblock's number says
        # nothing (btrfs's is anonymous).  Unverified, it is made again through
        # the fd, whatever the mount table then shows.
        os.close(mount_fd)
        answer, mount_fd = _make_mount(message, fds[0], None, [])
    _let_go(fds, where, _leave_of(message, where))
    try:
        _send(sock, answer, [mount_fd] if mount_fd >= 0 else [])
    finally:
        if mount_fd >= 0:
            os.close(mount_fd)


def _names_node(name: bytes, root_fd: int, start_fd: int, node: os.stat_result) -> bool:
    """Whether ``name``, walked under the caller's root from ``start_fd``, is ``node``."""
    try:
        with _chrooted(root_fd, start_fd):
            found = os.stat(name)
    except OSError:
        return False
    return (found.st_dev, found.st_ino, found.st_rdev) == (node.st_dev, node.st_ino,
                                                           node.st_rdev)


@contextlib.contextmanager
def _chrooted(root_fd: int, start_fd: int) -> Iterator[None]:
    """Under the caller's root, at ``start_fd`` (its cwd, or its root for an absolute
    name); back at the host's root after (the actor's cwd is the host's /)."""
    host_root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(root_fd)
        os.chroot(".")
        os.fchdir(start_fd)
        try:
            yield
        finally:
            os.fchdir(host_root)
            os.chroot(".")
    finally:
        os.close(host_root)


def _make_mount(message: dict[str, Any], node_fd: int, name: bytes | None,
                where: list[int]) -> tuple[dict[str, Any], int]:
    """(answer, mount fd or -1)."""
    stage = "fsopen"
    fs_fd = -1
    try:
        fs_fd = kernel.fsopen(str(message["fs_type"]).encode())
        stage = "configure"
        # By name: the kernel's lookup_bdev() walks it under the caller's root (as
        # host root) at CMD_CREATE.  By fd: it follows our link to the caller's own
        # node.  Either way it checks that node's mount (nodev: EACCES) itself.
        source = name if name is not None else f"/proc/self/fd/{node_fd}".encode()
        kernel.fsconfig(fs_fd, kernel.FSCONFIG_SET_STRING, b"source", source)
        for kind, key_hex, value_hex in message["steps"]:
            key = bytes.fromhex(key_hex)
            if kind == "flag":
                kernel.fsconfig(fs_fd, kernel.FSCONFIG_SET_FLAG, key)
            else:
                kernel.fsconfig(fs_fd, kernel.FSCONFIG_SET_STRING, key, bytes.fromhex(value_hex))
        stage = "create"
        if name is not None:
            with _chrooted(where[0], where[1]):
                kernel.fsconfig(fs_fd, kernel.FSCONFIG_CMD_CREATE)
        else:
            kernel.fsconfig(fs_fd, kernel.FSCONFIG_CMD_CREATE)
        stage = "fsmount"
        return {"errno": 0}, kernel.fsmount(fs_fd, kernel.FSMOUNT_CLOEXEC,
                                            int(message["attrs"]))
    except OSError as err:
        messages = kernel.fs_context_messages(fs_fd) if fs_fd >= 0 else []
        return {"errno": _errno_of(err), "stage": stage, "messages": messages}, -1
    finally:
        if fs_fd >= 0:
            os.close(fs_fd)


def _do_step(sock: socket.socket, message: dict[str, Any], fds: list[int],
             where: _Membership) -> None:
    """A step a module of kernel/ declares in ``ACTOR_STEPS``; its errno filtered as
    every answer's is.  The fds it returns are sent, then closed here."""
    name, step = str(message.get("module", "")), str(message.get("step", ""))
    steps: Any = {}
    if _STEP_MODULE.match(name):
        try:
            steps = getattr(importlib.import_module(f"{kernel.__name__}.{name}"),
                            "ACTOR_STEPS", {})
        except ImportError:
            steps = {}
    action = steps.get(step) if isinstance(steps, Mapping) else None
    if action is None:
        _let_go(fds, where, _leave_of(message, where))
        _send(sock, {"errno": errno.EIO, "step": f"no step {name}.{step}"})
        return
    out: list[int] = []
    try:
        answer, out = action(message.get("args", {}), fds)
        answer["errno"] = _errno_of(OSError(answer["errno"], "")) if answer.get("errno") else 0
    except OSError as err:
        answer = {"errno": _errno_of(err)}
    _let_go(fds, where, _leave_of(message, where))
    try:
        _send(sock, answer, out)
    finally:
        _close_all(out)


def _do_run(sock: socket.socket, message: dict[str, Any], fds: list[int],
            where: _Membership) -> None:
    """Fork the program's parent: it takes the caller's whole context, then forks
    the program (only a child enters a pid namespace) and waits for it."""
    order = message["order"]
    channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        channel.close()
        # It becomes the caller: nothing of the actor's own goes with it (the
        # daemon's socket would take orders as host root; the cgroup.procs files,
        # opened as host root, move tasks with that authority).
        sock.close()
        where.close()
        code = 1
        try:
            code = _program_parent(theirs, order, fds,
                                   list(message.get("namespaces", [True] * len(NAMESPACES))))
        except BaseException as err:  # reported, never raised in a fork of the actor
            with contextlib.suppress(Exception):
                _send(theirs, {"step": f"run the program ({type(err).__name__}: {err})",
                               "errno": errno.EIO})
        finally:
            os._exit(code)
    theirs.close()
    _let_go(fds)  # the program's parent has its own
    deadline = time.monotonic() + _PROGRAM_TIMEOUT_S + 2
    report: dict[str, Any] = {}
    with channel:
        channel.settimeout(1.0)
        while True:
            try:
                data, got, _, _ = socket.recv_fds(channel, _MESSAGE_MAX, 1)
            except TimeoutError:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    report = {"step": "wait for the program", "errno": errno.ETIMEDOUT}
                    break
                continue
            if not data:
                break
            part = json.loads(data)
            if part.get("listener"):
                try:
                    _send(sock, {"listener": True}, got)
                finally:
                    _close_all(got)
                continue
            _close_all(got)
            report = part
            break
    os.waitpid(pid, 0)
    _let_go(fds, where, _leave_of(message, where))  # the program stays where it was made
    _send(sock, report or {"step": "run the program", "errno": errno.EIO})


def _set_exec_label(host_proc_fd: int, label: str) -> None:
    for name in ("thread-self/attr/apparmor/exec", "thread-self/attr/exec"):
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=host_proc_fd)
        except FileNotFoundError:
            continue
        try:
            os.write(fd, f"exec {label}".encode())
        finally:
            os.close(fd)
        return
    raise OSError(errno.ENOENT, "no AppArmor exec attribute")


def _program_parent(channel: socket.socket, order: dict[str, Any], fds: list[int],
                    namespaces: list[bool]) -> int:
    """In the fork: become the caller, then fork and wait for the program."""
    host_proc_fd = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    given = iter(fds[:-2])
    ns_fds = [next(given) if present else -1 for present in namespaces]
    root_fd, cwd_fd = fds[-2], fds[-1]

    def step(name: str, action: Callable[..., Any], *args: Any) -> None:
        try:
            action(*args)
        except OSError as err:
            _send(channel, {"step": name, "errno": err.errno or errno.EIO})
            os._exit(1)

    # Its resource limits and OOM score, as host root (raising one above ours
    # needs CAP_SYS_RESOURCE, which this host withholds from everyone: then it
    # is lowered to ours and named in the report); then its CPUs and scheduling
    # (the actor follows the daemon's CPU: the program must not stay pinned there).
    unmatched = _take_limits(order) + _take_scheduling(order)
    for (name, kind), fd in zip(NAMESPACES, ns_fds, strict=True):
        if fd >= 0:  # -1: this kernel has no such namespace (time before 5.6)
            step(f"enter the {name} namespace", kernel.setns, fd, kind)
    step("take the caller's root", os.fchdir, root_fd)
    step("take the caller's root", os.chroot, ".")
    step("take the caller's cwd", os.fchdir, cwd_fd)
    for fd in fds:
        os.close(fd)
    # The bounding set first (dropping needs CAP_SETPCAP, which the ids below
    # may take away), then the securebits the ids' change obeys.
    for cap in range(kernel.CAP_LAST_CAP + 1):
        if not order["cap_bounding"] >> cap & 1:
            step("drop from the bounding set", kernel.prctl, kernel.PR_CAPBSET_DROP, cap)
    # Capabilities survive the id change (NO_SETUID_FIXUP, unlocked), so the
    # steps after it can still set the caller's own securebits and sets.
    step("set securebits", kernel.set_securebits,
         order["securebits"] & ~_SECBITS_LOCKED | kernel.SECBIT_NO_SETUID_FIXUP)
    # Not the daemon's session keyring, which a fork would share: its possessor
    # could read what is in it and link keys in for every later program, of
    # any container.  A new, empty one of its own, as LXC gives a container's
    # init (lxc.keyring.session); the caller's own cannot be joined.  Made
    # before the ids change, so it counts against root's key quota, not the
    # caller's uid's (200 keys, shared by containers with one id map).
    try:
        kernel.join_new_session_keyring()
    except OSError as err:
        if err.errno != errno.ENOSYS:  # a kernel without keys has no keyring to leak
            step("join a session keyring of its own", _raise, err)
    step("take the caller's groups", os.setgroups, order["groups"])
    step("take the caller's gids", os.setresgid, *order["gid"])
    step("take the caller's uids", os.setresuid, *order["uid"])
    os.umask(order["umask"])
    listener = -1
    if order["seccomp"]:
        try:
            listener = load_seccomp(order["seccomp"])
        except OSError as err:
            _send(channel, {"step": "load the container's seccomp policy",
                            "errno": err.errno or errno.EIO})
            return 1
        try:
            _send(channel, {"listener": True}, [listener])
        finally:
            os.close(listener)
    step("set the caller's securebits", kernel.set_securebits, order["securebits"])
    step("take the caller's capabilities", kernel.capset, kernel.ThreadCaps(
        order["cap_effective"], order["cap_permitted"], order["cap_inheritable"]))
    # Its ambient capabilities, now that its permitted and inheritable sets are
    # its own (the kernel raises only what both hold, as it did for the caller).
    for cap in range(kernel.CAP_LAST_CAP + 1):
        if order["cap_ambient"] >> cap & 1:
            step("raise an ambient capability", kernel.raise_ambient, cap)
    if order["no_new_privs"]:
        step("set no_new_privs", kernel.prctl, kernel.PR_SET_NO_NEW_PRIVS, 1)
    # Its personality last: the seccomp filter's architectures come from uname,
    # which PER_LINUX32 changes (the program of an i686 container would get a
    # filter without its own architecture, and be killed by it), and
    # READ_IMPLIES_EXEC applies to every mapping made after it.
    step("take the caller's personality", kernel.personality, order["personality"])
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the program, in the container's pid namespace
        if order["lsm_label"]:
            # The caller's AppArmor profile for the exec (change_onexec): written
            # through the host's /proc, where this task has a name.  Refused:
            # the program does not run, rather than run unconfined.
            try:
                _set_exec_label(host_proc_fd, order["lsm_label"])
            except OSError:
                os._exit(_LSM_REFUSED)
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
    deadline = time.monotonic() + _PROGRAM_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        _send(channel, {"step": "wait for the program", "errno": errno.ETIMEDOUT})
        return 1
    os.set_blocking(read_end, False)
    try:
        stderr = os.read(read_end, 8192).decode(errors="replace")
    except BlockingIOError:
        stderr = ""
    assert status is not None
    _send(channel, {"exit": os.waitstatus_to_exitcode(status), "stderr": stderr,
                    "unmatched": unmatched})
    return 0


def _take_limits(order: dict[str, Any]) -> list[str]:
    """Set the caller's rlimits and oom_score_adj; the names of those we could not."""
    unmatched = []
    for resource_id, soft, hard in order["rlimits"]:
        try:
            resource.setrlimit(resource_id, (soft, hard))
        except (OSError, ValueError):
            _, our_hard = resource.getrlimit(resource_id)
            capped = our_hard if soft == resource.RLIM_INFINITY else min(soft, our_hard)
            with contextlib.suppress(OSError, ValueError):
                resource.setrlimit(resource_id, (capped, our_hard))
            unmatched.append(f"rlimit {resource_id}")
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(order["oom_score_adj"]))
    except OSError:
        unmatched.append("oom_score_adj")
    return unmatched


def _raise(err: OSError) -> None:
    raise err


def _take_scheduling(order: dict[str, Any]) -> list[str]:
    """Set what a child of the caller inherits for CPU and I/O: its CPUs, nice
    value, scheduling policy, I/O priority and timer slack (its personality is
    set last: see ``_program_parent``).  As
    host root, in the caller's cgroups: the kernel still refuses what the
    cgroups refuse (a CPU outside the cpuset, a real-time policy without an
    RT budget); those keep ours and are named in the report."""
    unmatched = []
    try:
        os.sched_setaffinity(0, order["cpus"])
    except OSError:
        unmatched.append("cpu affinity")
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
    steps: list[tuple[str, Callable[[], object]]] = [
        ("nice", lambda: os.setpriority(os.PRIO_PROCESS, 0, order["nice"])),
        ("scheduling policy", lambda: os.sched_setscheduler(
            0, order["sched_policy"], os.sched_param(order["sched_priority"]))),
        ("ioprio", lambda: kernel.ioprio_set(0, order["ioprio"])),
    ]
    if order["timerslack_ns"] >= 0:  # -1: unreadable (no CAP_SYS_NICE here)
        steps.append(("timer slack",
                      lambda: kernel.prctl(kernel.PR_SET_TIMERSLACK, order["timerslack_ns"])))
    else:
        unmatched.append("timer slack")
    for name, set_it in steps:
        try:
            set_it()
        except OSError:
            unmatched.append(name)
    return unmatched


def seccomp_rules_wire(rules: Sequence[Any]) -> list[dict[str, Any]]:
    """``policy.filter.Rule``s as plain data for the actor."""
    return [{"syscall": r.syscall, "errno": r.errno_value,
             "args": [[a.index, a.op, a.value, a.mask] for a in r.args]} for r in rules]


def load_seccomp(rules: list[dict[str, Any]]) -> int:
    """Load ``rules`` (default allow; errno or notify per rule) on every arch the
    container runs, and return the filter's listener fd."""
    filt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    filt.set_attr(pyseccomp.Attr.CTL_NNP, 0)  # libseccomp sets no_new_privs by default
    for arch in {"x86_64": (pyseccomp.Arch.X86, pyseccomp.Arch.X32),
                 "aarch64": (pyseccomp.Arch.ARM,)}.get(os.uname().machine, ()):
        filt.add_arch(arch)
    ops = {EQ: pyseccomp.EQ, NE: pyseccomp.NE}
    for rule in rules:
        action = pyseccomp.NOTIFY if rule["errno"] is None else pyseccomp.ERRNO(rule["errno"])
        args = []
        for index, op, value, mask in rule["args"]:
            if op == MASKED_EQ:
                args.append(pyseccomp.Arg(index, pyseccomp.MASKED_EQ, mask, value))
            else:
                args.append(pyseccomp.Arg(index, ops[op], value))
        try:
            filt.add_rule(action, rule["syscall"], *args)
        except (ValueError, RuntimeError) as err:
            raise OSError(errno.EINVAL, f"rule for {rule['syscall']}: {err}") from err
    filt.load()
    # pyseccomp has no public accessor for the listener of a filter it loaded.
    return int(pyseccomp._libseccomp.seccomp_notify_fd(filt._filter))


def _leave_of(message: dict[str, Any], where: _Membership) -> int:
    """The hierarchies a JSON order says to leave (everything, if it says nothing usable)."""
    leave = message.get("leave")
    return leave if isinstance(leave, int) else where.every


def _refuse(sock: socket.socket, data: bytes, code: int, why: str) -> None:
    """Answer a request in its own wire format without acting."""
    if data[:1] in (_OP_MKNOD, _OP_MKNOD_ANSWER):
        sock.send(_ERRNO.pack(code))
    else:
        _send(sock, {"errno": code, "step": why, "stage": "join"})


def _home_cgroups(hierarchies: Sequence[str]) -> list[str]:
    """The cgroups this process was spawned in (the daemon's), where it waits idle,
    in ``hierarchies`` (keys of /proc/PID/cgroup, as the caller's were given)."""
    with open("/proc/self/cgroup", "rb") as f:
        proc_cgroup = f.read()
    with open("/proc/self/mountinfo") as f:
        ours = dict(procs_files_by_hierarchy(proc_cgroup, f.read()))
    missing = [hierarchy for hierarchy in hierarchies if hierarchy not in ours]
    if missing:
        raise OSError(errno.ENOENT, f"not in hierarchies {', '.join(missing)}", "/proc/self/cgroup")
    return [ours[hierarchy] for hierarchy in hierarchies]


def main(argv: list[str]) -> int:
    """Serve until the socket closes, the container's init exits, or long idle.

    An actor is in the caller's cgroups only while it works, and for a moment
    after (a burst of calls pays the move once) only in those that hold the
    container's init: a task left in a cgroup makes its removal fail (EBUSY),
    and LXC removes a container's cgroups as soon as its init is gone; so the
    actor also exits at once when that init exits."""
    sock_fd, init_pidfd = int(argv[1]), int(argv[2])
    targets = json.loads(argv[3])  # [hierarchy, cgroup.procs] of the caller's cgroups
    kernel.set_dumpable(False)
    kernel.set_pdeathsig(signal.SIGKILL)
    # SCHED_BATCH: woken by an order, the actor does not preempt the daemon's thread
    # on their shared CPU (Actor._follow_cpu), which then finishes what it does
    # before it waits (letting go of the caller's directory: _GO) and the actor
    # runs once.  A program it starts takes the caller's policy (_take_scheduling).
    with contextlib.suppress(OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.umask(0o022)
    with socket.socket(fileno=sock_fd) as sock:
        try:
            where = _Membership([path for _, path in targets],
                                _home_cgroups([hierarchy for hierarchy, _ in targets]))
            where.enter()
        except OSError as err:
            _send(sock, {"step": f"join the caller's cgroups ({err.filename})",
                         "errno": err.errno or errno.EIO})
            return 1
        _send(sock, {"ready": True})
        ids = _Identity(kernel.capget())
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        poller.register(init_pidfd, select.POLLIN)
        fd_room = socket.CMSG_SPACE(16 * _FD.size)
        while True:
            events = poller.poll(_LEAVE_S * 1000 if where.inside else None)
            if events and init_pidfd in (events[0][0], events[-1][0]):  # two fds at most
                # The container's init exited: LXC removes its cgroups now.  Out
                # of them first (a move is faster than tearing this process down).
                where.leave(where.every)
                os._exit(0)
            if not events:
                where.leave(where.every)
                if where.inside:
                    return 0  # cannot leave: exit, which leaves too
                continue
            try:
                data, ancillary, _, _ = sock.recvmsg(_MESSAGE_MAX, fd_room)
            except OSError:
                return 0
            fds = _fds_in(ancillary)
            if not data:
                _close_all(fds)
                return 0
            if data[:1] == _OP_MKNOD_ANSWER and sock.recv(len(_GO)) != _GO:
                _close_all(fds)  # the daemon's end closed before it let go of the directory
                return 0
            try:
                try:
                    where.enter()
                except OSError as err:
                    # The caller's cgroup is gone (its container is going).
                    _let_go(fds, where, where.every)
                    _refuse(sock, data, errno.ESRCH, f"join the caller's cgroups "
                            f"({err.filename}: {err.strerror})")
                    continue
                if data[:1] == _OP_MKNOD:
                    _do_mknodat(sock, data, fds, ids, where)
                    continue
                if data[:1] == _OP_MKNOD_ANSWER:
                    _do_mknodat_answering(sock, data, fds, ids, where)
                    continue
                ids.ourselves()
                if data == _OP_LONG and fds:
                    holder = fds.pop(0)
                    try:
                        data = os.pread(holder, _ORDER_MAX, 0)
                    finally:
                        os.close(holder)
                message = json.loads(data)
                op = message.get("op")
                if op == "mount":
                    _do_mount(sock, message, fds, where)
                elif op == "run":
                    _do_run(sock, message, fds, where)
                elif op == "step":
                    _do_step(sock, message, fds, where)
                else:
                    _let_go(fds, where, _leave_of(message, where))
                    _send(sock, {"errno": errno.EIO})
            finally:
                _close_all(fds)  # what an order that failed midway still holds


if __name__ == "__main__":
    logging.disable(logging.CRITICAL)
    sys.exit(main(sys.argv))
