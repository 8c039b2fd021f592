"""LXC's transport: the seccomp proxy (``lxc.seccomp.notify.proxy``), as LXC 5.0 speaks it.

Everything specific to LXC is here: the datagram, the reply bytes, the
cookie that names a container, the monitor connections.

Per notification the container's monitor sends one SOCK_SEQPACKET datagram in
native byte order::

    struct seccomp_notify_proxy_msg {
        __u64 __reserved;                  /*   0: always 0            */
        pid_t monitor_pid;                 /*   8: host pid            */
        pid_t init_pid;                    /*  12: container init      */
        struct seccomp_notif_sizes sizes;  /*  16: 3 x __u16, +2 pad   */
        __u64 cookie_len;                  /*  24                      */
        /* struct seccomp_notif      (80)     32                      */
        /* struct seccomp_notif_resp (24)    112: id filled in        */
        /* char cookie[cookie_len]           136: no NUL              */
    };

with three fds attached: ``/proc/PID`` (a directory fd), ``/proc/PID/mem``
(read-write) and the seccomp listener.  The answer is the first 136 bytes
with the response filled in; LXC then answers the kernel itself.  A reply of
any other length makes LXC answer ENOSYS, which is what we send for a
datagram we cannot trust.
"""

from __future__ import annotations

import array
import contextlib
import errno
import hmac
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

from ..errors import ProtocolError, SupervisorFault
from ..kernel.seccomp import SECCOMP_USER_NOTIF_FLAG_CONTINUE, NotifSizes
from ..paths import claim_socket_path
from ..request import Answer, EarlyReply, Notice
from .threads import admit, start_serving

if TYPE_CHECKING:
    from ..caller.thread import ThreadState
    from ..dispatch import Dispatcher, SupervisedContainer

log = logging.getLogger(__name__)

_HEADER_AND_NOTIF: Final = struct.Struct("=QiiHHHxxQ" "QIIiIQ6Q")
_RESP: Final = struct.Struct("=QqiI")
NOTIF_OFFSET: Final = 32
RESP_OFFSET: Final = 112
REPLY_SIZE: Final = 136
MAX_COOKIE: Final = 1024
FDS_PER_MESSAGE: Final = 3

# A reply LXC cannot parse; it then answers the caller ENOSYS (seen with 5.0.2).
UNPARSEABLE_REPLY: Final = b"\0"


class Notification(NamedTuple):
    """One seccomp notification as LXC forwarded it.  A NamedTuple: made for every
    datagram before its answer, in a third of a frozen dataclass's time."""

    notif_id: int
    pid: int  # the calling *thread*'s id on the host
    flags: int
    nr: int
    arch: int
    instruction_pointer: int
    args: tuple[int, int, int, int, int, int]
    monitor_pid: int
    init_pid: int
    cookie: bytes
    raw_head: bytes  # header + notif, echoed back in the reply

    def reply(self, *, error: int = 0, val: int = 0, flags: int = 0) -> bytes:
        """The datagram that answers this notification.  ``error`` is a positive errno."""
        return self.raw_head + _RESP.pack(self.notif_id, val, -error, flags)


def parse(datagram: bytes, fd_count: int, sizes: NotifSizes) -> Notification:
    """Validate and decode one datagram; ProtocolError says what is wrong with it."""
    if len(datagram) < REPLY_SIZE:
        raise ProtocolError(f"datagram of {len(datagram)} bytes, need at least {REPLY_SIZE}")
    (reserved, monitor_pid, init_pid, size_notif, size_resp, size_data, cookie_len,
     notif_id, pid, flags, nr, arch, ip, a0, a1, a2, a3, a4, a5) = _HEADER_AND_NOTIF.unpack_from(
        datagram)
    if reserved != 0:
        raise ProtocolError(f"reserved field is {reserved:#x}, not 0")
    if (size_notif, size_resp, size_data) != (
            sizes.seccomp_notif, sizes.seccomp_notif_resp, sizes.seccomp_data):
        raise ProtocolError(
            f"struct sizes {size_notif}/{size_resp}/{size_data} differ from the kernel's "
            f"{sizes.seccomp_notif}/{sizes.seccomp_notif_resp}/{sizes.seccomp_data}")
    if cookie_len > MAX_COOKIE or len(datagram) != REPLY_SIZE + cookie_len:
        raise ProtocolError(f"cookie length {cookie_len} does not match a {len(datagram)}-byte "
                            "datagram")
    if fd_count != FDS_PER_MESSAGE:
        raise ProtocolError(f"{fd_count} fds attached, expected {FDS_PER_MESSAGE}")
    resp_id = _RESP.unpack_from(datagram, RESP_OFFSET)[0]
    if resp_id != notif_id:
        raise ProtocolError(f"response id {resp_id:#x} is not the notification id {notif_id:#x}")
    if monitor_pid <= 0 or init_pid <= 0 or pid <= 0:
        raise ProtocolError(f"bad pids: monitor {monitor_pid}, init {init_pid}, caller {pid}")
    return Notification(notif_id, pid, flags, nr, arch, ip, (a0, a1, a2, a3, a4, a5),
                        monitor_pid, init_pid, datagram[REPLY_SIZE:], datagram[:RESP_OFFSET])


def cookie_matches(presented: bytes, expected: bytes) -> bool:
    """Constant-time comparison: the cookie is a secret."""
    return hmac.compare_digest(presented, expected)


def build(notif_id: int, pid: int, nr: int, arch: int, args: tuple[int, ...], *,
          init_pid: int, cookie: bytes, sizes: NotifSizes, monitor_pid: int = 1) -> bytes:
    """Encode a datagram as LXC would (tests and the benchmark's fake monitor)."""
    padded = tuple(args) + (0,) * (6 - len(args))
    head = _HEADER_AND_NOTIF.pack(
        0, monitor_pid, init_pid, sizes.seccomp_notif, sizes.seccomp_notif_resp,
        sizes.seccomp_data, len(cookie), notif_id, pid, 0, nr, arch, 0, *padded)
    return head + _RESP.pack(notif_id, 0, 0, 0) + cookie


def unpack_reply(reply: bytes) -> tuple[int, int, int, int]:
    """``(id, val, error, flags)`` of a reply (tests)."""
    if len(reply) != REPLY_SIZE:
        raise ProtocolError(f"reply of {len(reply)} bytes")
    notif_id, val, error, flags = _RESP.unpack_from(reply, RESP_OFFSET)
    return notif_id, val, error, flags


# --- serving LXC's monitors ----------------------------------------------------------------

_MAX_DATAGRAM: Final = REPLY_SIZE + MAX_COOKIE + 1
_MAX_FDS: Final = 8  # more than LXC ever sends: extra fds are received (and closed), not dropped
_ANCILLARY: Final = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)

Lookup = Callable[[bytes], "SupervisedContainer | None"]


class LxcProxy:
    """The socket LXC's monitors connect to; one thread answers each connection.

    Each container's monitor opens one SOCK_SEQPACKET connection and sends its
    notifications one at a time, waiting for each answer; so one thread per
    connection serves a container with no queueing of its own, and a slow
    request in one container never delays another.

    The rule every line here keeps: **every datagram gets an answer**.  A
    malformed datagram or an unknown cookie gets one LXC turns into ENOSYS,
    logged; everything else is the dispatcher's answer.  The three fds that
    come with each datagram are closed on every path.  A connection thread
    blocks in recvmsg (no poll: one syscall less per notification) and is
    stopped by shutting its socket down, which ends that receive with EOF.
    """

    def __init__(self, path: Path, dispatcher: Dispatcher, lookup: Lookup, sizes: NotifSizes,
                 proc_root: str = "/proc", max_connections: int = 1024) -> None:
        self.path = path
        self.dispatcher = dispatcher
        self.lookup = lookup
        self.max_connections = max_connections  # daemon.toml's limits.connections
        self.sizes = sizes
        self.proc_root = proc_root
        self.sock: socket.socket | None = None
        self._owns_path = False  # we bound it (not systemd): we remove it
        self._threads: dict[threading.Thread, socket.socket] = {}
        self._lock = threading.Lock()

    def bind(self, inherited: socket.socket | None = None) -> None:
        """Listen on ``path``; or on ``inherited``, a listening socket systemd holds
        for us (lxc-notify.socket), which is then never unlinked: it outlives us."""
        if inherited is not None:
            self.sock, self._owns_path = inherited, False
            return
        path = self.path
        claim_socket_path(path, socket_answers)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        self.sock, self._owns_path = sock, True

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def accept(self) -> None:
        """Take one connection (the socket is readable); root's only."""
        assert self.sock is not None
        try:
            conn, _ = self.sock.accept()
        except OSError as err:
            log.warning("accept failed: %s", err)
            return
        self._take(conn)

    def _take(self, conn: socket.socket) -> None:
        # A refused monitor's send fails, LXC reconnects once, then answers ENOSYS.
        pid = admit(conn, self._lock, self._threads, self.max_connections, label="",
                    peer="LXC", served="connections")
        if pid is None:
            return

        def refused(err: RuntimeError) -> None:
            # Closed: the monitor's send fails, LXC reconnects once, then answers ENOSYS.
            log.error("monitor pid %d not served: %s", pid, err)
            conn.close()

        start_serving(f"lxc-notify-conn-{pid}", lambda: self._serve_connection(conn, pid),
                      self._lock, self._threads, conn, refused=refused,
                      failed=f"monitor pid {pid}: connection thread failed")

    def close(self) -> None:
        """Stop accepting, end every connection (a request being handled is
        finished and answered first) and wait for their threads.

        Connections the kernel completed that were not accepted yet may hold a
        datagram (a monitor sends right after connecting): they are taken and
        served too, or their callers would get ENOSYS and LXC would give up."""
        if self.sock is not None:
            self.sock.setblocking(False)
            while True:
                try:
                    conn, _ = self.sock.accept()
                except OSError:  # BlockingIOError: none left
                    break
                conn.setblocking(True)
                self._take(conn)
            self.sock.close()
            if self._owns_path:
                self.path.unlink(missing_ok=True)
        with self._lock:
            threads = list(self._threads.items())
        for _, conn in threads:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)
        for thread, _ in threads:
            thread.join()

    def _serve_connection(self, conn: socket.socket, peer_pid: int) -> None:
        # Not needed to parse a datagram:
        from ..caller.thread import ThreadState, thread_state

        session = _Session(peer_pid)
        # Made with the first datagram, and again with each one while it cannot be
        # (EMFILE: its fds): each datagram meanwhile is answered as a supervisor
        # fault, never left to LXC's 30 s timeout.
        caller: ThreadState | SupervisorFault | None = None
        held: str | None = None  # the user namespace whose twins this connection keeps
        try:
            while True:
                datagram, fds, flags = _receive(conn)
                try:
                    if not datagram and not fds:
                        break  # the monitor closed: the container stopped
                    if not isinstance(caller, ThreadState):
                        caller = thread_state(self.proc_root)
                    # Sent as soon as it is known (the dispatcher counts and audits
                    # after), or returned to be sent here; the fds closed after.
                    reply = self._reply(datagram, fds, flags, session, caller, conn.send,
                                        conn.fileno())
                    if reply is not None:
                        conn.send(reply)
                finally:
                    for fd in fds:
                        os.close(fd)
                if (held is None and isinstance(caller, ThreadState)
                        and caller.cached_view is not None):
                    held = caller.cached_view.user_ns
                    self.dispatcher.host.nodes.hold(held)
                if isinstance(caller, ThreadState) and caller.broken:
                    log.critical("%s: closing the connection: this thread's identity is "
                                 "not its own any more", session.label)
                    break
        except OSError as err:
            # The monitor went away mid-exchange: normal when a container stops.
            log.debug("%s: connection ended: %s", session.label, err)
        except Exception:
            log.exception("%s: connection thread failed", session.label)
        finally:
            conn.close()
            if isinstance(caller, ThreadState):
                caller.close()
            if held is not None:
                # With the container's last connection, its twins' names go.
                self.dispatcher.host.nodes.release(held)
            # A connection that never named a container is a liveness probe
            # (lxc-notify start, tests): not worth an info line.
            log.log(logging.INFO if session.container else logging.DEBUG,
                    "%s: disconnected (%s)", session.label, session.stats())
            if session.container is not None:
                session.container.add_connection(-1)

    def _reply(self, datagram: bytes, fds: list[int], flags: int, session: _Session,
               caller: ThreadState | SupervisorFault,
               send: Callable[[bytes], object], sink_fd: int = -1) -> bytes | None:
        """The reply for one datagram: every datagram gets one.  ``caller`` is the
        thread's ThreadState, or why it has none.

        A notification the dispatcher answers is sent through ``send`` as soon as
        its answer is known, before the request is counted and audited, and None is
        returned; what ``send`` raises is all this raises.  Anything else (a
        datagram refused before the dispatcher) is returned to be sent.

        ``sink_fd`` (the connection's) is offered to the request's actor, which
        then sends a "done" itself, as soon as its step is made (EarlyReply);
        the datagrams on the connection stay one answer per request."""
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise ProtocolError("datagram or its fds were truncated")
            notification = parse(datagram, len(fds), self.sizes)
        except ProtocolError as err:
            log.warning("%s: malformed datagram refused (caller gets ENOSYS): %s",
                        session.label, err)
            return UNPARSEABLE_REPLY
        try:
            container = session.bind(notification.cookie, self.lookup)
        except Exception:
            log.exception("%s: container lookup failed (caller gets ENOSYS)", session.label)
            container = None
        if container is None:
            log.warning("%s: unknown cookie refused (pid %d gets ENOSYS)", session.label,
                        notification.pid)
            return notification.reply(error=errno.ENOSYS)
        notice = Notice(notification.notif_id, notification.pid, notification.arch,
                        notification.nr, notification.args)
        if isinstance(caller, SupervisorFault):
            return _encode(notification, self.dispatcher.refuse(container, notice, caller))
        sent = False

        def reply(answer: Answer) -> None:
            nonlocal sent
            sent = True  # tried: if the send fails, the monitor is gone
            send(_encode(notification, answer))

        early = None if sink_fd < 0 else EarlyReply(sink_fd, notification.reply)
        answer = self.dispatcher.answer(container, notice, caller, notification.init_pid,
                                        listener_fd=fds[2], proc_fd=fds[0], send=reply,
                                        early=early)
        return None if sent or early is not None and early.answered else _encode(
            notification, answer)


def _encode(notification: Notification, answer: Answer) -> bytes:
    if answer.let_kernel_decide:
        return notification.reply(flags=SECCOMP_USER_NOTIF_FLAG_CONTINUE)
    return notification.reply(error=answer.error, val=answer.val)


class _Session:
    """What one connection has learned: which container it serves."""

    def __init__(self, peer_pid: int) -> None:
        self.peer_pid = peer_pid
        self.container: SupervisedContainer | None = None

    @property
    def label(self) -> str:
        if self.container is not None:
            return f"container {self.container.name}"
        return f"monitor pid {self.peer_pid}"

    def bind(self, cookie: bytes, lookup: Lookup) -> SupervisedContainer | None:
        """The container this connection serves; one cookie per connection."""
        if self.container is not None:
            expected = self.container.record.cookie.encode()
            return self.container if cookie_matches(cookie, expected) else None
        self.container = lookup(cookie)
        if self.container is not None:
            self.container.add_connection(1)
            log.info("%s: connected (monitor pid %d)", self.label, self.peer_pid)
        return self.container

    def stats(self) -> str:
        if self.container is None:
            return "no requests"
        stats = self.container.counts()
        return ", ".join(f"{k} {v}" for k, v in sorted(stats.items())) or "no requests"


def _receive(conn: socket.socket) -> tuple[bytes, list[int], int]:
    datagram, ancillary, flags, _ = conn.recvmsg(_MAX_DATAGRAM, _ANCILLARY,
                                                 socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % array.array("i").itemsize
            fds.extend(array.array("i", data[:usable]))
    return datagram, fds, flags


def socket_answers(path: Path) -> bool:
    """Whether a daemon listens on ``path`` (a second one must not take it over)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()
