"""The running daemon, as `lxc-notify` commands reach it: is it there, start it, ask it.

A command finds the daemon by its socket and pid file, starts one in the
background when ``start`` needs it, and asks it for its status (SIGUSR1) or a
reload (SIGHUP), reading the answer it writes beside its socket
(``service/status.py``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ContainerError
from ..paths import Paths

log = logging.getLogger(__name__)


def daemon_running(paths: Paths) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        probe.connect(str(paths.socket))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def ensure_daemon(paths: Paths, log_file: Path, timeout: float = 10.0,
                  config_file: str | None = None) -> None:
    """Start ``lxc-notify daemon`` in the background unless one already answers;
    it reads the same daemon.toml as this command."""
    if daemon_running(paths):
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        subprocess.Popen(
            [sys.executable, "-m", "lxc_notify_plugin", *global_args(paths),
             *(["--config", config_file] if config_file else []), "daemon"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            close_fds=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon_running(paths):
            return
        time.sleep(0.05)
    raise ContainerError("-", f"the supervisor did not start; see {log_file}")


def global_args(paths: Paths) -> list[str]:
    args = ["--socket", str(paths.socket), "--state-dir", str(paths.state_dir),
            "--profile-dir", str(paths.admin_profiles), "--agent-socket", str(paths.agent_socket),
            "--udev-control", str(paths.udev_control)]
    if paths.lxc_path:
        args += ["--lxc-path", paths.lxc_path]
    return args


def _our_daemon(pid: int) -> bool:
    """Only our own daemon: a stale pid file may name a reused pid."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    program = any(arg == b"lxc_notify_plugin" or arg.endswith(b"/lxc-notify") for arg in argv)
    return program and b"daemon" in argv


def daemon_pid(paths: Paths) -> int | None:
    """The running daemon's pid, if the pid file names our daemon and it answers."""
    try:
        pid = int(paths.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _our_daemon(pid) and daemon_running(paths) else None


def _ask_daemon(paths: Paths, signum: int, answer: Path,
                timeout: float = 10.0) -> dict[str, Any] | None:
    """Signal the running daemon and wait for its answer in ``answer``: JSON
    stamped (CLOCK_MONOTONIC, as here) when its work began, so an answer from
    before the signal is never taken for this one.  None if none came."""
    pid = daemon_pid(paths)
    if pid is None:
        return None
    sent = time.monotonic_ns()
    os.kill(pid, signum)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body: dict[str, Any] = json.loads(answer.read_text())
            if body.get("stamp_ns", 0) >= sent:
                return body
        except (OSError, ValueError):
            pass  # not written yet, or being replaced
        time.sleep(0.02)
    log.warning("the supervisor (pid %d) did not answer in %.0f s", pid, timeout)
    return None


def daemon_status(paths: Paths) -> dict[str, Any] | None:
    """The running daemon's status (SIGUSR1); None if none answers."""
    return _ask_daemon(paths, signal.SIGUSR1, paths.status_file)


def signal_reload(paths: Paths) -> list[str] | None:
    """Make the running daemon reload (SIGHUP) and wait until a reload that began
    after the signal has finished, so the next request sees the new policy.
    None if no daemon confirmed; otherwise the containers whose new policy was
    refused (they keep the old)."""
    body = _ask_daemon(paths, signal.SIGHUP, paths.reload_file)
    return None if body is None else [str(name) for name in body.get("refused", [])]
