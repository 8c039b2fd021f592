"""One module per intercepted syscall; this table maps syscall names to handlers.

A handler gets the request, the supervisor thread it runs on and the
container's policy, and returns an Answer.  It raises OSError with the errno
the kernel would give; the supervisor turns that into the reply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..caller import Request, SupervisorThread
from ..policy.effective import ContainerPolicy


@dataclass(frozen=True, slots=True)
class Answer:
    """What the caller's syscall returns: ``val``, ``-error``, or the kernel's own result."""

    val: int = 0
    error: int = 0
    let_kernel_decide: bool = False  # SECCOMP_USER_NOTIF_FLAG_CONTINUE


DONE = Answer()
KERNEL_DECIDES = Answer(let_kernel_decide=True)

Handler = Callable[[Request, SupervisorThread, ContainerPolicy], Answer]


def handlers() -> dict[str, Handler]:
    from . import mknod

    return {"mknod": mknod.handle, "mknodat": mknod.handle}
