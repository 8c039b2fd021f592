"""The package's exceptions: one root, data in attributes, printed with context."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager


class LxcNotifyError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(LxcNotifyError):
    """Bad profile, bad key or bad state file: names the file, the key and the reason."""

    def __init__(self, file: str, key: str | None, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {reason}")


class DaemonError(LxcNotifyError):
    """The daemon cannot run: its socket is taken (one per host), a file cannot be opened."""


class ServiceError(LxcNotifyError):
    """systemctl refused to install, enable or remove the units: the command, its
    status and what it said (the admin sees systemd's reason, not a traceback)."""

    def __init__(self, command: list[str], status: int, said: str) -> None:
        self.command = command
        self.status = status
        self.said = said
        super().__init__(f"{' '.join(command)} exited with status {status}"
                         + (f": {said.strip()}" if said.strip() else ""))


class ProtocolError(LxcNotifyError):
    """A datagram from the LXC monitor that does not follow the seccomp proxy protocol."""


class ContainerError(LxcNotifyError):
    """An operation on a container (enable, start, ...) that cannot be done."""

    def __init__(self, container: str, reason: str) -> None:
        self.container = container
        self.reason = reason
        super().__init__(f"container {container!r}: {reason}")


class RequestGone(LxcNotifyError):
    """The task behind a notification left the syscall (died, was signalled, answered).

    Normal when a container stops mid-request; never worth more than a debug line.
    """

    def __init__(self, container: str, pid: int, syscall: str, notif_id: int) -> None:
        self.container = container
        self.pid = pid
        self.syscall = syscall
        self.notif_id = notif_id
        super().__init__(f"{container}: pid {pid} left {syscall} (notification {notif_id:#x})")


class ThreadIdentityLost(LxcNotifyError):
    """A supervisor thread could not restore its own credentials, root or namespace.

    It must serve nothing more: its connection is closed (LXC then answers
    ENOSYS and reconnects once).
    """


class SupervisorFault(LxcNotifyError, OSError):
    """A step only the daemon takes failed (setns, move_mount, its helper): the
    supervisor's failure, not the caller's, and logged as such.  The caller
    gets ``errno``: ``answer`` where one is given, else the step's own errno
    (the kernel's answer for the same step, where the kernel has one)."""

    def __init__(self, step: str, cause: OSError, answer: int | None = None) -> None:
        code = answer if answer is not None else cause.errno or errno.EIO
        OSError.__init__(self, code, f"supervisor could not {step}: {cause}")
        self.step = step
        self.cause = cause


# What a caller gets when one of our own steps fails: the kernel's answer when it
# cannot get what a call needs (documented for mknod(2), mount(2), the xattr calls).
OWN_STEP_ERRNO = errno.ENOMEM


@contextmanager
def own_step(step: str) -> Iterator[None]:
    """Run one of the daemon's own steps (its private tmpfs, the node store, the
    flag locker's namespaces, a thread's fds): an OSError in it is the
    supervisor's failure, raised as a SupervisorFault ``from`` it that answers
    the caller OWN_STEP_ERRNO, so that the dispatcher logs it as one and never
    answers it as if the kernel had said it (an EEXIST of our store's names is
    not the caller's path existing, an ENOSPC of our tmpfs not its disk full).
    Faults and domain errors raised inside pass through unchanged.

    The one boundary, as psutil's ``wrap_exceptions``: used as a decorator on
    the entry points of what is ours (``@own_step("...")``), or around a block."""
    try:
        yield
    except SupervisorFault:
        raise
    except OSError as err:
        raise SupervisorFault(step, err, OWN_STEP_ERRNO) from err
