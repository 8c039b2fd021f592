"""The audit writer against logging's QueueListener and RotatingFileHandler.

Both get the same decisions, as fast as a request thread can hand them
over, while a "serving" thread in the same process measures how long it
waits for the GIL (a 20 us sleep, timed: what a request arriving meanwhile
loses to the writer).  Per decision: the request thread's cost to hand it
over, the writer thread's CPU to put it on disk, the write syscalls, and
the serving thread's added delay.  The logging variant is the lightest way
to use it that keeps our line format: the request thread queues the same
tuple, and the listener turns it into a LogRecord (``prepare``) whose
formatter writes the JSON line; a full queue is counted, as ours.

Run: ``.venv/bin/python bench/audit_writer.py``.  Not a test.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from _common import REPO  # noqa: F401  (puts the repository on sys.path)

from lxc_notify_plugin.dispatch import Outcome
from lxc_notify_plugin.service import audit as ours


class _JsonLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: tuple[int, Outcome] = record.msg  # type: ignore[assignment]
        return ours._line(*entry).decode("ascii").rstrip("\n")


class _Listener(logging.handlers.QueueListener):
    def prepare(self, record: object) -> logging.LogRecord:
        # The request thread queued a tuple; the LogRecord is made here, off its path.
        return logging.LogRecord("audit", logging.INFO, "", 0, record, None, None)


class LoggingAudit:
    """Our record() over logging's listener and rotating handler."""

    def __init__(self, path: Path, max_bytes: int, backups: int, size: int) -> None:
        self.queue: queue.Queue[object] = queue.Queue(size)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes,
                                                       backupCount=backups)
        handler.setFormatter(_JsonLine())
        self.listener = _Listener(self.queue, handler)
        self.handler = handler
        self.dropped = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self.listener.start()

    def record(self, outcome: Outcome) -> None:
        try:
            self.queue.put_nowait((time.time_ns(), outcome))
        except queue.Full:
            with self._lock:
                self.dropped += 1

    def close(self) -> None:
        # QueueListener.stop() queues its sentinel with put_nowait: on a full queue it
        # raises queue.Full (seen) and the listener never stops.  Wait for room.
        while self.queue.full():
            time.sleep(0.01)
        self.listener.stop()
        self.handler.close()


def _serving_delay(stop: threading.Event, delays: list[int]) -> None:
    """A request thread's view: wake every 200 us and see how late it got the GIL
    (beyond the sleep itself: compare the rows, not the absolute numbers)."""
    while not stop.is_set():
        start = time.perf_counter_ns()
        time.sleep(200e-6)
        delays.append(time.perf_counter_ns() - start - 200_000)


def run(name: str, make: Callable[[Path], tuple[Callable[[Outcome], None],
                                               Callable[[], None], Callable[[], int]]],
        count: int, rate: int) -> None:
    with tempfile.TemporaryDirectory(prefix="lxc-notify-audit-") as tmp:
        path = Path(tmp) / "audit.log"
        record, close, dropped = make(path)
        event = Outcome("bench-container", 12345, "mknodat", "kernel", 0, 23_400,
                        {"dev": "c 4:1", "mode": "0644", "path": "/bench/denied-node"})
        stop = threading.Event()
        delays: list[int] = []
        watcher = threading.Thread(target=_serving_delay, args=(stop, delays))
        watcher.start()
        cpu0 = time.thread_time_ns()
        process0 = time.process_time_ns()
        hand_over: list[int] = []
        # Paced like a stream of requests, in bursts of a millisecond's worth: the
        # pause is a sleep, which lets go of the GIL as a serving thread's recvmsg does.
        burst = max(1, rate // 1000)
        next_at = time.perf_counter()
        for done in range(0, count, burst):
            for _ in range(min(burst, count - done)):
                start = time.perf_counter_ns()
                record(event)
                hand_over.append(time.perf_counter_ns() - start)
            next_at += burst / rate
            time.sleep(max(0.0, next_at - time.perf_counter()))
        caller_cpu = time.thread_time_ns() - cpu0
        close()
        stop.set()
        watcher.join()
        # The writer's CPU: the process's, less the caller's and the watcher's (small).
        writer_cpu = time.process_time_ns() - process0 - caller_cpu
        lines = path.read_bytes().count(b"\n") if path.exists() else 0
        p99 = sorted(delays)[len(delays) * 99 // 100]
        print(f"{name:34} {statistics.median(hand_over):8.0f} {writer_cpu / count:9.0f} "
              f"{statistics.median(delays) / 1000:8.1f} {p99 / 1000:8.1f} "
              f"{lines:7} {dropped():7}")


def make_ours(path: Path) -> tuple[Callable[[Outcome], None], Callable[[], None],
                                   Callable[[], int]]:
    log = ours.AuditLog(path, 100 << 20, 2, 4096)
    log.start()
    def close() -> None:
        log.close()

    return log.record, close, lambda: log.dropped


def make_logging(path: Path) -> tuple[Callable[[Outcome], None], Callable[[], None],
                                      Callable[[], int]]:
    log = LoggingAudit(path, 100 << 20, 2, 4096)
    log.start()
    return log.record, log.close, lambda: log.dropped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=15_000,
                        help="decisions per second (one container's path saturates near 15-19k)")
    args = parser.parse_args()
    print(f"{args.count} decisions at {args.rate}/s, {os.cpu_count()} CPUs; ns per decision, "
          "delay of a 200 us sleeper in us")
    print(f"{'writer':34} {'hand-over':>8} {'writer CPU':>9} {'delay50':>8} {'delay99':>8} "
          f"{'lines':>7} {'dropped':>7}")
    for _ in range(3):
        run("no audit log (the floor)", lambda _: (lambda _: None, lambda: None, lambda: 0),
            args.count, args.rate)
        run("ours (service/audit.py)", make_ours, args.count, args.rate)
        run("logging QueueListener+Rotating", make_logging, args.count, args.rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
