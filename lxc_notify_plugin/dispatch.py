"""The dispatcher: one request in, one answer out, for every transport and handler.

Transports (``transport/``) receive notifications and hand each one here as
a ``Notice`` with the container it came from; the dispatcher looks up the
syscall for the caller's arch, asks the container's policy whether its
family is intercepted, calls the family's handler, and turns whatever
happens into an ``Answer``: the handler's result, the errno the kernel would
give, CONTINUE for calls we do not judge, ENOSYS for our own bugs.  It never
raises.  It keeps each container's counters and calls the hooks (audit log,
metrics) once per request with what happened.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from typing import Final, NamedTuple

from . import kernel
from .caller.thread import ThreadState
from .errors import RequestGone, SupervisorFault, ThreadIdentityLost
from .handlers import Registered, registry
from .handlers.call import Call, HostViews, SupervisedContainer
from .request import KERNEL_DECIDES, Answer, EarlyReply, Notice, Request
from .transport.listener import SideListeners

__all__ = ["OUTCOMES", "Call", "Dispatcher", "HostViews", "Outcome", "SupervisedContainer"]

log = logging.getLogger(__name__)


class Outcome(NamedTuple):
    """What happened to one request, for hooks (audit log, metrics).

    A tuple: made for every request after its answer, where a frozen
    dataclass's field-by-field ``__init__`` cost 0.66 us (bench/denied_path.py)."""

    container: str
    tid: int
    syscall: str  # "" when the call was not one we know
    outcome: str  # see OUTCOMES
    error: int  # the errno answered, 0 for none
    duration_ns: int
    arguments: dict[str, object]  # decoded, paths as text; {} for none

    @property
    def audited(self) -> bool:
        """Whether this is a decision (the audit log records those), not "not ours"."""
        return self.outcome not in ("ignored", "unknown")


# What can happen to a request: done (emulated), kernel (handed back after a
# judgement: the policy or the caller's own privileges say the kernel answers),
# errno (refused or failed with the kernel's errno), gone (the caller left),
# fault (a host-side failure, logged), error (our bug, ENOSYS), ignored (a call
# of an intercepted family the policy has no opinion on), unknown (an arch or
# syscall we do not handle, or a family this container does not intercept).
OUTCOMES: Final = ("done", "kernel", "errno", "gone", "fault", "error", "ignored", "unknown")

# Errnos only the daemon's own limits give: a handler's EMFILE or ENFILE comes from
# one of our opens, never from the caller's own fd table (a handler that gives the
# caller an fd, bpf's ADDFD, answers the caller's EMFILE itself, without raising).
# (The one kernel path that gives a caller EMFILE for another reason, a mount when
# the anonymous device numbers run out, is one we would meet as our own fsconfig's
# failure: a fault as well.)
DAEMON_ONLY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE})


Hook = Callable[[Outcome], None]


class Dispatcher:
    def __init__(self, host: HostViews | None = None, hooks: tuple[Hook, ...] = (),
                 handlers: dict[str, Registered] | None = None) -> None:
        self.host = host or HostViews()
        self.hooks = list(hooks)
        # Whether a hook reads Outcome.arguments (the audit log): else handlers
        # neither keep them nor read caller memory for them alone.
        self.keeps_details = True
        self.handlers = dict(handlers or registry())
        by_syscall = {syscall: name for name, entry in self.handlers.items()
                      for syscall in entry.family.syscalls}
        self._side: SideListeners | None = None
        self._side_lock = threading.Lock()
        # (audit arch, nr) -> (syscall, family), for every arch this host runs.
        self.syscalls = {key: (syscall, by_syscall[syscall]) for key, syscall in
                         kernel.syscall_numbers(tuple(by_syscall)).items()}

    def serve_listener(self, listener_fd: int, container: SupervisedContainer,
                       init_pid: int) -> None:
        with self._side_lock:
            if self._side is None:
                self._side = SideListeners()
            side = self._side
        side.start(listener_fd, container, init_pid, self)

    def close(self) -> None:
        """Stop serving the listeners of programs started for containers."""
        with self._side_lock:
            side, self._side = self._side, None
        if side is not None:
            side.close()
        self.host.flag_locks.close()

    def answer(self, container: SupervisedContainer, notice: Notice, thread: ThreadState,
               init_pid: int, listener_fd: int, proc_fd: int = -1,
               send: Callable[[Answer], object] | None = None,
               early: EarlyReply | None = None) -> Answer:
        """The answer to one notification.  Never raises, but for what ``send`` raises.

        ``proc_fd`` is the caller's /proc/TID if the transport has it (LXC
        sends one); the transport owns it and ``listener_fd``.

        ``send``, if given, is called with the answer as soon as it is known,
        and only then is the request counted, its audit details gathered and
        the hooks told: none of that is the caller's wait.  What ``send``
        raises (the transport's peer is gone) is raised after that.

        ``early``, if given, lets the handler's actor answer the caller itself
        (``EarlyReply``); once it has (``early.answered``), ``send`` is not called.

        A call the family's ``judge`` decides from the notification and the
        policy alone (a device the profile does not name) is answered before
        anything of the caller's is read or any per-request object is made.
        """
        started = time.monotonic_ns()
        syscall, family = self.syscalls.get((notice.arch, notice.nr), ("", ""))
        request: Request | None = None
        judged: Registered | None = None
        try:
            policy = container.policy  # once: a reload may swap it meanwhile
            if not syscall or not policy.intercepts(family):
                # An arch or call we do not handle: the kernel decides, never a guess.
                answer, outcome = KERNEL_DECIDES, "unknown"
            else:
                entry = self.handlers[family]
                at_once = None if entry.judge is None else entry.judge(
                    syscall, notice.narrowed().args, policy, self.host)
                if at_once is not None:
                    answer, judged = at_once, entry
                else:
                    view = thread.view(container.name, init_pid)
                    request = Request(view, notice, syscall, listener_fd, proc_fd,
                                      thread.host_proc_fd, self.keeps_details, early)
                    answer = entry.handle(Call(request, policy, thread, self.host,
                                               container, self))
                if not answer.ours:
                    outcome = "ignored"
                else:
                    outcome = "kernel" if answer.let_kernel_decide else "done"
        except RequestGone as gone:
            log.debug("%s", gone)
            answer, outcome = Answer(error=errno.ESRCH), "gone"
        except SupervisorFault as fault:
            if request is not None and _left(request):
                # The caller left while we worked: a container that stops kills it
                # and takes our actor along (its socket resets under us).  Normal,
                # and no one waits for the answer.
                log.debug("%s, meanwhile: %s", request.gone(), fault)
                answer, outcome = Answer(error=errno.ESRCH), "gone"
            else:
                answer, outcome = self._fault(container, notice, syscall, fault), "fault"
        except OSError as err:
            if err.errno in DAEMON_ONLY_ERRNOS:
                # Our own fd table (or the host's) is full: the supervisor's failure,
                # logged as one, never the caller's errno (see DAEMON_ONLY_ERRNOS).
                ours = SupervisorFault(f"serve {syscall}", err)
                ours.__cause__ = err
                answer, outcome = self._fault(container, notice, syscall, ours), "fault"
            else:
                code = err.errno or errno.EIO
                # ESRCH: /proc/TID of a task that just died.
                outcome = "gone" if code == errno.ESRCH else "errno"
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s: pid %d %s -> %s", container.name, notice.tid, syscall,
                              errno.errorcode.get(code, code))
                answer = Answer(error=code)
        except Exception as err:
            log.exception("%s: pid %d %s, notification %#x: supervisor error (caller gets "
                          "ENOSYS)", container.name, notice.tid, syscall, notice.notif_id)
            thread.broken = thread.broken or isinstance(err, ThreadIdentityLost)
            answer, outcome = Answer(error=errno.ENOSYS), "error"
        finally:
            if request is not None:
                request.close()
        try:
            if send is not None and not (early is not None and early.answered):
                send(answer)
        finally:
            # A judged call too: a thread pinned for its actors must not keep the
            # pin while it only refuses (each refusal would then wait for a wake-up
            # on that one CPU, wherever the caller and LXC's monitor run).
            thread.rest()
            self._finish(container, notice, syscall, outcome, answer, started,
                         self._details(request, judged, syscall, notice))
        return answer

    def _details(self, request: Request | None, judged: Registered | None, syscall: str,
                 notice: Notice) -> dict[str, object]:
        """The call's arguments for the audit log: what its handler noted, or, for a
        call judged from its notification, what the family's ``describe`` makes of
        it (after the answer: see ``Registered.describe``)."""
        if request is not None:
            return request.details
        if judged is None or judged.describe is None or not self.keeps_details:
            return {}
        try:
            return judged.describe(syscall, notice.narrowed().args)
        except Exception:
            log.exception("%s: describing a judged call failed (its audit line has no "
                          "arguments)", syscall)
            return {}

    def refuse(self, container: SupervisedContainer, notice: Notice,
               fault: SupervisorFault) -> Answer:
        """The answer to a notification the transport cannot hand to ``answer``
        (its thread has no ThreadState: ``thread_state`` said why): logged,
        counted and seen by the hooks as any other supervisor fault.  Never raises."""
        started = time.monotonic_ns()
        syscall, family = self.syscalls.get((notice.arch, notice.nr), ("", ""))
        if not syscall or not container.policy.intercepts(family):
            answer, outcome = KERNEL_DECIDES, "unknown"  # as answer() does: no thread needed
        else:
            answer, outcome = self._fault(container, notice, syscall, fault), "fault"
        self._finish(container, notice, syscall, outcome, answer, started, {})
        return answer

    @staticmethod
    def _fault(container: SupervisedContainer, notice: Notice, syscall: str,
               fault: SupervisorFault) -> Answer:
        code = fault_errno(fault)
        log.error("%s: pid %d %s: %s (caller gets %s)", container.name, notice.tid,
                  syscall or notice.nr, fault, errno.errorcode.get(code, code))
        return Answer(error=code)

    def _finish(self, container: SupervisedContainer, notice: Notice, syscall: str, outcome: str,
                answer: Answer, started: int, details: dict[str, object]) -> None:
        """Count one answered request and tell the hooks."""
        container.count(outcome)
        if log.isEnabledFor(logging.DEBUG) and outcome in ("done", "kernel", "ignored"):
            log.debug("%s: pid %d %s -> %s", container.name, notice.tid, syscall or notice.nr,
                      outcome)
        if self.hooks:
            event = Outcome(container.name, notice.tid, syscall, outcome, answer.error,
                            time.monotonic_ns() - started, details)
            for hook in self.hooks:
                try:
                    hook(event)
                except Exception:
                    log.exception("hook %r failed", hook)


def _left(request: Request) -> bool:
    """Whether the caller no longer waits for an answer (asked only after a fault)."""
    try:
        request.ensure_valid()
    except RequestGone:
        return True
    except OSError:
        return False  # cannot tell: the fault stands
    return False


def fault_errno(fault: SupervisorFault) -> int:
    """What the caller gets for a supervisor fault: the errno of the step that
    failed, as the kernel would have given it for the same step, except for
    DAEMON_ONLY_ERRNOS: those say *our* fd table is full, and the caller would
    read them as its own; it gets ENOMEM, the kernel's answer when it cannot
    get what a call needs (documented for mknod(2) and mount(2))."""
    code = fault.errno or errno.EIO
    return errno.ENOMEM if code in DAEMON_ONLY_ERRNOS else code
