"""The daemon under systemd: sockets it holds for us (sd_listen_fds(3)), so a restart
loses no caller, the fds it keeps for us, and what we tell it (sd_notify(3)).

Under ``lxc-notify.socket`` the listening sockets belong to systemd, which
passes them to each daemon it starts as fds 3, 4, ... with ``LISTEN_FDS``
and ``LISTEN_PID`` set.  While no daemon runs, LXC's monitors still connect
and send; their datagrams wait in the socket until the next daemon accepts
them, so a caller waits through a restart instead of getting ENOSYS (LXC
5.0.2 gives up on a proxy for good after a reconnect fails).
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable, MutableMapping
from pathlib import Path

from ..paths import atomic_write, read_regular_text

log = logging.getLogger(__name__)

LISTEN_FDS_START = 3


STORED_PREFIX = "oci-"  # names of listeners kept in systemd's fd store (FdStore)


def inherited_fds(env: MutableMapping[str, str] = os.environ
                  ) -> tuple[list[socket.socket], dict[str, int]]:
    """What systemd passed this process: its sockets, and the listeners it kept for
    us by name (FdStore).  The variables are removed so that no program the daemon
    starts believes they are meant for it."""
    pid, count = env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDS", "")
    names = env.pop("LISTEN_FDNAMES", "").split(":")
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return [], {}
    sockets, stored = [], {}
    for index, fd in enumerate(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count))):
        name = names[index] if index < len(names) else ""
        try:
            os.set_inheritable(fd, False)  # systemd passes them inheritable
            if name.startswith(STORED_PREFIX):
                stored[name] = fd
            else:
                sockets.append(socket.socket(fileno=fd))
        except OSError as err:
            log.error("inherited fd %d (%s) is not a socket (%s): closed", fd, name or "?", err)
            with contextlib.suppress(OSError):
                os.close(fd)
    return sockets, stored


def inherited_sockets(env: MutableMapping[str, str] = os.environ) -> list[socket.socket]:
    """The sockets of inherited_fds (tests)."""
    return inherited_fds(env)[0]


def take(sockets: list[socket.socket], path: Path, kind: socket.SocketKind
         ) -> socket.socket | None:
    """The inherited socket listening on ``path`` with type ``kind``, removed from the list."""
    for sock in sockets:
        try:
            name = sock.getsockname()
        except OSError:
            continue
        if sock.family == socket.AF_UNIX and sock.type == kind and name == str(path):
            sockets.remove(sock)
            return sock
    return None


def unused(sockets: list[socket.socket]) -> str | None:
    """Sockets systemd passed that no transport took (lxc-notify.socket and daemon.toml
    name different paths), closed; what they were, or None.  The daemon must not run
    so: systemd would go on accepting callers on a socket nobody serves."""
    names = []
    for sock in sockets:
        with sock:
            try:
                names.append(str(sock.getsockname()))
            except OSError:
                names.append("?")
    sockets.clear()
    return ", ".join(names) or None


class FdStore:
    """OCI listeners kept in systemd's fd store, so that a restart loses no container.

    The daemon holds an OCI container's listener itself (there is no monitor that
    could reconnect): when it dies, the kernel answers every trapped call ENOSYS
    from then on.  With ``FileDescriptorStoreMax=`` in the unit, each listener is
    also handed to systemd (``FDSTORE=1``, sd_pid_notify_with_fds(3)), with the
    runtime's state kept beside the socket; the next daemon gets them back in
    LISTEN_FDS and serves them as if the runtime had just handed them over.  A
    listener is removed from the store when its container is done with it
    (POLLHUP), never when the daemon stops.
    """

    def __init__(self, directory: Path, notify: Callable[[str, list[int]], bool]) -> None:
        self.directory = directory  # root-only (the socket's directory)
        self._notify = notify

    def keep(self, listener: int, state: bytes) -> str | None:
        name = f"{STORED_PREFIX}{secrets.token_hex(8)}"
        try:
            atomic_write(self.directory / f"{name}.json", state.decode(), mode=0o600)
        except (OSError, UnicodeDecodeError) as err:
            log.warning("cannot keep a listener's state (%s): it will not survive a restart",
                        err)
            return None
        if not self._notify(f"FDSTORE=1\nFDNAME={name}", [listener]):
            (self.directory / f"{name}.json").unlink(missing_ok=True)
            return None
        return name

    def release(self, name: str) -> None:
        self._notify(f"FDSTOREREMOVE=1\nFDNAME={name}", [])
        (self.directory / f"{name}.json").unlink(missing_ok=True)

    def restored(self, stored: dict[str, int]) -> list[tuple[str, int, bytes]]:
        """(name, listener, state) for each listener systemd gave back with its state;
        one whose state is gone is released and closed."""
        found = []
        for name, fd in stored.items():
            try:
                state = read_regular_text(self.directory / f"{name}.json").encode()
            except (OSError, UnicodeDecodeError) as err:
                log.warning("stored listener %s has no state (%s): released", name, err)
                os.close(fd)
                self.release(name)
                continue
            found.append((name, fd, state))
        return found


def sd_notify(state: str, fds: list[int] | None = None) -> bool:
    """Tell systemd (Type=notify) where the daemon is, or hand it fds to keep
    (FDSTORE=1); False outside systemd or if the message could not be sent.

    The protocol is one datagram on $NOTIFY_SOCKET (sd_notify(3)), fds attached
    with SCM_RIGHTS; an abstract socket is named with a leading '@'."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendmsg([state.encode()], ancillary, 0, address)
    except OSError as err:
        log.debug("sd_notify %r: %s", state.split("\n", 1)[0], err)
        return False
    return True
