"""One notification, whatever brought it: the neutral request every handler sees.

A request is what the kernel said (notification id, calling thread, arch,
syscall, arguments) plus the container it came from and the fds it owns:
the ``/proc/TID`` directory of the calling thread (opened for us by LXC, or
by the listener transport on first use), and the seccomp listener, for
``SECCOMP_IOCTL_NOTIF_ID_VALID`` and ``ADDFD``.

Kernel facts behind it:

* ``/proc/TID`` opened while the notification is valid names that task for
  as long as the fd lives: if the task dies and its id is reused, reads
  through the fd fail with ESRCH instead of reading a stranger.
* The caller's memory is read with ``process_vm_readv``, which, like the
  kernel's own copy_from_user, faults on a page the caller cannot read
  (``/proc/PID/mem`` reads through PROT_NONE).  It names the task by
  number, so every read is followed by an ID_VALID check before acting:
  a valid notification means the task still waits in the syscall, so the
  number was still its own.
* A compat (i386) caller's arguments are 32 bits wide; the upper halves of
  the 64-bit registers are not part of its call and are cut off here, once,
  for every handler.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NamedTuple

from . import kernel
from .errors import RequestGone

# Arches whose syscall arguments are 32-bit values.
_ARCHES_32: Final = frozenset({kernel.AUDIT_ARCH_I386, kernel.AUDIT_ARCH_ARM})
_DIR_FLAGS: Final = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


# What a request knows of its caller's container (caller/task.py reads the rest).


@dataclass(frozen=True, slots=True)
class IdMap:
    """One ``uid_map``/``gid_map``: (inside, outside, count) ranges."""

    ranges: tuple[tuple[int, int, int], ...]

    @classmethod
    def parse(cls, text: str) -> IdMap:
        return cls(tuple((int(a), int(b), int(c)) for a, b, c in
                         (line.split() for line in text.splitlines() if line.strip())))

    def maps_host_id(self, host_id: int) -> bool:
        return any(outside <= host_id < outside + count for _, outside, count in self.ranges)

    def to_inside(self, host_id: int) -> int | None:
        """The id ``host_id`` has inside the namespace, None if it has none."""
        for inside, outside, count in self.ranges:
            if outside <= host_id < outside + count:
                return inside + host_id - outside
        return None


@dataclass(frozen=True, slots=True)
class ContainerUserns:
    """A running container's user namespace as its init shows it: the namespace's
    identity and id maps, with the container's name and init pid.

    Read once per init pid and never changed (a namespace's maps are written
    once); what the daemon keeps and changes for a container is
    ``handlers/call.py``'s ``SupervisedContainer``."""

    name: str
    init_pid: int
    user_ns: str  # readlink of its ns/user: "user:[INODE]", unique while it lives
    uid_map: IdMap
    gid_map: IdMap

    @classmethod
    def read(cls, name: str, init_pid: int, proc_root: str = "/proc") -> ContainerUserns:
        base = f"{proc_root}/{init_pid}"
        try:
            user_ns = os.readlink(f"{base}/ns/user")
            with open(f"{base}/uid_map") as uid_map, open(f"{base}/gid_map") as gid_map:
                return cls(name, init_pid, user_ns,
                           IdMap.parse(uid_map.read()), IdMap.parse(gid_map.read()))
        except FileNotFoundError as err:
            raise OSError(errno.ESRCH, f"container init {init_pid} is gone") from err

    def maps_owner(self, uid: int, gid: int) -> bool:
        return self.uid_map.maps_host_id(uid) and self.gid_map.maps_host_id(gid)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the caller's syscall returns: ``val``, ``-error``, or the kernel's own result."""

    val: int = 0
    error: int = 0
    let_kernel_decide: bool = False  # SECCOMP_USER_NOTIF_FLAG_CONTINUE
    ours: bool = True  # False: a call the policy has no opinion on (not audited)


DONE: Final = Answer()
KERNEL_DECIDES: Final = Answer(let_kernel_decide=True)
# Handed back because it is none of our business (a user.* xattr, a device no
# rule names, a filesystem we do not emulate): counted, never audited.
NOT_OURS: Final = Answer(let_kernel_decide=True, ours=False)


class EarlyReply:
    """How the actor that makes a request's last step may answer the caller itself.

    A transport that can hand its answer over as bytes on an fd (LXC's proxy
    connection: the datagram LXC's monitor waits for) offers one per request.
    The actor then sends ``done()`` the moment its step succeeded, before the
    daemon hears back: the caller's wait is one hop shorter (issue 18: the
    structure's cost per emulated request).  ``answered`` says it did; the
    transport then sends nothing more for that request."""

    __slots__ = ("sink_fd", "done", "answered")

    def __init__(self, sink_fd: int, done: Callable[[], bytes]) -> None:
        self.sink_fd = sink_fd
        self.done = done  # the datagram answering "done" (0), made only if it is needed
        self.answered = False


class Notice(NamedTuple):
    """``struct seccomp_notif`` decoded: what the kernel says, before any lookup.
    A NamedTuple: one is made per notification before it is answered, and a
    frozen dataclass costs three times as much to make."""

    notif_id: int
    tid: int  # the calling thread's id on the host (not its process id)
    arch: int
    nr: int
    args: tuple[int, int, int, int, int, int]

    def narrowed(self) -> Notice:
        """The same call with arguments as wide as the caller's arch makes them."""
        if self.arch not in _ARCHES_32:
            return self
        a0, a1, a2, a3, a4, a5 = (arg & 0xFFFFFFFF for arg in self.args)
        return Notice(self.notif_id, self.tid, self.arch, self.nr, (a0, a1, a2, a3, a4, a5))


class Request:
    """One notification being served.  The transport owns the listener and any
    ``proc_fd`` it passes in; a ``/proc/TID`` fd opened here is closed by ``close``."""

    __slots__ = ("container", "notice", "syscall", "listener_fd", "details", "keeps_details",
                 "early", "_proc_fd", "_proc_root", "_owns_proc_fd")

    def __init__(self, container: ContainerUserns, notice: Notice, syscall: str,
                 listener_fd: int, proc_fd: int = -1, proc_root: str | int = "/proc",
                 keeps_details: bool = True, early: EarlyReply | None = None) -> None:
        self.container = container
        self.notice = notice.narrowed()
        self.syscall = syscall
        self.listener_fd = listener_fd
        # The call's arguments as the handler decoded them (paths as text), for the audit
        # log; with no audit log nothing is kept, and nothing read for it alone.
        self.details: dict[str, object] = {}
        self.keeps_details = keeps_details
        self.early = early  # the transport's offer to let an actor answer (None: none)
        self._proc_fd = proc_fd
        self._proc_root = proc_root
        self._owns_proc_fd = False

    @property
    def tid(self) -> int:
        return self.notice.tid

    @property
    def notif_id(self) -> int:
        return self.notice.notif_id

    @property
    def args(self) -> tuple[int, int, int, int, int, int]:
        return self.notice.args

    @property
    def proc_fd(self) -> int:
        """The caller's ``/proc/TID`` directory, opened on first use where no
        transport brought one, and then checked to be the caller's."""
        if self._proc_fd < 0:
            try:
                # proc_root is best the serving thread's fd of the host's /proc: a
                # path would resolve in the caller's root if opened in a scope.
                if isinstance(self._proc_root, int):
                    self._proc_fd = os.open(str(self.tid), _DIR_FLAGS, dir_fd=self._proc_root)
                else:
                    self._proc_fd = os.open(f"{self._proc_root}/{self.tid}", _DIR_FLAGS)
            except FileNotFoundError:
                raise self.gone() from None
            self._owns_proc_fd = True
            self.ensure_valid()  # the id may have been reused before the open
        return self._proc_fd

    def close(self) -> None:
        if self._owns_proc_fd and self._proc_fd >= 0:
            os.close(self._proc_fd)
        self._proc_fd = -1
        self._owns_proc_fd = False

    def note(self, **details: object) -> None:
        """Record decoded arguments (``path="/dev/null"``, ``dev="c 1:3"``) for the audit
        log; bytes become text, undecodable bytes escaped, never raise."""
        if not self.keeps_details:
            return
        for key, value in details.items():
            self.details[key] = os.fsdecode(value) if isinstance(value, bytes) else value

    # --- the caller's memory ------------------------------------------------------

    def read_string(self, address: int, limit: int = kernel.PATH_MAX) -> bytes:
        """A NUL-terminated string, as the kernel's getname() reads it."""
        return kernel.read_task_c_string(self.tid, address, limit)

    def read_bytes(self, address: int, size: int) -> bytes:
        """Exactly ``size`` bytes (a struct, a mount's data page); EFAULT otherwise."""
        return kernel.read_task_memory(self.tid, address, size)

    def write_bytes(self, address: int, data: bytes) -> None:
        """Write into the caller's memory (an output struct); EFAULT on a read-only page."""
        kernel.write_task_memory(self.tid, address, data)

    # --- validity -------------------------------------------------------------------

    def ensure_valid(self) -> None:
        """Raise RequestGone unless the caller still waits in the syscall.

        Called after every read of its memory or /proc and before acting: the
        task may have died in between, and its id been reused.
        """
        if not kernel.notif_id_valid(self.listener_fd, self.notif_id):
            raise self.gone()

    def gone(self) -> RequestGone:
        return RequestGone(self.container.name, self.tid, self.syscall, self.notif_id)
