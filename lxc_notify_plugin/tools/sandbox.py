"""Throw-away unprivileged busybox containers, for the demo, the tests and the benchmark.

Each sandbox has a unique name, is created from LXC's busybox template with
no network, and is destroyed on exit from its ``with`` block even when the
body fails, so the machine keeps nothing between runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

SUBID_RANGE = "100000:65536"
_BASE_CONFIG = """\
lxc.net.0.type = empty
lxc.apparmor.profile = unconfined
lxc.idmap = u 0 100000 65536
lxc.idmap = g 0 100000 65536
"""


class SandboxError(RuntimeError):
    pass


def ensure_subordinate_ids() -> None:
    """root needs 100000:65536 in /etc/subuid and /etc/subgid for the idmap."""
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        text = path.read_text() if path.exists() else ""
        if f"root:{SUBID_RANGE}" not in text.split():
            with path.open("a") as f:
                f.write(("" if not text or text.endswith("\n") else "\n") + f"root:{SUBID_RANGE}\n")


def _run(argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


class Sandbox:
    def __init__(self, prefix: str = "lxcnotify", lxc_path: str | None = None) -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.lxc_path = lxc_path or "/var/lib/lxc"
        self._created = False

    def _lxc(self, tool: str, *args: str) -> list[str]:
        return [tool, "-n", self.name, "-P", self.lxc_path, *args]

    @property
    def rootfs(self) -> Path:
        return Path(self.lxc_path) / self.name / "rootfs"

    @property
    def config_file(self) -> Path:
        return Path(self.lxc_path) / self.name / "config"

    def create(self, extra_config: str = "") -> Sandbox:
        ensure_subordinate_ids()
        with tempfile.NamedTemporaryFile("w", suffix=".conf") as conf:
            conf.write(_BASE_CONFIG + extra_config)
            conf.flush()
            result = _run(self._lxc("lxc-create", "-t", "busybox", "-f", conf.name))
        self._created = True
        if result.returncode != 0:
            raise SandboxError(f"lxc-create {self.name} failed: {result.stderr.strip()}")
        return self

    def install(self, host_file: str | Path, container_path: str, mode: int = 0o755) -> None:
        target = self.rootfs / container_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(host_file, target)
        os.chmod(target, mode)

    def start(self, config: Mapping[str, str] | None = None) -> None:
        args: list[str] = []
        for key, value in (config or {}).items():
            args += ["-s", f"{key}={value}"]
        log = Path(self.lxc_path) / self.name / "start.log"
        result = _run(self._lxc("lxc-start", "-l", "INFO", "-o", str(log), *args))
        if result.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise SandboxError(f"lxc-start {self.name} failed: {result.stderr.strip()}\n{tail}")
        if _run(self._lxc("lxc-wait", "-s", "RUNNING", "-t", "10")).returncode != 0:
            raise SandboxError(f"{self.name} did not reach RUNNING")

    def stop(self) -> None:
        _run(self._lxc("lxc-stop", "-k"))

    def init_pid(self) -> int:
        out = _run(self._lxc("lxc-info", "-pH")).stdout.strip()
        if not out.isdigit():
            raise SandboxError(f"{self.name} is not running")
        return int(out)

    def attach(self, *argv: str, uid: int = 0, gid: int = 0, cwd: str | None = None,
               timeout: float = 120) -> str:
        """Run argv in the container and return its stdout.

        lxc-attach sometimes (about 1 in 100 under load, see NOTES.md) exits 1,
        with or without a message, having run nothing or run it unsupervised
        (trapped calls then fail ENOSYS, changing nothing): status 1 is retried,
        so commands given here must be safe to repeat.  Any other failure raises.
        """
        command = list(argv)
        if cwd is not None:
            command = ["/bin/sh", "-c", 'cd "$0" && exec "$@"', cwd, *command]
        for _ in range(3):
            result = _run(self._lxc("lxc-attach", "--clear-env", "-u", str(uid), "-g", str(gid),
                                    "--", *command), timeout=timeout)
            if result.returncode == 0:
                return result.stdout
            if result.returncode == 1:
                print(f"sandbox: lxc-attach to {self.name} exited 1 "
                      f"({result.stderr.strip() or 'no message'}); retrying", file=sys.stderr)
                time.sleep(0.2)
                continue
            raise SandboxError(f"{' '.join(command)} in {self.name} exited "
                               f"{result.returncode}: {result.stderr.strip()}")
        raise SandboxError(f"lxc-attach to {self.name} kept failing: {result.stderr.strip()}")

    def destroy(self) -> None:
        if self._created:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop()  # lxc-destroy -f kills it anyway if this hangs
            _run(self._lxc("lxc-destroy", "-f"), timeout=120)
            self._created = False

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.destroy()
