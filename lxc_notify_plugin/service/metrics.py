"""Request counts and latencies, per container and syscall, for Prometheus.

node_exporter's textfile collector reads ``*.prom`` files from a directory;
a writer thread rewrites ours every ``interval`` seconds and once more at
close, atomically (a temporary file in the same directory, fsync, rename), so
the collector sees the old file or the new one, never half of one.  The
temporary name ends in ``.tmp``, which the collector ignores.

The series are prometheus_client's: ``.labels(...).inc()`` and ``.observe()``
cost about 2 us together on the request's thread (measured; the budget was
5 us), and its exposition, escaping and parser are ones the collector
agrees with.  Its ``write_to_textfile`` does not fsync, so the file is
written here.  Series live per (container, syscall, outcome): bounded by
what the profiles intercept, and ``forget`` drops a pruned container's.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ..dispatch import OUTCOMES, Outcome

log = logging.getLogger(__name__)

# From a refusal decided in a few microseconds to a mount that waits on a disk.
BUCKETS: Final = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1, 1.0)
_FILE_MODE: Final = 0o644  # node_exporter reads it as its own, unprivileged user


class _AuditDropped(Collector):
    """lxc_notify_audit_dropped_total, read from the audit log when the file is written."""

    def __init__(self, read: Callable[[], int]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily("lxc_notify_audit_dropped",
                                  "Audit lines dropped because the writer fell behind",
                                  value=self.read())


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs, +Inf last.

    Linear interpolation inside the bucket that holds the rank; a rank in the
    +Inf bucket gets the highest finite bound, as Prometheus answers."""
    total = buckets[-1][1]
    if total == 0:
        return None
    rank = q * total
    index = bisect.bisect_left([count for _, count in buckets], rank)
    if index == len(buckets) - 1:
        return buckets[-2][0]
    lower, below = buckets[index - 1] if index else (0.0, 0.0)
    upper, count = buckets[index]
    return lower + (upper - lower) * (rank - below) / (count - below)


class Metrics:
    """Counts by outcome and latency histograms; ``record`` is the dispatcher hook.

    ``path`` None keeps the numbers in memory only (for ``lxc-notify status``)."""

    def __init__(self, path: Path | None, interval: float,
                 audit_dropped: Callable[[], int] | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"metrics interval {interval}")
        self.path, self.interval = path, interval
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter("lxc_notify_requests", "Requests answered, by outcome",
                                 ("container", "syscall", "outcome"), registry=self.registry)
        self._duration = Histogram("lxc_notify_request_duration_seconds",
                                   "Time from receiving a request to its answer",
                                   ("container", "syscall"), buckets=BUCKETS,
                                   registry=self.registry)
        self._up = Gauge("lxc_notify_up", "1 while the supervisor runs, 0 once it stopped",
                         registry=self.registry)
        self._started = Gauge("lxc_notify_start_time_seconds",
                              "When the supervisor started, in seconds since the epoch",
                              registry=self.registry)
        if audit_dropped is not None:
            self.registry.register(_AuditDropped(audit_dropped))
        # (container, syscall, outcome) -> its counter and histogram children
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()  # the writer thread and write_now() callers
        self.errors = 0  # failed writes of the file
        self._failing = False  # in a burst of write errors, logged once

    def start(self) -> None:
        """Mark the supervisor up and start rewriting the file every ``interval`` seconds."""
        if self._thread is not None:
            return
        self._up.set(1)
        self._started.set(time.time())
        if self.path is None:
            return
        with contextlib.suppress(OSError):  # else counted as a failed write, and logged
            if not self.path.parent.is_dir():
                self.path.parent.mkdir(parents=True)
                # 0755 whatever the umask (the unit's is 0077): node_exporter reads
                # the file as another user.
                self.path.parent.chmod(0o755)
        self.write_now()
        self._thread = threading.Thread(target=self._run, name=f"metrics {self.path.name}",
                                        daemon=True)  # close() joins it; a dead disk must
        # not keep the process alive
        self._thread.start()

    def record(self, outcome: Outcome) -> None:
        """Count one request and its latency.  Never raises into the request."""
        try:
            seconds = outcome.duration_ns / 1e9  # first: a bad outcome then counts nowhere
            key = (outcome.container, outcome.syscall, outcome.outcome)
            series = self._series.get(key)
            if series is None:
                # labels() looks its child up under a lock each time: kept here, the
                # hook costs half as much (bench/hook_cost.py).
                syscall = outcome.syscall or "unknown"
                series = self._series[key] = (
                    self._requests.labels(outcome.container, syscall, outcome.outcome),
                    self._duration.labels(outcome.container, syscall))
            series[0].inc()
            series[1].observe(seconds)
        except Exception:
            # A bug here must cost a data point, not the caller's answer.
            log.exception("metrics: cannot record %r", outcome)

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the writer and write the file once more, saying the supervisor is down.

        False if the writer did not stop in time (the last write is then skipped)."""
        self._up.set(0)
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout)
            if thread.is_alive():
                log.error("metrics %s: writer did not stop in %.1fs", self.path, timeout)
                return False
        self.write_now()
        return True

    def forget(self, container: str) -> None:
        """Drop a container's series (it was pruned: its numbers would be stale forever)."""
        mine = [key for key in list(self._series)  # one C call: no request thread adds meanwhile
                if key[0] == container]
        for key in mine:
            self._series.pop(key, None)
        if hasattr(self._requests, "remove_by_labels"):
            self._requests.remove_by_labels({"container": container})
            self._duration.remove_by_labels({"container": container})
            return
        # remove_by_labels came in 2025 (client_python PR 1121); Debian's
        # python3-prometheus-client predates it (0.16 in Debian 12): remove the
        # children record() made, by the label values it gave them.  One histogram
        # child serves several outcomes, hence KeyError after the first.
        for _, syscall, outcome in mine:
            with contextlib.suppress(KeyError):
                self._requests.remove(container, syscall or "unknown", outcome)
            with contextlib.suppress(KeyError):
                self._duration.remove(container, syscall or "unknown")

    def write_now(self) -> bool:
        """Rewrite the file now; False (logged once per burst, counted) if it failed."""
        if self.path is None:
            return True
        with self._write_lock:
            try:
                _replace(self.path, generate_latest(self.registry))
            except OSError as err:
                self.errors += 1
                if not self._failing:
                    self._failing = True
                    log.error("metrics %s: %s; counting errors until a write succeeds",
                              self.path, err)
                return False
            if self._failing:
                self._failing = False
                log.warning("metrics %s: writing again (%d errors)", self.path, self.errors)
            return True

    def counts(self, container: str) -> dict[str, int]:
        """Requests of one container by outcome, every outcome present."""
        counts = dict.fromkeys(OUTCOMES, 0)
        for labels, value in self._samples(self._requests, "_total", container):
            counts[labels["outcome"]] = counts.get(labels["outcome"], 0) + int(value)
        return counts

    def latency_quantiles(self, container: str) -> dict[str, float | None]:
        """p50 and p99 latency in microseconds across the container's syscalls, estimated
        from the buckets; None before its first request."""
        cumulative = dict.fromkeys((*BUCKETS, float("inf")), 0.0)
        for labels, value in self._samples(self._duration, "_bucket", container):
            cumulative[float(labels["le"])] += value
        buckets = sorted(cumulative.items())
        quantiles = {name: _quantile(q, buckets) for name, q in (("p50", 0.5), ("p99", 0.99))}
        return {name: None if value is None else value * 1e6 for name, value in quantiles.items()}

    @staticmethod
    def _samples(metric: Counter | Histogram, suffix: str, container: str
                 ) -> Iterator[tuple[dict[str, str], float]]:
        for family in metric.collect():
            for sample in family.samples:
                if sample.name.endswith(suffix) and sample.labels["container"] == container:
                    yield sample.labels, sample.value

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.write_now()


def _replace(path: Path, data: bytes) -> None:
    """Write, fsync, rename over ``path``; on failure no temporary file is left behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a crashed daemon's of the same pid
    # O_EXCL: a file, FIFO or link someone else put at the name is not ours to write.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 _FILE_MODE)
    try:
        try:
            os.fchmod(fd, _FILE_MODE)  # whatever the daemon's umask: the collector must read it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)  # else a crash after the rename can leave an empty file
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
