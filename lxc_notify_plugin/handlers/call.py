"""What a handler gets for one request: the types shared by the dispatcher and handlers.

Handlers import these from here, never from the dispatcher (which imports
the handlers): ``Call`` for one request, ``HostViews`` for what the host
knows (each field is a view some family declares in ``Family.host_views``),
and ``SupervisedContainer``, the daemon's live state for one container it serves
(its record, its current policy, its counters and connections).
"""

from __future__ import annotations

import errno
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from ..caller.thread import ThreadState
from ..errors import SupervisorFault
from ..host.flaglock import MountFlagLocks
from ..host.shift import Shifter
from ..policy.effective import ContainerPolicy
from ..policy.mknod import HostDevices
from ..request import Request
from ..state import ContainerRecord
from .nodes import NodeStore


@dataclass
class SupervisedContainer:
    """A container the daemon serves, live: its record (``state.ContainerRecord``, what
    an admin enabled) and the policy compiled from it, with what its serving threads
    count.  One per cookie (LXC) or per runtime container (OCI); what the kernel
    says of the running container itself is ``request.ContainerUserns``.

    ``policy`` is swapped whole on reload; a request reads it once.

    Its counters are written by every thread serving it (each LXC connection,
    each OCI listener of the container) and read by status: both under the
    container's own lock.  ``Counter[key] += 1`` is not atomic: a new key goes
    through ``Counter.__missing__``, a Python call where threads switch, so two
    threads could each store their own count over the other's (seen losing
    dozens at once), and a status summing the counters while a key was added
    failed with "dictionary changed size during iteration".  One uncontended
    acquire per request is the whole cost; a lock shared by every container
    would make their threads contend."""

    record: ContainerRecord
    policy: ContainerPolicy
    stats: Counter[str] = field(default_factory=Counter)  # written by count() only
    connections: int = 0  # transports connected for it now
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.record.name

    def add_connection(self, delta: int) -> None:
        """Connections come and go on their own threads: counted under a lock."""
        with self._lock:
            self.connections += delta

    def count(self, outcome: str) -> None:
        """One more request that ended in ``outcome`` (any serving thread)."""
        with self._lock:
            self.stats[outcome] += 1

    def counts(self) -> dict[str, int]:
        """The counters as they are now: a copy, safe to iterate while requests go on."""
        with self._lock:
            return dict(self.stats)


@dataclass(frozen=True)
class HostViews:
    """What the host knows that handlers may consult (kept current elsewhere)."""

    devices: HostDevices | None = None  # udev's index, while udev runs
    shifter: Shifter = field(default_factory=Shifter)  # what each fs type shifts with
    flag_locks: MountFlagLocks = field(default_factory=MountFlagLocks)
    nodes: NodeStore = field(default_factory=NodeStore)  # where usable twins are made


class ListenerServer(Protocol):
    """The dispatcher as a handler may use it: serving a started program's listener."""

    def serve_listener(self, listener_fd: int, container: SupervisedContainer,
                       init_pid: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Call:
    """Everything a handler gets for one request."""

    request: Request
    policy: ContainerPolicy
    thread: ThreadState
    host: HostViews
    container: SupervisedContainer | None = None
    dispatcher: ListenerServer | None = None

    def serve_listener(self, listener_fd: int) -> None:
        """Serve a seccomp listener of a program started for this container, on a
        thread of its own (the dispatcher owns ``listener_fd`` from now on)."""
        if self.dispatcher is None or self.container is None:
            os.close(listener_fd)
            raise SupervisorFault("serve a program's listener",
                                  OSError(errno.EINVAL, "no dispatcher for this call"))
        self.dispatcher.serve_listener(listener_fd, self.container,
                                       self.request.container.init_pid)
