"""The listener transport: a seccomp listener fd the daemon holds itself.

Where no LXC monitor stands in between (OCI runtimes hand the listener to a
seccomp agent; the kernel-tier tests load filters in forked children), the
daemon receives with ``SECCOMP_IOCTL_NOTIF_RECV`` and answers with
``SECCOMP_IOCTL_NOTIF_SEND``; the caller's ``/proc/TID`` is opened on first
use and checked with ID_VALID (the request does that).

Kernel facts: a blocked RECV cannot be woken by closing or shutting down
anything, so the thread polls the listener together with a stop fd and
receives only when the listener is readable.  POLLHUP means no task is left
in the filter: the listener is done.  RECV fails with ENOENT when the caller
was interrupted between poll and receive, SEND with ENOENT when it died or
was interrupted while we worked: both are normal.  With
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (6.6+) the kernel wakes us on the
caller's CPU, saving a cross-CPU wake-up per round trip.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
from typing import Protocol

from .. import kernel
from ..caller.thread import ThreadState, thread_state
from ..errors import OWN_STEP_ERRNO, SupervisorFault
from ..handlers.call import SupervisedContainer
from ..kernel import features
from ..request import Answer, Notice
from .threads import start_serving

log = logging.getLogger(__name__)

_DRAIN_AT_STOP = 1000  # requests answered after the stop at most, per listener


def set_sync_wake_up(listener_fd: int) -> bool:
    """Ask for same-CPU wake-ups where the kernel has them (6.6+)."""
    try:
        kernel.notif_set_flags(listener_fd, kernel.SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
    except OSError as err:
        if err.errno in (errno.EINVAL, errno.ENOTTY):
            features.observe("seccomp-sync-wake-up", False)
            return False
        raise
    features.observe("seccomp-sync-wake-up", True)
    return True


class Answerer(Protocol):
    """What a listener's thread needs of ``dispatch.Dispatcher`` (which itself
    serves programs' listeners with ``SideListeners``: a protocol, not an import)."""

    def answer(self, container: SupervisedContainer, notice: Notice, thread: ThreadState,
               init_pid: int, listener_fd: int) -> Answer: ...

    def refuse(self, container: SupervisedContainer, notice: Notice,
               fault: SupervisorFault) -> Answer: ...


def serve_listener(listener_fd: int, container: SupervisedContainer, init_pid: int,
                   dispatcher: Answerer, stop_fd: int, proc_root: str = "/proc") -> str:
    """Answer every notification on ``listener_fd`` until no task is left in its
    filter ("hangup") or ``stop_fd`` becomes readable ("stopped").  The caller
    owns both fds.  Every notification received gets an answer."""
    # Made again for each notification while it cannot be (EMFILE: its fds): each
    # one meanwhile is answered as a supervisor fault, and the listener kept.
    caller = thread_state(proc_root)
    notif, resp = kernel.seccomp_notif(), kernel.seccomp_notif_resp()  # reused per request
    poller = select.poll()
    poller.register(listener_fd, select.POLLIN)
    poller.register(stop_fd, select.POLLIN)
    stopping, drain_left = False, 0
    try:
        while True:
            # Once stopping, a poll that finds nothing pending ends the loop: every
            # request already waiting is answered first (a caller left waiting on
            # a closed listener gets ENOSYS from the kernel), and the bound keeps a
            # process that calls without pause from holding the stop up.
            events = dict(poller.poll(0 if stopping else None))
            if stop_fd in events and not stopping:
                stopping, drain_left = True, _DRAIN_AT_STOP
                events = dict(poller.poll(0))
            if events.get(listener_fd, 0) & (select.POLLHUP | select.POLLERR):
                return "hangup"
            if stopping:
                drain_left -= 1
                if not events.get(listener_fd, 0) & select.POLLIN or drain_left < 0:
                    return "stopped"
            try:
                kernel.notif_recv(listener_fd, into=notif)
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.EINTR):
                    continue  # the caller left before we received it
                raise
            data = notif.data
            notice = Notice(notif.id, notif.pid, data.arch, data.nr, tuple(data.args))
            if not isinstance(caller, ThreadState):
                caller = thread_state(proc_root)
            if isinstance(caller, ThreadState):
                answer = dispatcher.answer(container, notice, caller, init_pid, listener_fd)
            else:
                answer = dispatcher.refuse(container, notice, caller)
            resp.id, resp.val, resp.error = notif.id, answer.val, -answer.error
            resp.flags = kernel.SECCOMP_USER_NOTIF_FLAG_CONTINUE if answer.let_kernel_decide else 0
            try:
                kernel.notif_send(listener_fd, resp)
            except OSError as err:
                if err.errno != errno.ENOENT:
                    raise
                log.debug("%s: pid %d left before its answer", container.name, notif.pid)
            if isinstance(caller, ThreadState) and caller.broken:
                log.critical("%s: this thread's identity is not its own any more: it stops "
                             "serving the listener", container.name)
                return "broken"
    finally:
        if isinstance(caller, ThreadState):
            caller.close()


class SideListeners:
    """Listeners of programs the daemon started for a container (a FUSE redirect
    under the container's seccomp policy), each served on a thread of its own
    until its program and every child of it are gone (POLLHUP).

    Not on the connection that asked: that one is waiting for the program, and
    LXC's proxy serves one request at a time per container, so a call of the
    program's that the policy traps would otherwise wait on itself."""

    def __init__(self) -> None:
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._threads: dict[threading.Thread, None] = {}

    def start(self, listener_fd: int, container: SupervisedContainer, init_pid: int,
              dispatcher: Answerer) -> None:
        """Serve ``listener_fd`` (owned from now on: closed when its thread ends).
        No thread to be had is the supervisor's fault (ENOMEM for the caller
        whose call started the program, logged), the listener closed at once."""

        def serve() -> None:
            ended = serve_listener(listener_fd, container, init_pid, dispatcher, self._stop_r)
            log.debug("%s: a program's listener ended (%s)", container.name, ended)

        def refused(err: RuntimeError) -> None:
            os.close(listener_fd)
            raise SupervisorFault("serve a program's listener",
                                  OSError(errno.EAGAIN, str(err)), OWN_STEP_ERRNO) from err

        start_serving(f"program-{container.name}", serve, self._lock, self._threads, None,
                      refused=refused, ended=lambda: os.close(listener_fd),
                      failed=f"{container.name}: serving a program's listener")

    def close(self) -> None:
        """Stop every thread and wait for it (each answers what it holds first)."""
        os.write(self._stop_w, b"x")
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join()
        os.close(self._stop_r)
        os.close(self._stop_w)
