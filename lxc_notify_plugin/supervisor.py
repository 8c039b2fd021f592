"""The supervisor: LXC's monitors connect here, one thread answers each container.

Each container's LXC monitor opens one SOCK_SEQPACKET connection and sends
its notifications one at a time, waiting for each answer; so one thread per
connection serves a container with no queueing of its own, and a slow
request in one container never delays another.

The rule every line here keeps: **every datagram gets an answer**.  A
container task waiting on us is stuck until LXC answers the kernel, and LXC
waits for us (up to 30 s).  Handler errors become the errno the kernel would
give; a malformed datagram, an unknown cookie or a bug becomes an answer
that makes LXC return ENOSYS, and is logged with the container, pid, syscall
and notification id.  The three fds that come with each datagram are closed
on every path.
"""

from __future__ import annotations

import array
import contextlib
import errno
import json
import logging
import os
import select
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import kernel
from .caller import ContainerView, Request, SupervisorThread
from .errors import ConfigError, ProtocolError, RequestGone, ThreadIdentityLost
from .handlers import Answer, Handler, handlers
from .host.udev import HostDeviceIndex, UdevWatcher
from .paths import Paths, atomic_write
from .policy.effective import ContainerPolicy
from .state import ContainerRecord, StateStore
from .transport import lxc as protocol

log = logging.getLogger(__name__)

_MAX_DATAGRAM = protocol.REPLY_SIZE + protocol.MAX_COOKIE + 1
_MAX_FDS = 8  # more than LXC ever sends, so extra fds are received (and closed), not dropped
_ANCILLARY = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)
_PEERCRED = struct.Struct("3i")

# Which intercept switch each trapped syscall belongs to.
SYSCALL_FAMILY = {"mknod": "mknod", "mknodat": "mknod"}


@dataclass
class Container:
    """A container the daemon knows: its record and the policy compiled from it."""

    record: ContainerRecord
    policy: ContainerPolicy
    stats: Counter[str] = field(default_factory=Counter)
    connections: int = 0  # LXC monitors connected for it now


class ContainerRegistry:
    """cookie -> Container, read from the state directory when a cookie is new."""

    def __init__(self, paths: Paths) -> None:
        self._store = StateStore(paths)
        self._paths = paths
        self._by_cookie: dict[bytes, Container] = {}
        self._lock = threading.Lock()

    def lookup(self, cookie: bytes) -> Container | None:
        with self._lock:
            known = self._find(cookie)
            if known is None:
                self._rescan()
                known = self._find(cookie)
            return known

    def containers(self) -> list[Container]:
        with self._lock:
            return list(self._by_cookie.values())

    def _find(self, cookie: bytes) -> Container | None:
        for candidate, container in self._by_cookie.items():
            if protocol.cookie_matches(candidate, cookie):
                return container
        return None

    def _rescan(self) -> None:
        try:
            records, errors = self._store.all()
        except OSError as err:
            log.error("cannot read container state: %s", err)
            return
        for error in errors:
            log.error("container state refused: %s", error)
        for record in records:
            cookie = record.cookie.encode()
            if cookie in self._by_cookie:
                continue
            try:
                policy = self._store.policy(record)
            except ConfigError as err:
                log.error("container %s: policy refused, its calls get ENOSYS: %s",
                          record.name, err)
                continue
            except Exception:
                log.exception("container %s: policy could not be built", record.name)
                continue
            self._by_cookie[cookie] = Container(record, policy)

    def reload(self) -> list[str]:
        """Re-read every known container's record and profiles.

        All or nothing per container: a record or profile that fails any
        check leaves that container on the policy it had, and says why.
        Swapping ``container.policy`` is one reference assignment and a request
        reads it once, so it runs under the old policy or the new, never a mix.
        """
        with self._lock:
            containers = list(self._by_cookie.values())
        changed = 0
        refused: list[str] = []
        for container in containers:
            name = container.record.name
            try:
                record = self._store.get(name)
                if record is None or record.cookie != container.record.cookie:
                    continue  # disabled or re-enabled: it keeps its policy until it stops
                policy = self._store.policy(record)
            except (OSError, ConfigError) as err:
                log.error("container %s: reload refused, old policy kept: %s", name, err)
                refused.append(name)
                continue
            except Exception:
                log.exception("container %s: reload failed, old policy kept", name)
                refused.append(name)
                continue
            if policy.intercept != container.policy.intercept:
                log.warning("container %s: intercepted calls changed (%s -> %s): the "
                            "container's filter changes at its next start", name,
                            ",".join(sorted(container.policy.intercept)) or "none",
                            ",".join(sorted(policy.intercept)) or "none")
            container.policy = policy
            changed += 1
        log.info("reloaded: %d of %d containers have a new policy", changed, len(containers))
        return refused


class Supervisor:
    def __init__(self, paths: Paths, registry: ContainerRegistry | None = None,
                 proc_root: str = "/proc") -> None:
        self.paths = paths
        self.registry = registry or ContainerRegistry(paths)
        self.proc_root = proc_root
        self.sizes = kernel.notif_sizes()
        kernel.check_struct_sizes(self.sizes)
        self.syscalls = kernel.syscall_numbers(tuple(SYSCALL_FAMILY))
        self.handlers: dict[str, Handler] = handlers()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._listener: socket.socket | None = None
        self._reloads = 0
        self.host_devices = HostDeviceIndex()
        self._udev = UdevWatcher(self.host_devices, paths.udev_control)
        self._threads: dict[threading.Thread, socket.socket] = {}
        self._threads_lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------

    def bind(self) -> None:
        path = self.paths.socket
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)
        if path.exists():
            if _socket_answers(path):
                raise OSError(errno.EADDRINUSE, f"a supervisor already listens on {path}")
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        atomic_write(self.paths.pid_file, f"{os.getpid()}\n", mode=0o644)
        log.info("listening on %s (pid %d)", path, os.getpid())

    def serve(self) -> None:
        """Accept connections until stop(); then wait for every connection thread."""
        if self._listener is None:
            self.bind()
        assert self._listener is not None
        poller = select.poll()
        poller.register(self._listener, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            self._udev.start()
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._wake_r in ready:
                    wanted = os.read(self._wake_r, 64)
                    if b"x" in wanted:
                        break
                    if b"r" in wanted:
                        self._reload()
                    if b"s" in wanted:
                        self._write_status()
                    continue
                try:
                    conn, _ = self._listener.accept()
                except OSError as err:
                    log.warning("accept failed: %s", err)
                    continue
                self._admit(conn)
        finally:
            self._listener.close()
            self.paths.socket.unlink(missing_ok=True)
            self.paths.pid_file.unlink(missing_ok=True)
            self.paths.reload_file.unlink(missing_ok=True)
            self.paths.status_file.unlink(missing_ok=True)
            with self._threads_lock:
                threads = list(self._threads.items())
            for _, conn in threads:
                # Wakes the thread's blocking receive with EOF; a request being
                # handled is finished and answered first.
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RD)
            for thread, _ in threads:
                thread.join()
            self._udev.stop()
            os.close(self._wake_r)
            os.close(self._wake_w)
            log.info("stopped")

    def _reload(self) -> None:
        started = time.monotonic_ns()
        try:
            refused = self.registry.reload()
        except Exception:
            log.exception("reload failed; every container keeps its policy")
            refused = ["*"]
        self._reloads += 1
        self._answer_admin(self.paths.reload_file, started,
                           {"reloads": self._reloads, "refused": refused})

    def _write_status(self) -> None:
        """What an admin sees with `lxc-notify status`."""
        self._answer_admin(self.paths.status_file, time.monotonic_ns(), {
            "pid": os.getpid(), "reloads": self._reloads,
            "udev": {"running": self._udev.running, "devices": len(self.host_devices)},
            "containers": [{
                "name": c.record.name, "profile": c.record.profile,
                "connected": c.connections > 0,
                "intercept": sorted(c.policy.intercept), "requests": dict(c.stats),
            } for c in self.registry.containers()],
        })

    def _answer_admin(self, path: Path, stamp_ns: int, body: dict[str, object]) -> None:
        """Answer a signal from `lxc-notify`: JSON beside the socket, stamped with
        CLOCK_MONOTONIC (one clock for every process of a boot) when the work
        began, so the command can tell this answer from an older one."""
        try:
            atomic_write(path, json.dumps({"stamp_ns": stamp_ns, **body}, indent=1) + "\n",
                         mode=0o600)
        except OSError as err:
            log.error("cannot answer in %s: %s", path, err)

    def request_status(self) -> None:
        """Ask serve() to write its status (signal-safe: SIGUSR1)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"s")

    def request_reload(self) -> None:
        """Ask serve() to reload every container's policy (signal-safe: SIGHUP)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"r")

    def stop(self) -> None:
        """Ask serve() to finish (signal-safe); serve() then ends every connection."""
        with contextlib.suppress(OSError):  # already stopping: the pipe may be closed
            os.write(self._wake_w, b"x")

    def _admit(self, conn: socket.socket) -> None:
        pid, uid, _ = _PEERCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        if uid != 0:
            log.warning("refused a connection from pid %d uid %d: only root's LXC may connect",
                        pid, uid)
            conn.close()
            return
        thread = threading.Thread(target=self._serve_connection, args=(conn, pid),
                                  name=f"lxc-notify-conn-{pid}")
        with self._threads_lock:
            self._threads[thread] = conn
        thread.start()

    # --- one connection: one container ------------------------------------------------

    def _serve_connection(self, conn: socket.socket, peer_pid: int) -> None:
        session = _Session(peer_pid)
        try:
            session.thread = SupervisorThread()
            while True:
                # Blocking receive, no poll: stop() shuts the socket down, which
                # ends this receive with EOF; one syscall less per notification.
                datagram, fds, flags = _receive(conn)
                try:
                    if not datagram and not fds:
                        break  # the monitor closed: the container stopped
                    reply = self._answer(datagram, fds, flags, session)
                finally:
                    for fd in fds:
                        os.close(fd)
                conn.send(reply)
                if session.broken:
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
            if session.thread is not None:
                session.thread.close()
            # A connection that never named a container is a liveness probe
            # (lxc-notify start, tests): not worth an info line.
            log.log(logging.INFO if session.container else logging.DEBUG,
                    "%s: disconnected (%s)", session.label, _format_stats(session))
            if session.container is not None:
                session.container.connections -= 1
            with self._threads_lock:
                self._threads.pop(threading.current_thread(), None)

    def _answer(self, datagram: bytes, fds: list[int], flags: int, session: _Session) -> bytes:
        """The reply for one datagram.  Never raises: every datagram gets an answer."""
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise ProtocolError("datagram or its fds were truncated")
            notification = protocol.parse(datagram, len(fds), self.sizes)
        except ProtocolError as err:
            log.warning("%s: malformed datagram refused (caller gets ENOSYS): %s",
                        session.label, err)
            return protocol.UNPARSEABLE_REPLY
        try:
            answer = self._dispatch(notification, fds, session)
        except Exception as err:
            log.exception("%s: pid %d, notification %#x: supervisor error (caller gets ENOSYS)",
                          session.label, notification.pid, notification.notif_id)
            session.broken = isinstance(err, ThreadIdentityLost)
            answer = Answer(error=errno.ENOSYS)
        if answer.let_kernel_decide:
            return notification.reply(flags=kernel.SECCOMP_USER_NOTIF_FLAG_CONTINUE)
        return notification.reply(error=answer.error, val=answer.val)

    def _dispatch(self, notification: protocol.Notification, fds: list[int],
                  session: _Session) -> Answer:
        container = session.bind(notification.cookie, self.registry)
        if container is None:
            log.warning("%s: unknown cookie refused (pid %d gets ENOSYS)", session.label,
                        notification.pid)
            return Answer(error=errno.ENOSYS)
        policy = container.policy  # once: a reload may swap it meanwhile
        syscall = self.syscalls.get((notification.arch, notification.nr))
        if syscall is None or not policy.intercepts(SYSCALL_FAMILY[syscall]):
            # An arch or call we do not handle: the kernel decides, never a guess.
            container.stats["kernel"] += 1
            return Answer(let_kernel_decide=True)
        view = session.view(container.record.name, notification.init_pid, self.proc_root)
        request = Request(notification, syscall, view, fds[0], fds[1], fds[2],
                          self.host_devices)
        assert session.thread is not None
        try:
            answer = self.handlers[syscall](request, session.thread, policy)
        except RequestGone as gone:
            log.debug("%s", gone)
            container.stats["gone"] += 1
            return Answer(error=errno.ESRCH)
        except OSError as err:
            if err.errno == errno.ESRCH:  # /proc/PID of a task that just died
                container.stats["gone"] += 1
            else:
                container.stats["errno"] += 1  # the caller got an error, as from the kernel
            log.debug("%s: pid %d %s -> %s", container.record.name, notification.pid, syscall,
                      errno.errorcode.get(err.errno or 0, err.errno))
            return Answer(error=err.errno or errno.EIO)
        outcome = "kernel" if answer.let_kernel_decide else "done"
        container.stats[outcome] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: pid %d %s -> %s", container.record.name, notification.pid, syscall,
                      outcome)
        return answer


class _Session:
    """What one connection has learned: which container it serves, and its view."""

    def __init__(self, peer_pid: int) -> None:
        self.peer_pid = peer_pid
        self.container: Container | None = None
        self.thread: SupervisorThread | None = None
        self._view: ContainerView | None = None
        self.broken = False

    @property
    def label(self) -> str:
        if self.container is not None:
            return f"container {self.container.record.name}"
        return f"monitor pid {self.peer_pid}"

    def bind(self, cookie: bytes, registry: ContainerRegistry) -> Container | None:
        if self.container is not None:
            expected = self.container.record.cookie.encode()
            return self.container if protocol.cookie_matches(cookie, expected) else None
        self.container = registry.lookup(cookie)
        if self.container is not None:
            self.container.connections += 1
            log.info("%s: connected (monitor pid %d)", self.label, self.peer_pid)
        return self.container

    def view(self, name: str, init_pid: int, proc_root: str) -> ContainerView:
        if self._view is None or self._view.init_pid != init_pid:
            try:
                self._view = ContainerView.read(name, init_pid, proc_root)
            except FileNotFoundError as err:
                raise OSError(errno.ESRCH, f"container init {init_pid} is gone") from err
        return self._view


def _receive(conn: socket.socket) -> tuple[bytes, list[int], int]:
    datagram, ancillary, flags, _ = conn.recvmsg(_MAX_DATAGRAM, _ANCILLARY,
                                                 socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % array.array("i").itemsize
            fds.extend(array.array("i", data[:usable]))
    return datagram, fds, flags


def _socket_answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _format_stats(session: _Session) -> str:
    if session.container is None:
        return "no requests"
    stats = session.container.stats
    return ", ".join(f"{k} {v}" for k, v in sorted(stats.items())) or "no requests"
