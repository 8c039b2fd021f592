"""Sockets systemd holds for the daemon (sd_listen_fds(3)), so a restart loses no caller.

Under ``lxc-notify.socket`` the listening sockets belong to systemd, which
passes them to each daemon it starts as fds 3, 4, ... with ``LISTEN_FDS``
and ``LISTEN_PID`` set.  While no daemon runs, LXC's monitors still connect
and send; their datagrams wait in the socket until the next daemon accepts
them, so a caller waits through a restart instead of getting ENOSYS (LXC
5.0.2 gives up on a proxy for good after a reconnect fails).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping
from pathlib import Path

log = logging.getLogger(__name__)

LISTEN_FDS_START = 3


def inherited_sockets(env: MutableMapping[str, str] = os.environ) -> list[socket.socket]:
    """The sockets passed to this process, if any; the variables are removed so that
    no program the daemon starts believes they are meant for it."""
    pid, count = env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDS", "")
    env.pop("LISTEN_FDNAMES", None)
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        try:
            os.set_inheritable(fd, False)  # systemd passes them inheritable
            sockets.append(socket.socket(fileno=fd))
        except OSError as err:
            log.error("inherited fd %d is not a socket (%s): ignored", fd, err)
    return sockets


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
