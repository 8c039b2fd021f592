"""What the benchmarks share: nodeprobe, a private lxc-notify daemon, a host tmpfs.

Imported by the scripts in bench/ (run as ``.venv/bin/python bench/NAME.py``,
so this directory is on ``sys.path``); it puts the repository there too.
Nothing here asserts: benchmarks print numbers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lxc_notify_plugin.admin.daemon import daemon_running, daemon_status  # noqa: E402
from lxc_notify_plugin.paths import Paths  # noqa: E402
from lxc_notify_plugin.tools.sandbox import Sandbox  # noqa: E402

NODEPROBE_SOURCE = REPO / "tests" / "helpers" / "nodeprobe.c"
CONTAINER_ROOT = 100000  # uid and gid of root in the sandboxes' user namespace
BIND_TARGET = "bench"  # where shared_tmpfs() appears inside a container (/bench)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def timed_us(step: Callable[[], object], calls: int) -> list[float]:
    """``calls`` runs of ``step``, each timed alone, in microseconds."""
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        step()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


def build_nodeprobe(directory: Path) -> Path:
    """tests/helpers/nodeprobe.c, static (the busybox containers have no libc)."""
    probe = directory / "nodeprobe"
    subprocess.run(["gcc", "-O2", "-static", "-no-pie", "-o", str(probe), str(NODEPROBE_SOURCE)],
                   check=True)
    return probe


def nodeprobe_bench(box: Sandbox, calls: int, path: str, major: int, minor: int,
                    kind: str = "c", cwd: str | None = None) -> dict[str, int]:
    """``nodeprobe bench``: calls, ok, median_ns, p99_ns (each call timed alone)."""
    out = box.attach("/bin/nodeprobe", "bench", str(calls), path, kind, str(major), str(minor),
                     cwd=cwd)
    fields = out.split()
    return {key: int(value) for key, value in zip(fields[::2], fields[1::2], strict=False)}


def host_mknod_us(directory: Path, calls: int, major: int = 1, minor: int = 3) -> float:
    """The filesystem's own price: the host makes and removes the same node there (p50)."""
    path = directory / "host-node"
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        os.mknod(path, 0o20600, os.makedev(major, minor))
        times.append(time.perf_counter_ns() - start)
        path.unlink()
    return statistics.median(times) / 1000


@contextlib.contextmanager
def shared_tmpfs() -> Iterator[tuple[Path, str]]:
    """A host tmpfs directory owned by the containers' root, and the LXC config line
    that binds it at /bench: nodes made there cost the filesystem ~3 us, so rows
    measure the interception, not ext4.  Removed on exit."""
    shared = Path(tempfile.mkdtemp(prefix="lxc-notify-bench-", dir="/dev/shm"))
    try:
        os.chown(shared, CONTAINER_ROOT, CONTAINER_ROOT)
        yield shared, f"lxc.mount.entry = {shared} {BIND_TARGET} none bind,create=dir 0 0\n"
    finally:
        shutil.rmtree(shared, ignore_errors=True)


class Daemon:
    """``lxc-notify daemon`` in a subprocess, every path under ``root``, so the bench
    never touches /run/lxc-notify or /var/lib/lxc-notify.  A context manager: the
    daemon is stopped on exit, whatever happened."""

    def __init__(self, root: Path, audit: bool = True, repo: Path = REPO) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The checkout whose lxc_notify_plugin runs (another one: a before/after row).
        self.repo = repo
        self.env = {**os.environ, "PYTHONPATH": str(repo)}
        self.paths = Paths(socket=root / "lxc-notify.sock", state_dir=root / "state",
                           admin_profiles=root / "profiles")
        self.log_path = root / "daemon.log"
        # As a service runs it (audit log and metrics on), with its files under root;
        # audit=False turns the audit log off (path "") to measure what it costs.
        self.audit_path = root / "audit.log" if audit else None
        self.config_path = root / "daemon.toml"
        self.config_path.write_text(f'[audit]\npath = "{self.audit_path or ""}"\n'
                                    f'[metrics]\npath = "{root}/metrics.prom"\n')
        self.process: subprocess.Popen[bytes] | None = None

    def global_args(self) -> list[str]:
        return ["--config", str(self.config_path),
                "--socket", str(self.paths.socket), "--state-dir", str(self.paths.state_dir),
                "--profile-dir", str(self.paths.admin_profiles)]

    def cli(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "lxc_notify_plugin", *self.global_args(),
                                 *args], cwd=self.repo, env=self.env, capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise RuntimeError(f"lxc-notify {' '.join(args)} exited {result.returncode}: "
                               f"{result.stderr.strip()}")
        return result.stdout

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lxc_notify_plugin", *self.global_args(), "daemon"],
                cwd=self.repo, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"lxc-notify daemon exited {self.process.returncode}:\n"
                                   + self.log_tail())
            return daemon_running(self.paths)

        try:
            wait_for(up, "lxc-notify daemon")
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text()[-chars:] if self.log_path.exists() else ""

    def enable(self, box: Sandbox, profile: str = "default") -> None:
        """``lxc-notify enable``: the box's next plain lxc-start is supervised."""
        self.cli("enable", box.name, "--profile", profile)

    def status(self) -> dict[str, Any] | None:
        """What ``lxc-notify status`` shows (None if the daemon has no status to give)."""
        try:
            return daemon_status(self.paths)
        except Exception as error:  # the daemon is being refactored: report, don't die
            print(f"bench: lxc-notify status failed: {error!r}", file=sys.stderr)
            return None

    def requests(self, box: Sandbox) -> dict[str, int] | None:
        """The daemon's request counts for one container, by outcome: empty if it does
        not list the container (nothing served yet), None if it gave no status."""
        status = self.status()
        if status is None:
            return None
        for container in status.get("containers", []):
            if container.get("name") == box.name:
                return {str(k): int(v) for k, v in container.get("requests", {}).items()}
        return {}

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def request_delta(before: dict[str, int] | None, after: dict[str, int] | None) -> str:
    """Request counts that grew between two ``Daemon.requests`` answers, as text."""
    if before is None or after is None:
        return "unknown (lxc-notify status did not answer)"
    grown = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    return ", ".join(f"{k} {v}" for k, v in sorted(grown.items())) or "none"
