"""Every notification gets an answer; nothing kills the supervisor or leaks from it."""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
import uuid
from pathlib import Path

from lxc_notify_plugin import kernel
from lxc_notify_plugin.transport import lxc as protocol
from tests.lxc.conftest import (
    Container,
    Daemon,
    queued_to,
    supervised_container,
    wait_for,
    waiting_caller,
)


def _exchange(daemon: Daemon, datagram: bytes, fds: list[int]) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(10)
        sock.connect(str(daemon.paths.socket))
        socket.send_fds(sock, [datagram], fds)
        return sock.recv(4096)


def _lxc_like_fds() -> list[int]:
    return [os.open("/proc/self", os.O_RDONLY | os.O_DIRECTORY),
            os.open("/proc/self/mem", os.O_RDONLY), os.open("/dev/null", os.O_RDONLY)]


def test_garbage_and_unknown_cookie_are_refused(container: Container, daemon: Daemon) -> None:
    sizes = kernel.notif_sizes()
    fds = _lxc_like_fds()
    try:
        assert _exchange(daemon, b"garbage", []) == protocol.UNPARSEABLE_REPLY
        assert _exchange(daemon, b"\xff" * 200, fds) == protocol.UNPARSEABLE_REPLY
        unknown = protocol.build(42, os.getpid(), 133, kernel.AUDIT_ARCH_X86_64,
                                 (0, 0o20666, os.makedev(1, 3)), init_pid=os.getpid(),
                                 cookie=uuid.uuid4().hex.encode(), sizes=sizes)
        reply = _exchange(daemon, unknown, fds)
        assert protocol.unpack_reply(reply) == (42, 0, -errno.ENOSYS, 0)
        wrong_sizes = bytearray(unknown)
        wrong_sizes[16] += 8  # seccomp_notif size no longer the kernel's
        assert _exchange(daemon, bytes(wrong_sizes), fds) == protocol.UNPARSEABLE_REPLY
        assert _exchange(daemon, unknown, fds[:2]) == protocol.UNPARSEABLE_REPLY  # 2 fds
    finally:
        for fd in fds:
            os.close(fd)
    # The real container is still served.
    path = f"/tmp/after-garbage-{uuid.uuid4().hex[:6]}"
    assert container.probe("mknod", path, "c", "1", "3") == "ok"
    assert "malformed datagram refused" in daemon.log()
    assert "unknown cookie refused" in daemon.log()


def test_caller_killed_mid_request_leaves_the_daemon_healthy(container: Container,
                                                             daemon: Daemon) -> None:
    for _ in range(5):
        marker = f"/tmp/forever-{uuid.uuid4().hex[:6]}"
        with container.background("forever", marker):
            # Killed while it waits in a trapped mknod for the daemon's answer.
            os.kill(waiting_caller("/bin/nodeprobe", "forever", marker), signal.SIGKILL)
    assert daemon.alive()
    assert container.probe("mknod", f"/tmp/alive-{uuid.uuid4().hex[:6]}", "c", "1", "3") == "ok"


def _dead_caller_lines(daemon: Daemon) -> int:
    log = daemon.log()
    return log.count("left mknod") + log.count("-> ESRCH")


def test_request_whose_caller_died_while_queued_is_answered(container: Container,
                                                           daemon: Daemon) -> None:
    """Deterministic version: the caller dies while its datagram waits for us."""
    marker = f"/tmp/queued-{uuid.uuid4().hex[:6]}"
    before = _dead_caller_lines(daemon)
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        with container.background("once", marker):
            caller = waiting_caller("/bin/nodeprobe", "once", marker)
            wait_for(lambda: queued_to(daemon.pid), "its datagram in the stopped daemon's socket")
            os.kill(caller, signal.SIGKILL)
            os.kill(daemon.pid, signal.SIGCONT)
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    wait_for(lambda: _dead_caller_lines(daemon) > before, "the dead caller's request handled")
    assert daemon.alive()
    assert container.probe("stat", marker) == "ENOENT"
    assert container.probe("mknod", marker, "c", "1", "3") == "ok"


def stable_fd_count(daemon: Daemon) -> int:
    """The daemon's fd count once two readings 0.2 s apart agree (at most 10 s)."""
    count = daemon.fd_count()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.2)
        again = daemon.fd_count()
        if again == count:
            return count
        count = again
    raise AssertionError("the daemon's fd count never settled")


def test_no_fd_leak_after_a_thousand_requests(container: Container, daemon: Daemon) -> None:
    # Warm up: what the daemon opens once and keeps (the thread's status cache,
    # the private tmpfs for usable nodes) is not a leak.
    container.probe("bench", "50", "/tmp/warm", "c", "1", "3")
    assert container.probe("mknod", f"/dev/warm-{uuid.uuid4().hex[:6]}", "c", "1", "3") == "ok"
    before = stable_fd_count(daemon)
    assert container.probe("bench", "500", "/tmp/leak", "c", "1", "3").startswith(
        "calls 500 ok 500")
    assert container.probe("bench", "500", "/tmp/leak", "c", "4", "1").startswith(
        "calls 500 ok 0")
    # Nodes in /dev are bind mounts (cannot be unlinked): make 20 distinct ones.
    made = container.sh("for i in $(seq 20); do /bin/nodeprobe mknod /dev/leak-$i c 1 3; done")
    assert made.split() == ["ok"] * 20
    # A leak stays; a connection LXC re-opens (it does after a failed send, as
    # in the tests above) comes and goes: wait for the count to settle.
    deadline = time.monotonic() + 10
    while (after := stable_fd_count(daemon)) != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert after == before


def test_only_root_may_connect(daemon: Daemon) -> None:
    """SO_PEERCRED: a non-root peer is hung up on, even if it can reach the socket."""
    socket_dir = daemon.paths.socket.parent
    os.chmod(socket_dir, 0o755)
    os.chmod(daemon.paths.socket, 0o666)
    # The test's tmp directories are 0700: the child reaches the socket through
    # an fd of its directory instead of walking down from /.
    dir_fd = os.open(socket_dir, os.O_PATH)
    try:
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child only connects and reports; it always _exits
            code = 1
            try:
                os.close(reader)
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
                    sock.settimeout(10)
                    sock.connect(f"/proc/self/fd/{dir_fd}/{daemon.paths.socket.name}")
                    try:
                        sock.send(b"x" * 136)
                        reply = sock.recv(4096)
                    except (BrokenPipeError, ConnectionResetError):
                        reply = b""  # hung up on before or after the send
                    os.write(writer, b"eof" if reply == b"" else b"answered")
                code = 0
            except BaseException as err:  # report why, for the assertion below
                os.write(writer, repr(err).encode())
            finally:
                os._exit(code)
        os.close(writer)
        with os.fdopen(reader, "rb") as result:
            assert result.read() == b"eof"
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        os.close(dir_fd)
        os.chmod(socket_dir, 0o700)
        os.chmod(daemon.paths.socket, 0o600)
    assert "only root's LXC may connect" in daemon.log()


def test_bad_state_files_block_nothing(daemon: Daemon, nodeprobe: Path) -> None:
    """A non-UTF-8 record and a FIFO named like one: logged, skipped, nothing hangs."""
    state = daemon.paths.containers_dir
    state.mkdir(parents=True, exist_ok=True)
    garbage, fifo = state / "zz-garbage.json", state / "zz-fifo.json"
    garbage.write_bytes(b"\xff\xfe{not json")
    os.mkfifo(fifo)
    try:
        assert daemon.cli("reload").stdout.strip() == "reloaded"
        box = supervised_container(daemon, nodeprobe)  # a new cookie: a full rescan
        try:
            assert box.probe("mknod", "/tmp/null", "c", "1", "3") == "ok"
        finally:
            box.destroy()
        assert daemon.alive()
        assert f"{garbage}: not UTF-8 text" in daemon.log()
        assert f"{fifo}: unreadable" in daemon.log()
    finally:
        garbage.unlink()
        fifo.unlink()


def test_container_stopping_mid_request_is_normal(daemon: Daemon, nodeprobe: Path) -> None:
    box = supervised_container(daemon, nodeprobe)
    try:
        with box.background("forever", "/tmp/busy"):
            waiting_caller("/bin/nodeprobe", "forever", "/tmp/busy")  # mid-request
            box.stop()  # lxc-stop -k: the monitor and every caller go at once
    finally:
        box.destroy()
    wait_for(lambda: f"container {box.name}: disconnected" in daemon.log(),
             "the connection to end")
    assert daemon.alive()
    tail = daemon.log().split(f"container {box.name}: connected", 1)[1]
    assert " ERROR " not in tail and "Traceback" not in tail, tail[-4000:]


def test_status_shows_containers_and_counts(container: Container, daemon: Daemon) -> None:
    assert container.probe("mknod", f"/tmp/status-{uuid.uuid4().hex[:6]}", "c", "1", "3") == "ok"
    out = daemon.cli("status").stdout
    assert f"supervisor pid {daemon.pid}" in out and "udev followed" in out
    row = next(line for line in out.splitlines() if line.startswith(container.name))
    assert row.split()[1:4] == ["running", "default", "mknod"]
    assert "done " in row
