"""The audit log, driven with real Outcomes: lines, rotation, drops and write errors."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lxc_notify_plugin.dispatch import Outcome
from lxc_notify_plugin.service import audit
from lxc_notify_plugin.service.audit import AuditLog


def outcome(decision: str = "done", error: int = 0, tid: int = 4242,
            syscall: str = "mknodat", container: str = "box", duration_ns: int = 12_345,
            arguments: dict[str, object] | None = None) -> Outcome:
    return Outcome(container, tid, syscall, decision, error, duration_ns,
                   {"path": "/dev/null", "mode": 0o20666} if arguments is None else arguments)


def wait_for(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "decisions.jsonl"


@pytest.fixture
def started(log_path: Path) -> Iterator[AuditLog]:
    audit_log = AuditLog(log_path, max_bytes=1 << 20, backups=2, queue_size=100)
    audit_log.start()
    yield audit_log
    audit_log.close()


def test_decisions_are_logged_with_their_fields_and_not_ours_are_not(
        started: AuditLog, log_path: Path) -> None:
    started.record(outcome("done", duration_ns=12_000))
    started.record(outcome("errno", errno.EPERM, tid=7, duration_ns=3_450,
                           arguments={"path": "/dev/sda\udcff", "dev": "8:0"}))
    started.record(outcome("fault", errno.EIO))
    started.record(outcome("ignored"))
    started.record(outcome("unknown", syscall=""))
    assert started.close()

    done, refused, fault = lines(log_path)
    assert done["decision"] == "done" and done["errno"] is None and done["latency_us"] == 12
    assert done["container"] == "box" and done["pid"] == 4242 and done["syscall"] == "mknodat"
    assert done["args"] == {"path": "/dev/null", "mode": 0o20666}
    assert refused == {"time": refused["time"], "container": "box", "pid": 7,
                       "syscall": "mknodat", "args": {"path": "/dev/sda\udcff", "dev": "8:0"},
                       "decision": "errno", "errno": "EPERM", "latency_us": 3.4}
    assert fault["decision"] == "fault" and fault["errno"] == "EIO"
    # RFC 3339, UTC, microseconds: what log shippers parse without configuration.
    assert time.strptime(str(done["time"]), "%Y-%m-%dT%H:%M:%S.%fZ")
    # The undecodable byte stays escaped: the file is ASCII, every line valid JSON.
    assert "\\udcff" in log_path.read_text(encoding="ascii")
    assert (started.written, started.dropped, started.errors) == (3, 0, 0)
    assert log_path.stat().st_mode & 0o777 == 0o600
    assert log_path.parent.stat().st_mode & 0o777 == 0o700


def test_rotation_keeps_every_line_whole_and_only_the_backups_asked_for(log_path: Path) -> None:
    line_size = len(audit._line(time.time_ns(), outcome(tid=1_000_000)))
    audit_log = AuditLog(log_path, max_bytes=10 * line_size, backups=3, queue_size=1000)
    audit_log.start()
    for tid in range(1_000_000, 1_000_035):  # 3.5 files: backups are not yet full
        audit_log.record(outcome(tid=tid))
    wait_for(lambda: audit_log.written == 35)  # the rest comes in batches of its own
    for tid in range(1_000_035, 1_000_045):
        audit_log.record(outcome(tid=tid))
    assert audit_log.close()

    files = [log_path, *(Path(f"{log_path}.{n}") for n in (1, 2, 3))]
    assert not Path(f"{log_path}.4").exists()
    assert all(path.stat().st_size <= 10 * line_size for path in files)
    # Oldest first: .3 .2 .1 then the live file; the first file's 10 lines rotated away.
    tids = [entry["pid"] for path in reversed(files) for entry in lines(path)]
    assert tids == list(range(1_000_010, 1_000_045))
    assert audit_log.written == 45 and audit_log.errors == 0


def test_no_backups_means_rotation_starts_afresh(log_path: Path) -> None:
    line_size = len(audit._line(time.time_ns(), outcome()))
    audit_log = AuditLog(log_path, max_bytes=2 * line_size, backups=0, queue_size=10)
    audit_log.start()
    for tid in range(5):
        audit_log.record(outcome(tid=tid))
    assert audit_log.close()
    assert [entry["pid"] for entry in lines(log_path)] == [4]
    assert sorted(os.listdir(log_path.parent)) == [log_path.name]


def test_a_stuck_writer_drops_and_counts_without_blocking_requests(
        log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = threading.Event(), threading.Event()
    real_write = os.write

    def stuck_write(fd: int, data: bytes | memoryview) -> int:
        if fd != audit_log._fd:  # only the log's disk is stuck, not pytest's output
            return real_write(fd, data)
        entered.set()
        release.wait(5)  # a disk that does not answer
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", stuck_write)  # audit.py's os is this one
    audit_log = AuditLog(log_path, max_bytes=1 << 20, backups=1, queue_size=10)
    audit_log.start()
    audit_log.record(outcome(tid=0))  # the writer takes it and hangs in write()
    assert entered.wait(2)

    for tid in range(1, 1001):
        audit_log.record(outcome(tid=tid))
    # Every record returned while the disk had not: none of them waited for it.
    assert not release.is_set()
    assert audit_log.dropped == 990  # 10 queued behind the stuck write

    release.set()
    assert audit_log.close()
    logged = lines(log_path)
    assert [entry["pid"] for entry in logged if "pid" in entry] == list(range(11))
    assert logged[-1] == {"time": logged[-1]["time"], "dropped": 990}
    assert audit_log.written == 11


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_only_a_regular_file_is_opened(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "audit.log"
    if kind == "symlink":
        path.symlink_to(tmp_path / "elsewhere")
    else:
        os.mkfifo(path)
    with pytest.raises(OSError):
        AuditLog(path, max_bytes=1 << 20, backups=1, queue_size=10).start()
    assert not (tmp_path / "elsewhere").exists()


def test_write_errors_are_counted_logged_once_and_the_writer_survives(
        caplog: pytest.LogCaptureFixture, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        if fd == audit_log._fd:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    audit_log = AuditLog(tmp_path / "audit.log", max_bytes=1 << 20, backups=1, queue_size=10)
    monkeypatch.setattr(os, "write", full_disk)
    audit_log.start()
    for failed in range(1, 4):
        audit_log.record(outcome(tid=failed))
        wait_for(lambda: audit_log.errors == failed)  # noqa: B023 (called in this iteration)
    audit_log.record(outcome(tid=4))
    assert audit_log.close()
    assert audit_log.errors == 4 and audit_log.written == 0
    failures = [r for r in caplog.records
                if r.name == audit.__name__ and "No space" in r.getMessage()]
    assert len(failures) == 1, "logged once per burst, not once per line"


def test_a_removed_directory_fails_rotation_but_loses_no_line(log_path: Path) -> None:
    line_size = len(audit._line(time.time_ns(), outcome()))
    audit_log = AuditLog(log_path, max_bytes=2 * line_size, backups=1, queue_size=10)
    audit_log.start()
    fd = os.open(log_path, os.O_RDONLY | os.O_CLOEXEC)  # the same file, after it is unlinked
    try:
        os.unlink(log_path)
        log_path.parent.rmdir()
        for tid in range(5):
            audit_log.record(outcome(tid=tid))
        assert audit_log.close()
        assert audit_log.errors >= 1 and audit_log.written == 5
        text = os.pread(fd, 1 << 16, 0).decode()
    finally:
        os.close(fd)
    assert [json.loads(line)["pid"] for line in text.splitlines()] == list(range(5))


def test_disabled_records_nothing(tmp_path: Path) -> None:
    off = AuditLog.disabled()
    off.start()
    off.record(outcome())
    assert off.close() and not off.enabled and off.written == 0
    zero = AuditLog(tmp_path / "never", max_bytes=0, backups=1, queue_size=1)
    zero.start()
    zero.record(outcome())
    assert zero.close() and not (tmp_path / "never").exists()
