"""The threads the transports serve on: each one either runs and is joined, or never was.

A transport keeps its serving threads (one per LXC connection, per OCI
listener, per program's listener) in a table its ``close()`` joins.  Starting
one can fail: at the unit's task limit (TasksMax) or the host's,
``Thread.start`` raises RuntimeError ("can't start new thread").  Such a
thread must not stay in the table (``close()`` would join a thread that
never ran), and what it would have owned (the monitor's connection, a
listener) must be released at once, or a caller waits on it for ever.
``start_serving`` is that rule, once for every transport.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, MutableMapping
from typing import TypeVar

log = logging.getLogger(__name__)

V = TypeVar("V")


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
