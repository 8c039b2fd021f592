"""The daemon as a service: its unit, config, stop and restart, containers that come and go,
audit log and metrics, against real containers."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lxc_notify_plugin.service import unit
from tests.lxc.conftest import (
    UNDER_UNIT,
    Container,
    Daemon,
    queued_to,
    supervised_container,
    unit_wrapper,
    wait_for,
    waiting_caller,
)

REPO = Path(__file__).resolve().parent.parent.parent
MakeDaemon = Callable[..., Daemon]  # own_daemon(config="", start=True)
MakeContainer = Callable[[Daemon], Container]  # own_container(daemon)


@pytest.fixture
def own_daemon(lxc_ready: None, udev_ready: None, tmp_path: Path) -> Iterator[MakeDaemon]:
    """Daemons of the test's own (fresh state, own socket), stopped at the end."""
    made: list[Daemon] = []

    def make(config: str = "", start: bool = True) -> Daemon:
        root = tmp_path / f"d{len(made)}"
        root.mkdir()
        daemon = Daemon(root)
        if config:
            daemon.config_path.write_text(daemon.config_path.read_text() + config)
        made.append(daemon)
        if start:
            daemon.start()
        return daemon

    try:
        yield make
    finally:
        for daemon in made:
            if daemon.process is not None:
                daemon.stop()  # removes its run directory too
            else:
                shutil.rmtree(daemon.run_dir, ignore_errors=True)


@pytest.fixture
def own_container(nodeprobe: Path) -> Iterator[MakeContainer]:
    """Supervised containers of the test's own, destroyed before its daemons stop."""
    made: list[Container] = []

    def make(daemon: Daemon) -> Container:
        made.append(supervised_container(daemon, nodeprobe))
        return made[-1]

    try:
        yield make
    finally:
        for container in made:
            container.destroy()


def _threads(daemon: Daemon) -> int:
    return len(os.listdir(f"/proc/{daemon.pid}/task"))


def _all_disconnected(daemon: Daemon, container: Container, connections: int,
                      threads: int) -> None:
    """Wait until the container's ``connections`` connections have ended: each thread
    closes its connection and its fds, logs the disconnect, and ends; the daemon
    then has ``threads`` threads."""
    line = f"container {container.name}: disconnected"
    wait_for(lambda: daemon.log().count(line) >= connections,
             f"{connections} disconnects of {container.name}", timeout=20)
    wait_for(lambda: _threads(daemon) == threads, f"the daemon back to {threads} threads")


def _status(daemon: Daemon) -> dict[str, dict[str, Any]]:
    """`lxc-notify status` rows by container name, read from the daemon's JSON answer."""
    result = daemon.cli("status")
    body = json.loads(daemon.paths.status_file.read_text())
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in body["containers"]}


# --- the unit --------------------------------------------------------------------------


def test_the_units_are_valid_and_install_writes_them(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "lxc_notify_plugin", "service"]
    unit_dir = tmp_path / "units"
    installed = subprocess.run([*cli, "install", "--unit-dir", str(unit_dir)],
                               capture_output=True, text=True, check=True)
    service, sockets = unit_dir / unit.UNIT_NAME, unit_dir / unit.SOCKET_NAME
    # --man=no: Documentation= names lxc-notify(8), which the Debian package
    # installs and a source checkout does not (verify would run man and fail).
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(service),
                             str(sockets)], capture_output=True, text=True)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    text = service.read_text()
    assert text == unit.render()
    assert "Before=lxc.service" in text and "Type=notify" in text
    assert f"ExecStart={sys.executable} -m lxc_notify_plugin daemon" in text
    assert "ListenSequentialPacket=/run/lxc-notify/seccomp.sock" in sockets.read_text()
    if not unit.systemd_is_init():  # these machines: said, not pretended
        assert "systemd is not this system's init" in installed.stdout
    subprocess.run([*cli, "remove", "--unit-dir", str(unit_dir)], check=True)
    assert not service.exists() and not sockets.exists()


def test_a_daemon_under_the_units_restrictions_serves(own_daemon: MakeDaemon,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path,
                                                      own_container: MakeContainer) -> None:
    """systemd is not init here: the unit's ExecStart runs under the same bounding set,
    and umask (setpriv), and the real tests of every handler run against it."""
    monkeypatch.setenv(UNDER_UNIT, "1")
    daemon = own_daemon()  # Daemon.start checks CapBnd and NoNewPrivs of the process
    assert unit_wrapper()[0] == "sh"
    container = own_container(daemon)
    assert container.probe("mknod", "/dev/unit-null", "c", "1", "3") == "ok"
    assert container.sh("cat /dev/unit-null && echo readable").strip() == "readable"
    container.destroy()  # not left running beside the nested tests' own
    # The handlers' own tests, each daemon they start bounded the same way.
    tests = ["test_mknod.py", "test_hostile.py", "test_mount.py", "test_setxattr.py",
             "test_sysinfo.py", "test_sched.py"]
    basetemp = tmp_path / "nested"
    nested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         f"--basetemp={basetemp}", *(str(REPO / "tests" / "lxc" / name) for name in tests)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, UNDER_UNIT: "1"})
    if nested.returncode != 0:  # the daemons' side of it, for whoever reads the failure
        logs = "".join(f"\n--- {log} (last lines) ---\n" + "\n".join(
            log.read_text(errors="replace").splitlines()[-25:])
            for log in sorted(basetemp.glob("*/daemon.log")))
        raise AssertionError(nested.stdout[-6000:] + nested.stderr[-3000:] + logs)
    assert " passed" in nested.stdout.splitlines()[-1]


# --- one daemon, its configuration ---------------------------------------------------------


def test_a_second_daemon_is_refused(daemon: Daemon) -> None:
    second = subprocess.run([sys.executable, "-m", "lxc_notify_plugin", *daemon.global_args(),
                             "daemon"], capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert f"(pid {daemon.pid}) already listens on {daemon.paths.socket}" in second.stderr
    assert "Traceback" not in second.stderr
    assert daemon.alive()


def test_a_bad_daemon_toml_starts_nothing(own_daemon: MakeDaemon) -> None:
    daemon = own_daemon("[limits]\nconnections = 'many'\n", start=False)
    result = daemon.cli("daemon", check=False)
    assert result.returncode == 1
    assert result.stderr == (f"lxc-notify: {daemon.config_path}: limits.connections: 'many' "
                             "is not an integer\n")
    assert not daemon.paths.socket.exists()


def test_sighup_rereads_daemon_toml_and_refuses_a_bad_one(own_daemon: MakeDaemon
                                                          ) -> None:
    daemon = own_daemon()
    good = daemon.config_path.read_text()
    daemon.config_path.write_text(good.replace("backups = 2", "backups = 7")
                                  + "[limits]\nconnections = 5\n")
    assert daemon.cli("reload").returncode == 0
    assert "limits.connections changed; it applies at the next start" in daemon.log()
    daemon.config_path.write_text(good + "[daemon]\nlog_level = 'chatty'\n")
    # The command checks the file itself before it signals ...
    refused = daemon.cli("reload", check=False)
    assert refused.returncode == 1 and "'chatty' is not a log level" in refused.stderr
    # ... and the daemon, signalled directly (systemctl reload), keeps the old one.
    os.kill(daemon.pid, signal.SIGHUP)
    wait_for(lambda: "daemon configuration refused, the old one is kept" in daemon.log(),
            "the daemon to refuse the file")
    assert "'chatty' is not a log level" in daemon.log()
    daemon.config_path.write_text(good)
    assert daemon.cli("reload").returncode == 0 and daemon.alive()


# --- stop, kill, restart ---------------------------------------------------------------------


def test_sigterm_answers_the_request_in_flight(own_daemon: MakeDaemon,
                                               own_container: MakeContainer) -> None:
    daemon = own_daemon()
    container = own_container(daemon)
    assert container.probe("mknod", "/tmp/warm", "c", "1", "3") == "ok"
    os.kill(daemon.pid, signal.SIGSTOP)  # the next request waits in our socket
    try:
        with container.background("once", "/tmp/in-flight") as probe:
            waiting_caller("/bin/nodeprobe", "once", "/tmp/in-flight")
            wait_for(lambda: queued_to(daemon.pid), "its datagram in the stopped daemon's socket")
            os.kill(daemon.pid, signal.SIGTERM)
            os.kill(daemon.pid, signal.SIGCONT)
            assert probe.stdout is not None
            assert probe.stdout.readline().strip() == b"ok"
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    assert daemon.stop() == 0
    assert not daemon.paths.socket.exists() and not daemon.paths.agent_socket.exists()


def test_sigkill_and_restart_serve_a_running_container(own_daemon: MakeDaemon,
                                                       own_container: MakeContainer) -> None:
    daemon = own_daemon()
    container = own_container(daemon)
    assert container.probe("mknod", "/tmp/before", "c", "1", "3") == "ok"
    assert daemon.process is not None
    daemon.process.kill()
    daemon.process.wait()
    daemon.start()  # the same socket, state and cookies; the container untouched
    # LXC's send on its old connection fails; it reconnects once, and is served.
    assert container.probe("mknod", "/tmp/after", "c", "1", "3") == "ok"
    assert container.probe("mknod", "/tmp/after2", "c", "1", "3") == "ok"


def test_under_socket_activation_a_restart_loses_no_caller(own_daemon: MakeDaemon,
                                                           own_container: MakeContainer) -> None:
    """As under lxc-notify.socket: the sockets outlive the daemon, so a call made while
    no daemon runs waits in them and is served by the next one, not answered ENOSYS."""
    daemon = own_daemon(start=False)
    held = daemon.hold_sockets()
    try:
        daemon.start(held)
        container = own_container(daemon)
        assert container.probe("mknod", "/tmp/before", "c", "1", "3") == "ok"
        assert daemon.process is not None
        daemon.process.kill()
        daemon.process.wait()
        with container.background("once", "/tmp/during") as gap:
            # Its call waits, and LXC's monitor, its old connection gone, has connected
            # again: to the socket systemd would hold, where its datagram waits.
            waiting_caller("/bin/nodeprobe", "once", "/tmp/during")
            wait_for(lambda: select.select([held[0]], [], [], 0)[0],
                     "the monitor's new connection on the held socket")
            assert gap.poll() is None  # still waiting: not answered ENOSYS
            daemon.start(held)
            assert gap.stdout is not None
            assert gap.stdout.readline().strip() == b"ok"
        assert container.probe("mknod", "/tmp/after", "c", "1", "3") == "ok"
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(20) == 0
        assert daemon.paths.socket.exists()  # the holder's, not the daemon's to remove
        assert "held by systemd across restarts" in daemon.log()
    finally:
        for sock in held:
            sock.close()


# --- containers come and go ------------------------------------------------------------------


def test_status_and_prune_follow_containers_that_come_and_go(
        own_daemon: MakeDaemon, nodeprobe: Path) -> None:
    daemon = own_daemon()
    kept, gone, unhooked = Container(), Container(), Container()
    try:
        for container in (kept, gone, unhooked):
            container.create()
            daemon.cli("enable", container.name)
        rows = _status(daemon)
        # Enabled and never started: a row already, before any request.
        assert {rows[c.name]["state"] for c in (kept, gone, unhooked)} == {"stopped"}
        daemon.cli("disable", kept.name)
        daemon.cli("enable", kept.name)  # a new cookie: still one row
        subprocess.run(["lxc-destroy", "-n", gone.name, "-P", gone.lxc_path], check=True)
        config = unhooked.config_file.read_text()
        unhooked.config_file.write_text(config.split("# BEGIN lxc-notify")[0])
        rows = _status(daemon)
        assert rows[kept.name]["state"] == "stopped"
        assert rows[gone.name]["state"] == "destroyed"
        assert rows[unhooked.name]["state"] == "not enabled"
        pruned = daemon.cli("prune").stdout
        assert f"{gone.name}: destroyed: state removed" in pruned
        assert f"{unhooked.name}: not enabled: state removed" in pruned
        rows = _status(daemon)
        assert kept.name in rows and gone.name not in rows and unhooked.name not in rows
        assert daemon.cli("prune").stdout.strip() == "nothing to prune"
    finally:
        for container in (kept, gone, unhooked):
            container.destroy()


def test_fifty_start_stop_cycles_leave_no_thread_or_fd(own_daemon: MakeDaemon,
                                                       own_container: MakeContainer) -> None:
    daemon = own_daemon()
    container = own_container(daemon)
    assert container.probe("mknod", "/tmp/warm", "c", "1", "3") == "ok"
    idle = _threads(daemon) - 1  # all but the connection's
    container.stop()
    _all_disconnected(daemon, container, 1, idle)
    fds = daemon.fd_count()
    for cycle in range(50):
        container.start()
        assert container.probe("mknod", f"/tmp/n{cycle}", "c", "1", "3") == "ok"
        container.stop()
    _all_disconnected(daemon, container, 51, idle)
    # Polled: a file a writer thread has open for a moment is not a leak.
    wait_for(lambda: daemon.fd_count() == fds, f"the daemon back to {fds} fds")
    assert _status(daemon)[container.name]["requests"]["done"] == 51


def test_enable_without_a_daemon_says_so(own_daemon: MakeDaemon) -> None:
    daemon = own_daemon(start=False)
    with Container() as container:
        container.create()
        result = daemon.cli("enable", container.name)
        assert "WARNING: no supervisor listens" in result.stderr
        assert "stays STOPPED" in result.stderr and "lxc-notify service install" in result.stderr


# --- audit log and metrics -------------------------------------------------------------------


def _audit_lines(daemon: Daemon, container: str) -> list[dict[str, object]]:
    lines = []
    for path in sorted(daemon.audit_path.parent.glob("audit.log*")):
        for line in path.read_text().splitlines():
            record = json.loads(line)  # every line whole and valid
            if record.get("container") == container:
                lines.append(record)
    return lines


def test_audit_lines_for_allowed_refused_and_failed_calls(container: Container,
                                                          daemon: Daemon) -> None:
    leaf = uuid.uuid4().hex[:8]
    assert container.probe("mknod", f"/tmp/a-{leaf}", "c", "1", "3") == "ok"
    assert container.probe("mknod", f"/tmp/r-{leaf}", "c", "1", "1") == "EPERM"
    assert container.probe("mknod", f"/no/such/f-{leaf}", "c", "1", "3") == "ENOENT"

    def mine() -> dict[str, dict[str, object]]:
        # A call refused from its notification alone is logged without its path (the
        # caller's memory is not read for it): found by its device, c 1:1.
        found = {}
        for line in _audit_lines(daemon, container.name):
            args = cast(dict[str, object], line["args"])
            if leaf in str(args.get("path")):
                found[str(args["path"])] = line
            elif args == {"dev": "c 1:1", "mode": "0666"}:
                found["c 1:1"] = line
        return found

    wait_for(lambda: len(mine()) == 3, "three audit lines")
    lines = mine()
    allowed, refused, failed = (lines[f"/tmp/a-{leaf}"], lines["c 1:1"],
                                lines[f"/no/such/f-{leaf}"])
    assert allowed["decision"] == "done" and allowed["errno"] is None
    assert allowed["args"]["dev"] == "c 1:3"  # type: ignore[index]
    assert refused["decision"] == "kernel"  # not in the profile: the kernel's own EPERM
    assert failed["decision"] == "errno" and failed["errno"] == "ENOENT"
    for line in (allowed, refused, failed):
        assert line["syscall"] in ("mknod", "mknodat") and isinstance(line["pid"], int)
        assert isinstance(line["latency_us"], int | float) and str(line["time"]).endswith("Z")


def test_the_audit_log_rotates_at_its_size(own_daemon: MakeDaemon,
                                           own_container: MakeContainer) -> None:
    daemon = own_daemon()
    daemon.config_path.write_text(daemon.config_path.read_text().replace(
        "max_bytes = 1048576", "max_bytes = 4096"))
    assert daemon.cli("reload").returncode == 0  # rotation settings apply live
    container = own_container(daemon)
    # 200 allowed mknods in one process: nodeprobe's bench command.
    assert container.probe("bench", "200", "/tmp/rot", "c", "1", "3").startswith(
        "calls 200 ok 200 ")
    def files() -> list[str]:
        return sorted(p.name for p in daemon.audit_path.parent.iterdir())

    # 200 lines of ~200 bytes: rotated many times, the oldest dropped (backups = 2).
    wait_for(lambda: files() == ["audit.log", "audit.log.1", "audit.log.2"], "rotation")
    for path in daemon.audit_path.parent.iterdir():
        assert path.stat().st_size <= 4096
    kept = _audit_lines(daemon, container.name)  # each line whole JSON
    assert 30 <= len(kept) < 200 and all(line["args"] for line in kept)


def test_metrics_file_parses_and_counts_match(own_daemon: MakeDaemon,
                                              own_container: MakeContainer) -> None:
    daemon = own_daemon()
    container = own_container(daemon)
    for n in range(5):
        assert container.probe("mknod", f"/tmp/m{n}", "c", "1", "3") == "ok"
    for n in range(3):
        assert container.probe("mknod", f"/tmp/r{n}", "c", "1", "1") == "EPERM"
    assert container.probe("mknod", "/no/such/dir", "c", "1", "3") == "ENOENT"

    def counts() -> dict[str, float]:
        with contextlib.suppress(FileNotFoundError):
            found: dict[str, float] = {}
            for family in text_string_to_metric_families(daemon.metrics_path.read_text()):
                for sample in family.samples:
                    if (sample.name == "lxc_notify_requests_total"
                            and sample.labels.get("container") == container.name):
                        outcome = sample.labels["outcome"]
                        found[outcome] = found.get(outcome, 0) + sample.value
            return found
        return {}

    wait_for(lambda: counts() == {"done": 5, "kernel": 3, "errno": 1},
            f"metrics to count the calls (now {counts()})")
    text = daemon.metrics_path.read_text()
    assert "lxc_notify_request_duration_seconds_bucket" in text
    row = _status(daemon)[container.name]
    latency = row["latency_us"]
    assert isinstance(latency, dict) and 0 < latency["p50"] <= latency["p99"]
    status = daemon.cli("status").stdout
    assert container.name in status and "p50/p99 us" in status
