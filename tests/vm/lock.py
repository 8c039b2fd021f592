"""The machine's heavy-job lock: one debootstrap, one VM boot or one LXC suite at a time.

It is the lock `flock /tmp/lxc-notify-heavy.lock CMD` takes (flock(2) on that file),
so the VM tier queues with the other suites that run on this machine.  The wait is
a blocking flock, not a poll: when the lock is released the kernel wakes every
blocked waiter, and a poller would lose to all of them every time.  The wait is
bounded; on expiry the error names the processes holding the file open, because a
daemon started under `flock` without `-o` inherits the fd and keeps the lock for
as long as it lives (seen: a systemd-udevd started by setup.sh).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

HEAVY_LOCK = Path(os.environ.get("LXC_NOTIFY_HEAVY_LOCK", "/tmp/lxc-notify-heavy.lock"))
WAIT = float(os.environ.get("LXC_NOTIFY_HEAVY_LOCK_WAIT", "3600"))


class LockTimeout(Exception):
    """The heavy-job lock stayed held past the wait limit."""


@contextlib.contextmanager
def heavy_lock(wait: float = WAIT) -> Iterator[float]:
    """Hold the heavy-job lock; yields the seconds spent waiting for it."""
    started = time.monotonic()
    fd = os.open(HEAVY_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        _flock(fd, wait)
        yield time.monotonic() - started
    finally:
        os.close(fd)  # releases the lock


def _flock(fd: int, wait: float) -> None:
    if threading.current_thread() is not threading.main_thread():
        _flock_polling(fd, wait)  # SIGALRM reaches the main thread only
        return

    def expired(signum: int, frame: FrameType | None) -> None:
        raise LockTimeout(f"waited {wait:.0f} s for {HEAVY_LOCK}; open in: "
                          f"{'; '.join(holders()) or 'no other process'}")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, wait)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # interrupted by `expired` raising
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _flock_polling(fd: int, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise LockTimeout(f"waited {wait:.0f} s for {HEAVY_LOCK}; open in: "
                                  f"{'; '.join(holders()) or 'no other process'}") from None
            time.sleep(0.5)


def holders() -> list[str]:
    """'PID COMMAND' of every other process with the lock file open."""
    found = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        if fd_dir.parent.name == str(os.getpid()):
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == str(HEAVY_LOCK) for fd in fd_dir.iterdir()):
                cmdline = (fd_dir.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                found.append(f"{fd_dir.parent.name} {cmdline.decode(errors='replace')[:120]}")
    return found
