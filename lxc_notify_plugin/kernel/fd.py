"""An fd we own, closed once.

As trio's fd holders do: the number is set to -1 *before* ``os.close``, so a
second close (an error path after a normal one, a ``finally`` after an early
return) can never close a number the kernel has meanwhile given to another
open in another thread.
"""

from __future__ import annotations

import os
from types import TracebackType


class OwnedFd:
    __slots__ = ("fd",)

    def __init__(self, fd: int = -1) -> None:
        self.fd = fd

    def own(self, fd: int) -> int:
        """Hold ``fd`` (this holder holds nothing yet); returns it."""
        if self.fd >= 0:
            raise RuntimeError(f"already holding fd {self.fd}")
        self.fd = fd
        return fd

    def detach(self) -> int:
        """Give the fd up to a new owner (as ``socket.detach``): this holder holds
        nothing after, so its ``with`` block no longer closes it."""
        fd, self.fd = self.fd, -1
        return fd

    def replace(self, fd: int) -> None:
        """Hold ``fd`` instead of the fd held now, which is closed: after the swap, so
        that a failing close cannot leave the new fd without an owner."""
        old, self.fd = self.fd, fd
        if old >= 0 and old != fd:
            os.close(old)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> OwnedFd:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
