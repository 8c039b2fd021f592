"""Metrics, driven with real Outcomes: the textfile parses, counts match, writes are atomic."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lxc_notify_plugin.dispatch import OUTCOMES, Outcome
from lxc_notify_plugin.service.metrics import BUCKETS, Metrics


def outcome(decision: str = "done", container: str = "box", syscall: str = "mknodat",
            duration_us: float = 20.0) -> Outcome:
    error = errno.EPERM if decision == "errno" else 0
    return Outcome(container, 99, syscall, decision, error, int(duration_us * 1000), {})


def samples(path: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the file by (name, labels)."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(path.read_text())
            for sample in family.samples}


def requests(found: dict[tuple[str, frozenset[tuple[str, str]]], float], container: str,
             syscall: str, decision: str) -> float:
    labels = frozenset({"container": container, "syscall": syscall, "outcome": decision}.items())
    return found[("lxc_notify_requests_total", labels)]


def test_the_file_parses_and_counts_match_what_was_recorded(tmp_path: Path) -> None:
    path = tmp_path / "lxc_notify.prom"
    metrics = Metrics(path, interval=60, audit_dropped=lambda: 7)
    metrics.start()
    recorded = {("box", "mknodat", "done"): 5, ("box", "mknodat", "errno"): 2,
                ("box", "mount", "kernel"): 1, ("web", "", "unknown"): 3}
    for (container, syscall, decision), times in recorded.items():
        for _ in range(times):
            metrics.record(outcome(decision, container, syscall))
    assert metrics.close()

    found = samples(path)
    for (container, syscall, decision), times in recorded.items():
        assert requests(found, container, syscall or "unknown", decision) == times
    box_mknodat = frozenset({"container": "box", "syscall": "mknodat"}.items())
    assert found[("lxc_notify_request_duration_seconds_count", box_mknodat)] == 7
    total_seconds = found[("lxc_notify_request_duration_seconds_sum", box_mknodat)]
    assert total_seconds == pytest.approx(7 * 2e-5)
    assert found[("lxc_notify_audit_dropped_total", frozenset())] == 7
    assert found[("lxc_notify_up", frozenset())] == 0  # the last write says it stopped
    assert time.time() - found[("lxc_notify_start_time_seconds", frozenset())] < 60
    assert metrics.counts("box") == {**dict.fromkeys(OUTCOMES, 0), "done": 5, "errno": 2,
                                     "kernel": 1}
    assert path.stat().st_mode & 0o777 == 0o644  # node_exporter is another user


def test_the_writer_rewrites_every_interval_and_never_leaves_a_temporary_file(
        tmp_path: Path) -> None:
    path = tmp_path / "lxc_notify.prom"
    metrics = Metrics(path, interval=0.01)
    metrics.start()
    box_done = frozenset({"container": "box", "syscall": "mknodat", "outcome": "done"}.items())
    seen: list[float] = []
    broken: list[Exception] = []
    stop = threading.Event()

    def read_while_written() -> None:
        # The collector may read at any moment: every read must be a whole file, down to
        # its last series (the start time, registered last).
        while not stop.is_set():
            try:
                found = samples(path)
                assert found[("lxc_notify_start_time_seconds", frozenset())] > 0
                seen.append(found.get(("lxc_notify_requests_total", box_done), 0))
                time.sleep(0.0002)  # leave the writer the GIL now and then
            except Exception as err:  # reported below, on the test's thread
                broken.append(err)
                return

    reader = threading.Thread(target=read_while_written)
    reader.start()
    recorded, deadline = 0, time.monotonic() + 2
    try:
        # Until the reads have seen several rewrites (some 20 ms at 10 ms each).
        while len(set(seen)) < 4 and not broken and time.monotonic() < deadline:
            metrics.record(outcome())
            recorded += 1
            time.sleep(0.001)
    finally:
        stop.set()
        reader.join()
    assert metrics.close()
    assert not broken
    assert len(set(seen)) >= 4, "the reads overlapped several rewrites"
    assert requests(samples(path), "box", "mknodat", "done") == recorded
    assert os.listdir(tmp_path) == [path.name]


def test_a_failed_write_is_counted_and_leaves_nothing_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lxc_notify.prom"
    metrics = Metrics(path, interval=60)
    metrics.record(outcome())

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)  # after the temporary file is written
    assert not metrics.write_now() and not metrics.write_now()
    assert metrics.errors == 2 and os.listdir(tmp_path) == []
    monkeypatch.undo()
    assert metrics.write_now() and os.listdir(tmp_path) == [path.name]


def test_quantiles_land_in_the_bucket_of_the_observations() -> None:
    metrics = Metrics(None, interval=60)
    assert metrics.latency_quantiles("box") == {"p50": None, "p99": None}
    for _ in range(98):
        metrics.record(outcome(duration_us=30))  # (25 us, 50 us]
    metrics.record(outcome(syscall="mount", duration_us=700))  # (500 us, 1 ms]
    metrics.record(outcome(syscall="mount", duration_us=800))
    metrics.record(outcome(container="other", duration_us=5e5))  # not box's
    quantiles = metrics.latency_quantiles("box")
    p50, p99 = quantiles["p50"], quantiles["p99"]
    assert p50 is not None and 25 < p50 <= 50
    # Rank 99 of 100 is the first of the two in (500 us, 1 ms]: interpolated half way.
    assert p99 == pytest.approx(750)
    slow = metrics.latency_quantiles("other")
    assert slow["p99"] is not None and 1e5 < slow["p99"] <= 1e6


def test_a_latency_beyond_the_last_bucket_reads_as_its_bound() -> None:
    metrics = Metrics(None, interval=60)
    metrics.record(outcome(duration_us=5e6))
    assert metrics.latency_quantiles("box") == {"p50": BUCKETS[-1] * 1e6,
                                                "p99": BUCKETS[-1] * 1e6}


@pytest.mark.parametrize("by_labels", [True, False], ids=["remove_by_labels", "debian"])
def test_forget_drops_only_that_containers_series(tmp_path: Path, by_labels: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client.metrics import MetricWrapperBase

    if not by_labels:  # as Debian's python3-prometheus-client, which predates it
        monkeypatch.delattr(MetricWrapperBase, "remove_by_labels", raising=False)
    path = tmp_path / "lxc_notify.prom"
    metrics = Metrics(path, interval=60)
    metrics.record(outcome(container="gone"))
    metrics.record(outcome("errno", container="gone"))  # the same histogram child
    metrics.record(outcome(container="stays"))
    metrics.forget("gone")
    assert metrics.write_now()
    containers = {dict(labels).get("container") for _, labels in samples(path)}
    assert containers == {None, "stays"}
    assert metrics.counts("gone")["done"] == 0
    assert metrics.latency_quantiles("gone")["p50"] is None


def test_record_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(None, interval=60)
    broken = Outcome("box", 1, "mknodat", "done", 0, "not a number", {})  # type: ignore[arg-type]
    metrics.record(broken)
    assert "cannot record" in caplog.text
    event = outcome()
    for _ in range(1000):
        metrics.record(event)
    assert metrics.counts("box")["done"] == 1000  # what the bad one did not count
