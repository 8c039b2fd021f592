"""States a hostile or broken peer could send the agent: each refused, nothing kept.

Only root can reach the socket, so these are bugs more than attacks; the
daemon must still survive each one with a log line, and close every fd it
received (checked by the daemon's fd and thread counts)."""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.test_seccomp_notify import child_result, notifying_child
from tests.lxc.conftest import Daemon

from .conftest import wait_until


def _state(fds: list[str], pid: object = 1, **extra: object) -> bytes:
    return json.dumps({"ociVersion": "1.0.2", "fds": fds, "pid": pid, "metadata": "",
                       "state": {"ociVersion": "1.0.2", "id": "hostile", "status": "running",
                                 "pid": pid, "bundle": "/nowhere"}, **extra}).encode()


def _pipe() -> list[int]:
    r, w = os.pipe()
    os.close(w)
    return [r]


def _devnull(n: int) -> list[int]:
    return [os.open("/dev/null", os.O_RDONLY) for _ in range(n)]


_ONE = ["seccompFd"]
CASES = {  # name: (bytes sent, fds attached, what the refusal says)
    "bad JSON": (b'{"ociVersion": "1.0.2", "fds": [', list, "not JSON"),
    "not an object": (b'["seccompFd"]', list, "not a JSON object"),
    "no seccompFd": (_state([]), list, "no seccompFd among"),
    "seccompFd named, none attached": (_state(_ONE), list, "1 fds named, 0 attached"),
    "a pipe as seccompFd": (_state(_ONE), _pipe, "is not a seccomp listener"),
    "/dev/null as seccompFd": (_state(_ONE), lambda: _devnull(1), "is not a seccomp listener"),
    "more fds than named": (_state(_ONE), lambda: _devnull(3), "1 fds named, 3 attached"),
    "too many fds": (_state(_ONE), lambda: _devnull(40), "more than 16 fds attached"),
    "no state": (json.dumps({"fds": _ONE, "pid": 1}).encode(), lambda: _devnull(1),
                 "no state object"),
    "pid not a number": (_state(_ONE, pid="1"), lambda: _devnull(1), "state.pid is missing"),
    "huge": (_state(_ONE, padding=" " * 400_000), lambda: _devnull(1), "state longer than"),
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000, list, "not JSON"),
}


@pytest.fixture
def baseline(daemon: Daemon) -> Iterator[tuple[int, int]]:
    counts = (daemon.fd_count(), _threads(daemon))
    yield counts
    assert daemon.alive(), daemon.log()[-3000:]


def _threads(daemon: Daemon) -> int:
    return len(os.listdir(f"/proc/{daemon.pid}/task"))


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_state_is_refused_and_leaves_nothing(daemon: Daemon, baseline: tuple[int, int],
                                                     case: str) -> None:
    payload, make_fds, reason = CASES[case]
    refused = daemon.log().count("state refused")
    fds: list[int] = make_fds()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(daemon.paths.agent_socket))
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            conn.sendmsg([payload[:65536]], ancillary if fds else [])
            with contextlib.suppress(BrokenPipeError):  # refused before the end: as wanted
                conn.sendall(payload[65536:])
    finally:
        for fd in fds:
            os.close(fd)
    wait_until(lambda: daemon.log().count("state refused") == refused + 1,
               f"the daemon refusing {case}")
    last = [line for line in daemon.log().splitlines() if "state refused" in line][-1]
    assert reason in last, last
    wait_until(lambda: (daemon.fd_count(), _threads(daemon)) == baseline,
               f"fds and threads back to {baseline} after {case}")


def test_a_state_over_several_writes_is_served(daemon: Daemon, baseline: tuple[int, int],
                                               tmp_path: Path) -> None:
    """crun's form (ociVersion 0.2.0, pretty-printed), one byte-run at a time,
    with the listener of a real filter: served, answered, released."""
    node = tmp_path / "null"

    def make_node() -> int:
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        return 0

    with notifying_child(make_node) as (pid, listener, channel):
        doc = json.dumps({"ociVersion": "0.2.0", "fds": ["seccompFd"], "pid": pid,
                          "metadata": "profile=default",
                          "state": {"ociVersion": "0.2.0", "id": f"split-{pid}",
                                    "status": "running", "pid": pid, "bundle": "/x"}},
                         indent=4).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(daemon.paths.agent_socket))
            socket.send_fds(conn, [doc[:10]], [listener])
            for start in range(10, len(doc), 40):
                conn.sendall(doc[start:start + 40])
            # runc keeps its end open: the end of the JSON must be enough.
            wait_until(lambda: f"oci:split-{pid}: listener of pid" in daemon.log(),
                       "the listener served")
        assert child_result(channel) == (0, 0)
    assert stat.S_ISCHR(node.stat().st_mode) and node.stat().st_rdev == os.makedev(1, 3)
    wait_until(lambda: f"oci:split-{pid}: listener of pid {pid} released" in daemon.log(),
               "the listener released")
    wait_until(lambda: (daemon.fd_count(), _threads(daemon)) == baseline,
               f"fds and threads back to {baseline}")


def test_a_peer_that_goes_silent_is_dropped_at_the_deadline(
        daemon: Daemon, baseline: tuple[int, int]) -> None:
    refused = daemon.log().count("state refused")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(daemon.paths.agent_socket))
        conn.sendall(_state(["seccompFd"])[:20])
        wait_until(lambda: daemon.log().count("state refused") == refused + 1,
                   "the handshake deadline", timeout=15)
        assert conn.recv(1) == b""  # the daemon closed it
    assert "no complete state within" in daemon.log()
    wait_until(lambda: (daemon.fd_count(), _threads(daemon)) == baseline,
               f"fds and threads back to {baseline}")
