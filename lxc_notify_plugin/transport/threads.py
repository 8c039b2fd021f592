"""The threads the transports serve on: each one either runs and is joined, or never was.

A transport keeps its serving threads (one per LXC connection, per OCI
listener, per program's listener) in a table its ``close()`` joins.  Starting
one can fail: at the unit's task limit (TasksMax) or the host's,
``Thread.start`` raises RuntimeError ("can't start new thread").  Such a
thread must not stay in the table (``close()`` would join a thread that
never ran), and what it would have owned (the monitor's connection, a
listener) must be released at once, or a caller waits on it for ever.
``start_serving`` is that rule, once for every transport; ``admit`` is the
check each transport makes of a new connection before it gets a thread.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Callable, Mapping, MutableMapping
from typing import Final, TypeVar

from ..caller import cpus

log = logging.getLogger(__name__)

V = TypeVar("V")

_PEERCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _nothing() -> None:
    pass


def start_serving(name: str, serve: Callable[[], object], lock: threading.Lock,
                  threads: MutableMapping[threading.Thread, V], value: V, *, failed: str,
                  refused: Callable[[RuntimeError], None],
                  ended: Callable[[], None] = _nothing) -> bool:
    """Run ``serve`` on a thread of its own, in ``threads`` (as ``value``) while it runs.

    Started and entered in the table in one section under ``lock``, so a
    ``close()`` that lists the table under it sees every thread that runs and
    none that does not.  When ``serve`` returns or raises (logged with
    ``failed``), ``ended`` releases what the thread owned and the thread leaves
    the table.  If the thread cannot start, ``refused`` releases that instead
    (and may raise): False."""

    def run() -> None:
        cpus.unpin()  # started from a serving thread, it would share that one's CPU
        try:
            serve()
        except Exception:
            log.exception("%s", failed)
        finally:
            try:
                ended()
            finally:
                with lock:
                    threads.pop(threading.current_thread(), None)

    thread = threading.Thread(target=run, name=name)
    with lock:
        try:
            thread.start()
        except RuntimeError as err:  # no thread to be had
            refusal = err
        else:
            threads[thread] = value  # before run() can take it out: it waits for the lock
            return True
    refused(refusal)
    return False


def admit(conn: socket.socket, lock: threading.Lock, threads: Mapping[threading.Thread, object],
          limit: int, *, label: str, peer: str, served: str) -> int | None:
    """The pid of ``conn``'s peer, if it is root's (``peer`` names who may connect)
    and fewer than ``limit`` ``served`` run now; else ``conn`` is closed, the
    refusal logged (prefixed with ``label``) and None."""
    pid: int
    uid: int
    pid, uid, _ = _PEERCRED.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    if uid != 0:
        log.warning("%srefused a connection from pid %d uid %d: only root's %s may connect",
                    label, pid, uid, peer)
        conn.close()
        return None
    with lock:
        full = len(threads) >= limit
    if full:
        log.error("%srefused pid %d: %d %s already (limits.connections)", label, pid, limit,
                  served)
        conn.close()
        return None
    return pid
