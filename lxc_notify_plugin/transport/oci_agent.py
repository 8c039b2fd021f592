"""The OCI seccomp agent's socket: runtimes hand us a container's listener there.

A runtime connects and sends its ``ContainerProcessState`` with the listener
attached (the format: ``oci_state.py``).  From then on the daemon holds the
listener itself: one thread per listener serves it with ``serve_listener``
(RECV, dispatch, SEND) until the kernel reports POLLHUP, which it does once no
task is left in the filter: the ``exec``'d process exited, or the container
stopped.  The thread then closes the fd and ends, so nothing is kept per
exited process.  Only root may connect (the socket's directory is 0700 and
the peer's uid is checked): a listener is the power to answer a container's
syscalls, and a state's claims (its id, its profile) are trusted as root's.
Which policy a state is served under is the caller's to say (``resolve``:
``oci_policy.py`` in the daemon).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .. import kernel
from ..errors import ProtocolError
from ..paths import claim_socket_path
from .listener import serve_listener, set_sync_wake_up
from .oci_state import ProcessState, parse_state, receive_state
from .threads import admit, start_serving

if TYPE_CHECKING:  # serving a listener needs the dispatcher's types only
    from ..dispatch import Dispatcher, SupervisedContainer

log = logging.getLogger(__name__)



class Keeper(Protocol):
    """Where listeners are kept across restarts (service/activation.py: FdStore)."""

    def keep(self, listener: int, state: bytes) -> str | None: ...
    def release(self, name: str) -> None: ...


# state -> the SupervisedContainer to serve it as (with its policy), and why it is served
# as a pass-through when its profile or keys cannot be used (None otherwise).
Resolve = Callable[[ProcessState], "tuple[SupervisedContainer, str | None]"]


@dataclass
class _ContainerListeners:
    """The listeners the agent serves for one OCI container (a runtime hands over one
    per ``exec``): the container they share, and how many are served now."""

    container: SupervisedContainer
    user_ns: str | None  # its twins' store key (handlers/nodes.py), forgotten at the end
    listeners: int = 0


class OciAgent:
    """The agent socket; one thread per connection, which becomes the listener's server.

    The rules every line keeps: every fd received is closed (the listener
    when its thread ends, all others at once); every notification received
    is answered (``serve_listener``); a peer that is not root, sends no state,
    a malformed one or a listener that is not one is refused with a log line
    and its fds closed, never served.
    """

    def __init__(self, path: Path, dispatcher: Dispatcher, resolve: Resolve,
                 proc_root: str = "/proc", max_connections: int = 1024) -> None:
        self.path = path
        self.dispatcher = dispatcher
        self.resolve = resolve
        self.max_connections = max_connections  # daemon.toml's limits.connections
        # Called with a container's name when its last listener ends: each runtime
        # container is new (podman's ids are never reused), so its metrics go.
        self.on_gone: Callable[[str], None] | None = None
        # Where listeners are also kept so that they outlive this daemon (systemd's fd
        # store, service/activation.py: FdStore); None outside systemd.
        self.keeper: Keeper | None = None
        self.proc_root = proc_root
        self.sock: socket.socket | None = None
        self._owns_path = False  # we bound it (not systemd): we remove it
        self._stop_r = self._stop_w = -1  # made by bind(): every listener thread polls it
        self._threads: dict[threading.Thread, None] = {}
        self._reading: set[socket.socket] = set()  # connections still sending their state
        self._served: dict[tuple[str, int], _ContainerListeners] = {}
        self._lock = threading.Lock()
        self._serial = 0

    def bind(self, inherited: socket.socket | None = None) -> None:
        """Listen on ``path``; or on ``inherited``, a listening socket systemd holds
        for us (lxc-notify.socket), which is then never unlinked: it outlives us."""
        if inherited is not None:
            self.sock, self._owns_path = inherited, False
            self._make_stop_pipe()
            return
        path = self.path
        claim_socket_path(path, _answers)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        self.sock, self._owns_path = sock, True
        self._make_stop_pipe()

    def _make_stop_pipe(self) -> None:
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def accept(self) -> None:
        """Take one connection (the socket is readable); its state is read in its
        own thread, so a slow or silent peer never holds up the daemon."""
        assert self.sock is not None
        try:
            conn, _ = self.sock.accept()
        except OSError as err:
            log.warning("agent: accept failed: %s", err)
            return
        # Closing a refused connection closes the listener we were given: the
        # container's trapped calls then get ENOSYS from the kernel.
        pid = admit(conn, self._lock, self._threads, self.max_connections, label="agent: ",
                    peer="runtime", served="listeners")
        if pid is None:
            return

        def refused(err: RuntimeError) -> None:
            log.error("agent: pid %d not served: %s", pid, err)
            with self._lock:
                self._reading.discard(conn)
            conn.close()

        with self._lock:
            self._serial += 1
            self._reading.add(conn)
        start_serving(f"lxc-notify-oci-{self._serial}",
                      lambda: self._serve_connection(conn, pid), self._lock, self._threads,
                      None, refused=refused,
                      failed=f"agent: pid {pid}: connection thread failed")

    def containers(self) -> list[SupervisedContainer]:
        with self._lock:
            return [group.container for group in self._served.values()]

    def reload(self, rebuild: Callable[[SupervisedContainer], None]) -> None:
        """Give each served container a new policy (``rebuild`` swaps it or says why not)."""
        for container in self.containers():
            rebuild(container)

    def close(self) -> None:
        """Stop accepting; every listener thread answers what it received, then stops."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            if self._owns_path:
                self.path.unlink(missing_ok=True)
        if self._stop_w < 0:
            return  # never bound: no thread was started
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")  # level-triggered: every thread's poll sees it
        with self._lock:
            threads = list(self._threads)
            for conn in self._reading:  # ends their reads now, not at the handshake deadline
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join()
        os.close(self._stop_r)
        os.close(self._stop_w)
        self._stop_r = self._stop_w = -1

    # --- one connection, then one listener -----------------------------------------------

    def _serve_connection(self, conn: socket.socket, peer_pid: int) -> None:
        listener = -1
        try:
            try:
                data, fds = receive_state(conn)
            except (OSError, ProtocolError) as err:
                log.warning("agent: pid %d: state refused: %s", peer_pid, err)
                return
            finally:
                with self._lock:
                    self._reading.discard(conn)
                conn.close()
            try:
                state = parse_state(data, len(fds))
                if not kernel.is_listener(fds[state.seccomp_fd_index], self.proc_root):
                    raise ProtocolError("seccompFd is not a seccomp listener")
                listener = fds.pop(state.seccomp_fd_index)
            except ProtocolError as err:
                log.warning("agent: pid %d: state refused: %s", peer_pid, err)
                return
            finally:
                for fd in fds:  # everything but the listener we keep
                    os.close(fd)
            self._serve(listener, state, data)
        finally:
            if listener >= 0:
                os.close(listener)

    def _serve(self, listener: int, state: ProcessState, raw: bytes,
               stored: str | None = None) -> None:
        """Serve one listener until its container is done with it or we stop.

        ``stored`` names it in the keeper when it was given back after a restart;
        a new one is kept there now.  It leaves the keeper only when the container
        is done with it: at a stop it stays, for the next daemon."""
        group = self._attach(state)
        container = group.container
        why = "broken"
        try:  # from the attach on: whatever fails, the detach follows
            if stored is None and self.keeper is not None:
                stored = self.keeper.keep(listener, raw)
            log.info("%s: listener of pid %d (%s, profile %s, %s%s) served", container.name,
                     state.pid, state.status or "?", container.record.profile,
                     "same-CPU wake-ups" if set_sync_wake_up(listener)
                     else "no same-CPU wake-ups", f", kept as {stored}" if stored else "")
            why = serve_listener(listener, container, state.init_pid, self.dispatcher,
                                 self._stop_r, self.proc_root)
        finally:
            self._detach(state, group)
            if stored is not None and self.keeper is not None and why != "stopped":
                self.keeper.release(stored)
            log.info("%s: listener of pid %d released (%s)", container.name, state.pid,
                     {"hangup": "no task left in its filter"}.get(why, why))

    def adopt(self, name: str, listener: int, raw: bytes) -> None:
        """Serve a listener an earlier daemon kept (its state as the runtime sent it).
        The fd is ours from here: closed on every path."""
        try:
            doc = json.loads(raw)
            named = doc.get("fds") if isinstance(doc, dict) else None
            state = parse_state(raw, len(named) if isinstance(named, list) else 0)
            if not kernel.is_listener(listener, self.proc_root):
                raise ProtocolError("not a seccomp listener")
        except (ProtocolError, ValueError) as err:
            log.warning("agent: stored listener %s refused: %s", name, err)
            os.close(listener)
            self._release(name)
            return

        def refused(err: RuntimeError) -> None:
            # Released too: left in systemd's store, served by no one, its callers
            # would wait for ever; closed everywhere, the kernel answers them ENOSYS.
            log.error("%s: listener kept by an earlier daemon (%s) not served, released: "
                      "%s", state.container_id, name, err)
            os.close(listener)
            self._release(name)

        if start_serving(f"lxc-notify-oci-{name}",
                         lambda: self._serve(listener, state, raw, stored=name), self._lock,
                         self._threads, None, refused=refused, ended=lambda: os.close(listener),
                         failed=f"agent: stored listener {name}: thread failed"):
            log.info("%s: listener kept by an earlier daemon (%s) adopted",
                     state.container_id, name)

    def _release(self, name: str) -> None:
        """Take a listener out of the keeper (logged if it cannot be: start goes on)."""
        if self.keeper is None:
            return
        try:
            self.keeper.release(name)
        except OSError as err:
            log.error("agent: stored listener %s could not be released: %s", name, err)

    def _attach(self, state: ProcessState) -> _ContainerListeners:
        """Count one more listener in its container's entry, made if it has none.

        Finding the entry and counting in it are one lock section: between two,
        the container's last listener could detach and drop the entry, and this
        one would then be served from an entry that status and reload no longer
        see.  Its twins' names are held in the same section (and released in
        _detach's), so a detach meanwhile cannot forget them under it."""
        key = (state.container_id, state.init_pid)
        with self._lock:
            group = self._served.get(key)
            if group is not None:
                self._count_in(group, 1)
                return group
        # Resolving reads the profile and the state directory: not under the lock.
        container, passthrough = self.resolve(state)
        if passthrough is not None:
            log.warning("%s: every call goes back to the kernel: %s", container.name,
                        passthrough)
        try:
            user_ns: str | None = os.readlink(f"{self.proc_root}/{state.init_pid}/ns/user")
        except OSError:
            user_ns = None  # init already gone: POLLHUP follows
        with self._lock:  # another listener may have made the entry meanwhile
            group = self._served.setdefault(key, _ContainerListeners(container, user_ns))
            self._count_in(group, 1)
        return group

    def _detach(self, state: ProcessState, group: _ContainerListeners) -> None:
        with self._lock:
            self._count_in(group, -1)
            last = group.listeners == 0
            if last:
                self._served.pop((state.container_id, state.init_pid), None)
        if last and self.on_gone is not None:
            try:
                self.on_gone(group.container.name)
            except Exception:
                log.exception("%s: forgetting it failed", group.container.name)

    def _count_in(self, group: _ContainerListeners, delta: int) -> None:
        """One listener more or less in ``live`` (under the agent's lock)."""
        nodes = self.dispatcher.host.nodes
        group.listeners += delta
        group.container.add_connection(delta)
        if group.user_ns is not None:
            # Each listener holds its twins' names, as each LXC connection does;
            # the last one takes them along.
            (nodes.hold if delta > 0 else nodes.release)(group.user_ns)


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()
