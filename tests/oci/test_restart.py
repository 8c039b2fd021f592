"""An OCI container outlives a restart of the daemon: systemd's fd store keeps its listener.

The daemon holds an OCI container's listener itself; without a keeper, a daemon
that dies takes it along and the kernel answers the container's trapped calls
ENOSYS from then on.  Under the unit (FileDescriptorStoreMax=) each listener is
also handed to systemd (FDSTORE=1) and comes back to the next daemon in
LISTEN_FDS.  systemd is not init here: the test plays its part, the
NOTIFY_SOCKET end that keeps fds and the socket unit that holds the sockets.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lxc.conftest import Daemon, blocked_in, tasks_like, wait_for
from tests.oci.bundle import Bundle

from .conftest import seccomp_profile, wait_until

_FDS_SPACE = socket.CMSG_SPACE(16 * array.array("i").itemsize)


class FakeSystemd:
    """What the daemon tells systemd on $NOTIFY_SOCKET, and the fds it asks it to keep."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.states: list[str] = []
        self.stored: dict[str, int] = {}
        self._lock = threading.Lock()
        self._running = True
        self._thread = threading.Thread(target=self._receive, name="fake-systemd")
        self._thread.start()

    def _receive(self) -> None:
        while self._running:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, _FDS_SPACE)
            except TimeoutError:
                continue
            fds: list[int] = []
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", payload[:len(payload) - len(payload) % 4]))
            fields = dict(line.split("=", 1) for line in data.decode().splitlines()
                          if "=" in line)
            with self._lock:
                if fields.get("FDSTORE") == "1" and len(fds) == 1:
                    self.stored[fields["FDNAME"]] = fds.pop()
                elif fields.get("FDSTOREREMOVE") == "1":
                    if (fd := self.stored.pop(fields.get("FDNAME", ""), None)) is not None:
                        os.close(fd)
                else:
                    self.states.append(data.decode())
            for fd in fds:  # anything else attached is not ours to keep
                os.close(fd)

    def kept(self) -> dict[str, int]:
        with self._lock:
            return dict(self.stored)

    def close(self) -> None:
        self._running = False
        self._thread.join()
        self.sock.close()
        for fd in self.stored.values():
            os.close(fd)


@pytest.fixture
def systemd_like(oci_ready: None, tmp_path: Path) -> Iterator[tuple[Daemon, FakeSystemd,
                                                                   Callable[[], None]]]:
    """A daemon whose sockets and kept fds outlive it, as under lxc-notify.socket."""
    root = tmp_path / "daemon"
    root.mkdir()
    daemon = Daemon(root)
    systemd = FakeSystemd(daemon.run_dir / "notify")
    held = daemon.hold_sockets()
    env = {"NOTIFY_SOCKET": str(systemd.path)}

    def start() -> None:
        daemon.start(held, stored=systemd.kept(), env=env)
        wait_until(lambda: "READY=1" in systemd.states[-1:], "READY=1")

    try:
        yield daemon, systemd, start
    finally:
        with contextlib.suppress(Exception):
            daemon.stop()
        for sock in held:
            sock.close()
        systemd.close()


def test_a_restart_keeps_an_oci_containers_listener(
        systemd_like: tuple[Daemon, FakeSystemd, Callable[[], None]],
        bundles: Callable[..., Bundle]) -> None:
    daemon, systemd, start = systemd_like
    start()
    # The container's init waits for a file from the host, then mknods through its
    # own listener (the one runc handed over at its start), and says how it went.
    script = ("while [ ! -e /tmp/go ]; do sleep 0.05; done; "
              "if mknod /tmp/null c 1 3; then r=ok; else r=failed; fi; echo $r > /tmp/result; "
              "exec sleep 1000")
    bundle = bundles(["sh", "-c", script], seccomp_profile(daemon, "--base", "minimal"))
    bundle.start()
    wait_until(lambda: len(systemd.kept()) == 1, "the init's listener kept by systemd")

    assert daemon.process is not None
    daemon.process.kill()  # no clean stop: what a crash leaves
    daemon.process.wait()
    (bundle.rootfs / "tmp" / "go").touch()
    result = bundle.rootfs / "tmp" / "result"
    # Its mknod waits for a supervisor in the trapped call (no ENOSYS): a task of the
    # container's blocked in it.
    wait_for(lambda: any(blocked_in(pid) for pid in tasks_like(bundle.init_pid())),
             "the container's mknod to wait in the trapped call")
    assert not result.exists()

    start()  # the next daemon, given the sockets and the kept listener
    # The shell creates the file, then writes the line.
    wait_until(lambda: result.exists() and result.read_text().endswith("\n"),
               "the waiting mknod answered", timeout=15)
    assert result.read_text() == "ok\n"
    assert "kept by an earlier daemon" in daemon.log() and "adopted" in daemon.log()
    assert (bundle.rootfs / "tmp" / "null").is_char_device()

    bundle.remove()  # the container is done with its listener: it leaves the store
    wait_until(lambda: not systemd.kept(), "the listener released from the store")
    assert "Traceback" not in daemon.log()
