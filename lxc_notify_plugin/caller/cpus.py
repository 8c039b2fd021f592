"""The daemon's CPUs, and the one place a serving thread is pinned to one.

A serving thread that talks to an actor (``actor.py``) is pinned to the CPU
it runs on while it does, and the actor follows it: a wake-up across CPUs
costs this VM about 25 us each way (bench/actor_cost.py).  Whatever such a
thread starts (a thread, a helper process) would inherit the pin, so what
starts a thread or process from a serving thread gives it the daemon's own
CPUs back with ``unpin``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Final

# Read at import, on the daemon's main thread before any serving thread runs
# (systemd's CPUAffinity=, taskset): what every thread and helper may use.
DAEMON_CPUS: Final = frozenset(os.sched_getaffinity(0))


def pin(pid: int, cpu: int) -> bool:
    """Keep thread or process ``pid`` (0: the calling thread) on ``cpu``; False
    where that is refused (a cpuset without it)."""
    try:
        os.sched_setaffinity(pid, (cpu,))
    except OSError:
        return False
    return True


def unpin(pid: int = 0) -> None:
    """Give thread or process ``pid`` (0: the calling thread) the daemon's CPUs
    again (ESRCH, a thread that has ended, is fine)."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, DAEMON_CPUS)
