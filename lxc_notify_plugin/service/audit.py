"""The audit log: one JSON line per decision, written off the request's thread.

``record`` runs on the request's thread (after the caller is answered), so it
only stamps the time and appends the Outcome to a bounded deque (atomic
under the GIL, no lock); formatting and I/O are the writer thread's, woken
once per batch.  When the writer falls behind (a slow or full disk) the
deque fills, and decisions are dropped and counted rather than delaying
callers; the next write puts the loss on record as
``{"time": ..., "dropped": n}``.

Lines stay whole: the file is rotated (path -> path.1 -> ... -> path.N)
before a line that would take it past ``max_bytes``, and a write that fails
half way is cut back to the last whole line.  The writer is the only one
appending, so it knows the file's size without asking.

Why not logging's QueueListener with a RotatingFileHandler (issue 20 asked):
fed the same tuples, formatted by the same code (bench/audit_writer.py, 15k
decisions/s), its writer thread took 3-4 times our CPU per line (about 45 us
against 12 us, all of it holding the GIL the request threads need: a thread
waking every 200 us was late by 430-740 us at p99 against 140-160 us), as it
writes and flushes each line alone, and formats each record twice (once to
decide on rotation).  It also counts no drops (QueueHandler reports a full
queue through handleError, a traceback on stderr each time), its stop()
raises queue.Full when the queue is full (seen), and the handler opens the
file by name, through a symlink or onto a FIFO, and leaves a half-written
line in place.  Kept: the same design, our own code.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

from ..dispatch import Outcome

log = logging.getLogger(__name__)

_Entry = tuple[int, Outcome]  # (time_ns, outcome)


_second: tuple[int, str] = (-1, "")  # the last second formatted, and its text


def _timestamp(time_ns: int) -> str:
    """RFC 3339 in UTC with microseconds, e.g. 2024-05-01T12:00:00.123456Z."""
    global _second
    seconds, micros = divmod(time_ns // 1000, 1_000_000)
    # A batch's lines share their second: strftime once per second, not per line
    # (1.9 us of the writer's 5.6 us per line, all of it holding the GIL).
    cached, text = _second
    if cached != seconds:
        text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (seconds, text)
    return f"{text}.{micros:06d}Z"


def _latency_us(duration_ns: int) -> int | float:
    tenths = round(duration_ns / 100)
    return tenths // 10 if tenths % 10 == 0 else tenths / 10


# ensure_ascii: a path's undecodable bytes arrive as lone surrogates
# (surrogateescape), which UTF-8 cannot encode; as \udcXX escapes they stay
# valid JSON and a reader can restore the bytes.  default=str: an argument of an
# unexpected type is still logged, as text, rather than lost.  One encoder for
# every line: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str)


def _encode(entry: dict[str, object]) -> bytes:
    return (_ENCODER.encode(entry) + "\n").encode("ascii")


def _line(time_ns: int, outcome: Outcome) -> bytes:
    code = outcome.error
    return _encode({"time": _timestamp(time_ns), "container": outcome.container,
                    "pid": outcome.tid, "syscall": outcome.syscall, "args": outcome.arguments,
                    "decision": outcome.outcome,
                    "errno": errno.errorcode.get(code, str(code)) if code else None,
                    "latency_us": _latency_us(outcome.duration_ns)})


_GATHER_SECONDS = 0.05  # lines reach the file within this (and the disk's) delay


class AuditLog:
    """JSON lines of every audited decision, size-rotated; ``record`` is the dispatcher hook."""

    def __init__(self, path: Path, max_bytes: int, backups: int, queue_size: int) -> None:
        if max_bytes < 0 or backups < 0 or queue_size < 1:
            raise ValueError(f"audit log {path}: max_bytes {max_bytes}, backups {backups}, "
                             f"queue_size {queue_size}")
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        # Not queue.Queue: its put takes a lock and notifies the writer on every
        # call (1.4 us of the request thread's time, bench/denied_path.py).
        self._pending: deque[_Entry] = deque()
        self._queue_size = queue_size
        self._wake = threading.Event()  # something is pending (set once per batch)
        self._closing = threading.Event()
        self._accepting = False  # set while the writer runs; record() is a no-op otherwise
        self._thread: threading.Thread | None = None
        self._fd = -1  # the writer's from start() until it exits
        self._size = 0
        self._dropped_lock = threading.Lock()  # request threads add, the writer reads
        self._dropped = self._reported = self._written = self._errors = 0
        self._failing = False  # in a burst of I/O errors, logged once

    @classmethod
    def disabled(cls) -> AuditLog:
        return cls(Path(os.devnull), 0, 0, 1)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def written(self) -> int:
        return self._written

    @property
    def dropped(self) -> int:
        with self._dropped_lock:
            return self._dropped

    @property
    def errors(self) -> int:
        """Failed writes, rotations and lines that could not be serialised."""
        return self._errors

    def start(self) -> None:
        """Open the file (raising if it cannot be: a configuration error) and start the writer."""
        if not self.enabled or self._thread is not None:
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size
        # close() joins it, so queued decisions reach the file; a daemon thread all
        # the same, so a writer stuck on a dead disk cannot keep the process alive.
        self._thread = threading.Thread(target=self._run, name=f"audit {self.path.name}",
                                        daemon=True)
        self._accepting = True
        self._thread.start()

    def record(self, outcome: Outcome) -> None:
        """Queue one decision; never blocks: when the queue is full it is dropped and counted."""
        if not self._accepting or not outcome.audited:
            return
        if len(self._pending) >= self._queue_size:  # the bound, give or take a racing thread
            with self._dropped_lock:
                self._dropped += 1
            return
        # The Outcome itself, formatted later by the writer: its arguments are the
        # request's own dict, which nothing touches once the hooks have run.
        self._pending.append((time.time_ns(), outcome))
        if not self._wake.is_set():  # the writer clears it before it drains: none is missed
            self._wake.set()

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is queued and stop the writer; False if it did not finish in time."""
        thread = self._thread
        if thread is None:
            return True
        self._accepting = False
        self._closing.set()  # no more gathering: what is pending is written now
        self._wake.set()
        deadline = time.monotonic() + timeout
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.error("audit log %s: writer did not finish in %.1fs, %d lines unwritten",
                      self.path, timeout, len(self._pending))
            return False
        self._thread = None
        return True

    def _open(self) -> int:
        # Never through a symlink, never a FIFO or device someone put at that name
        # (Debian's /var/log is group-writable).
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                     | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, f"{self.path} is not a regular file", str(self.path))
        os.set_blocking(fd, True)
        return fd

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait()
                # Gather for a moment: woken once per request, the writer would
                # take the GIL from the request threads at every call (measured
                # in bench/mknod_latency.py: a denied mknod 15% slower).
                self._closing.wait(_GATHER_SECONDS)
                self._wake.clear()  # before draining: a record after this wakes us again
                batch = []
                while self._pending:  # this thread alone takes from the left
                    batch.append(self._pending.popleft())
                try:
                    self._write_batch(batch)
                except Exception:
                    # Our bug: log it and go on, so one bad batch cannot end the audit.
                    self._errors += 1
                    log.exception("audit log %s: batch of %d lost", self.path, len(batch))
                if self._closing.is_set() and not self._pending:
                    return
        finally:
            os.close(self._fd)
            self._fd = -1

    def _write_batch(self, entries: list[tuple[int, Outcome]]) -> None:
        lines = []
        for time_ns, outcome in entries:
            try:
                lines.append(_line(time_ns, outcome))
            except (TypeError, ValueError) as err:  # e.g. a dict key json cannot write
                self._errors += 1
                log.error("audit log %s: %s pid %d %s not serialisable: %s", self.path,
                          outcome.container, outcome.tid, outcome.syscall, err)
        # Read after draining, so the count covers every drop before these lines were taken.
        dropped = self.dropped - self._reported
        if dropped:
            lines.append(_encode({"time": _timestamp(time.time_ns()), "dropped": dropped}))
        written = self._write_lines(lines)
        self._written += min(written, len(entries))
        if dropped and written == len(lines):
            self._reported += dropped  # else it is reported, with any later drops, next time

    def _write_lines(self, lines: list[bytes]) -> int:
        """Append whole lines, rotating before one would overflow; how many were written."""
        done, chunk, chunk_size = 0, list[bytes](), 0
        for line in lines:
            if self._size + chunk_size + len(line) > self.max_bytes and self._size + chunk_size:
                if chunk and not self._append(chunk):
                    return done
                done, chunk, chunk_size = done + len(chunk), [], 0
                self._rotate()
            chunk.append(line)
            chunk_size += len(line)
        return done + len(chunk) if chunk and self._append(chunk) else done

    def _append(self, chunk: list[bytes]) -> bool:
        joined = b"".join(chunk)
        data = memoryview(joined)
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as err:
            self._failed(err)
            # Cut a half-written line back off, so the file holds whole lines only.  Best
            # effort (a device cannot be truncated): the failure is already on record.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            return False
        self._size += len(joined)
        if self._failing:
            self._failing = False
            log.warning("audit log %s: writing again (%d errors so far)", self.path, self._errors)
        return True

    def _rotate(self) -> None:
        try:
            for number in range(self.backups - 1, 0, -1):
                older = Path(f"{self.path}.{number}")
                if older.exists():
                    os.replace(older, f"{self.path}.{number + 1}")  # over the oldest
            if self.backups:
                os.replace(self.path, f"{self.path}.1")
            else:
                os.unlink(self.path)
            fd = self._open()
        except OSError as err:
            # Keep appending to the open file: an oversized log beats lost lines.  Retry
            # after another max_bytes rather than before every line.
            self._failed(err)
            self._size = 0
            return
        os.close(self._fd)
        self._fd, self._size = fd, 0

    def _failed(self, err: OSError) -> None:
        self._errors += 1
        if not self._failing:
            self._failing = True
            log.error("audit log %s: %s; counting errors until a write succeeds", self.path, err)
