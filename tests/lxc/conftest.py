"""Real unprivileged LXC containers and a real supervisor daemon.

The daemon runs as a subprocess with paths under a temporary directory, so
tests never touch /run/lxc-notify or /var/lib/lxc-notify.  Containers get
unique names and are destroyed even when tests fail.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from lxc_notify_plugin.admin.daemon import daemon_running
from lxc_notify_plugin.kernel.arch import native_syscall_number
from lxc_notify_plugin.paths import Paths
from lxc_notify_plugin.tools.sandbox import Sandbox, lxc_attach_error
from tests.conftest import require, require_root, require_tools

UDEV_CONTROL = Paths().udev_control
# LXC's device rules: the v1 devices controller where the host has one (this
# host), else cgroup v2, where LXC turns the same rules into a device program.
PURE_V2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
DEVICES = "lxc.cgroup2.devices" if PURE_V2 else "lxc.cgroup.devices"
UNDER_UNIT = "LXC_NOTIFY_TEST_UNDER_UNIT"  # set: daemons start under the unit's restrictions


# Put the given fds at 3, 4, ..., set LISTEN_PID to this pid, exec the rest.
_ACTIVATE = """
import fcntl, os, sys
split = sys.argv.index("--")
given = [int(fd) for fd in sys.argv[1:split]]
moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in given]  # out of the way first
for fd in given:
    os.close(fd)
for target, fd in enumerate(moved, start=3):
    os.dup2(fd, target)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[split + 1], sys.argv[split + 1:])
"""


def unit_settings() -> dict[str, str]:
    """The [Service] settings of the unit as `lxc-notify service install` writes it."""
    from lxc_notify_plugin.service import unit

    settings = {}
    for line in unit.render().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key] = value
    return settings


def unit_capability_mask() -> int:
    from lxc_notify_plugin import kernel

    return sum(1 << getattr(kernel, name)
               for name in unit_settings()["CapabilityBoundingSet"].split())


def unit_wrapper() -> list[str]:
    """The unit's restrictions as a command prefix, for machines where systemd is
    not init: the same bounding set (setpriv) and umask; no no_new_privs (the
    FUSE program must get the container's)."""
    settings = unit_settings()
    caps = ",".join("+" + name.removeprefix("CAP_").lower()
                    for name in settings["CapabilityBoundingSet"].split())
    assert "NoNewPrivileges" not in settings
    return ["sh", "-c", f'umask {settings["UMask"]} && exec "$@"', "unit",
            "setpriv", f"--bounding-set=-all,{caps}", "--"]
HELPER_SOURCE = Path(__file__).resolve().parent.parent / "helpers" / "nodeprobe.c"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/lxc/" in str(item.fspath):
            item.add_marker(pytest.mark.lxc)


@pytest.fixture(scope="session")
def lxc_ready() -> None:
    require_root()
    require_tools("lxc-create", "lxc-start", "lxc-attach", "lxc-destroy", "gcc")
    require(Path("/usr/share/lxc/templates/lxc-busybox").exists(), "LXC's busybox template")
    require(shutil.which("busybox") is not None, "busybox (busybox-static)")


MOUNTPROBE_SOURCE = Path(__file__).resolve().parent.parent / "helpers" / "mountprobe.c"


@pytest.fixture(scope="session")
def mountprobe(lxc_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/helpers/mountprobe.c, static (the busybox containers have no libc)."""
    binary = tmp_path_factory.mktemp("helpers") / "mountprobe"
    subprocess.run(["gcc", "-O2", "-static", "-Wall", "-Werror", "-o", str(binary),
                    str(MOUNTPROBE_SOURCE)], check=True)
    return binary


@pytest.fixture(scope="session")
def nodeprobe(lxc_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("helpers") / "nodeprobe"
    subprocess.run(["gcc", "-O2", "-static", "-no-pie", "-Wall", "-Werror", "-o", str(binary),
                    str(HELPER_SOURCE)], check=True)
    return binary


# --- waiting for the event itself, never for a guess at its time ----------------------------

T = TypeVar("T")


def wait_for(check: Callable[[], T], what: str, timeout: float = 10) -> T:
    """``check()``'s first true value; if none comes within ``timeout``, an
    AssertionError that names ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, (f"timed out after {timeout:g} s waiting for "
                                             f"{what} (last seen: {value!r})")
        time.sleep(0.01)
    return value


def pid_of(*argv: str) -> int | None:
    """The host pid of the process whose command line is exactly ``argv``, if one runs."""
    wanted = ("\0".join(argv) + "\0").encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes() == wanted:
                    return int(entry)
            except OSError:
                continue
    return None


MKNOD = ("mknod", "mknodat")  # what nodeprobe's mknod(3) calls, whichever libc maps it to


def blocked_in(pid: int, syscalls: tuple[str, ...] = MKNOD) -> bool:
    """Whether task ``pid`` sleeps in one of ``syscalls``: /proc/PID/syscall names the call
    a task is blocked in, and a trapped call waits there for its answer."""
    try:
        first = Path(f"/proc/{pid}/syscall").read_text().split(maxsplit=1)[0]
    except (OSError, IndexError):
        return False
    numbers = {native_syscall_number(name) for name in syscalls}
    return first.isdigit() and int(first) in numbers


def tasks_like(pid: int) -> list[int]:
    """The host pids of every process in ``pid``'s pid namespace (a container's, from
    its init's), ``pid`` included."""
    try:
        ns = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    found.append(int(entry))
    return found


def waiting_caller(*argv: str, syscalls: tuple[str, ...] = MKNOD) -> int:
    """The pid of the process ``argv`` once it waits in a trapped call for its answer."""
    what = " ".join(argv)
    found = wait_for(lambda: pid_of(*argv), f"{what} to run")
    assert found is not None
    pid = found
    wait_for(lambda: blocked_in(pid, syscalls), f"{what} (pid {pid}) to wait in "
             f"{'/'.join(syscalls)} (its /proc/PID/syscall)")
    return pid


# sock_diag (linux/sock_diag.h, linux/unix_diag.h): what `ss -x` reads.
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_UNIX_DIAG_REQ = struct.Struct("=BBHIIIII")  # family, protocol, pad, states, ino, show, cookie
_UNIX_DIAG_MSG = struct.Struct("=BBBBIII")  # family, type, state, pad, ino, cookie
_RTATTR = struct.Struct("=HH")
_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, _NLM_F_DUMP = 4, 20, 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE, _UDIAG_SHOW_RQLEN, _UNIX_DIAG_RQLEN = 2, 3, 0x10, 4
_TCP_ESTABLISHED = 1


def _unix_receive_queues() -> dict[int, tuple[int, int, int]]:
    """inode -> (type, state, bytes waiting to be read) of every unix socket."""
    found: dict[int, tuple[int, int, int]] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as diag:
        request = _UNIX_DIAG_REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, _UDIAG_SHOW_RQLEN,
                                      0xFFFFFFFF, 0xFFFFFFFF)
        diag.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(request), _SOCK_DIAG_BY_FAMILY,
                                 _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + request)
        while True:
            data = diag.recv(1 << 16)
            at = 0
            while at < len(data):
                length, kind = _NLMSGHDR.unpack_from(data, at)[:2]
                if kind == _NLMSG_DONE:
                    return found
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, at + _NLMSGHDR.size)[0]
                    raise OSError(code, f"sock_diag: {os.strerror(code)}")
                body = at + _NLMSGHDR.size
                _, kind_of_socket, state, _, inode, _, _ = _UNIX_DIAG_MSG.unpack_from(data, body)
                attr = body + _UNIX_DIAG_MSG.size
                while attr + _RTATTR.size <= at + length:
                    attr_len, attr_type = _RTATTR.unpack_from(data, attr)
                    if attr_type == _UNIX_DIAG_RQLEN:
                        queued = struct.unpack_from("=I", data, attr + _RTATTR.size)[0]
                        found[inode] = (kind_of_socket, state, queued)
                    attr += max((attr_len + 3) & ~3, _RTATTR.size)
                at += (length + 3) & ~3


def queued_to(pid: int) -> int:
    """Bytes waiting, unread, in the connected SOCK_SEQPACKET sockets ``pid`` holds: a
    datagram a monitor sent to a daemon that has not received it yet."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(int(link[len("socket:["):-1]))
    return sum(queued for inode, (kind, state, queued) in _unix_receive_queues().items()
               if inode in inodes and kind == socket.SOCK_SEQPACKET
               and state == _TCP_ESTABLISHED)


class Daemon:
    """``lxc-notify daemon`` in a subprocess, logging every decision."""

    def __init__(self, root: Path, udev_control: Path = UDEV_CONTROL) -> None:
        # The socket lives in a short directory of its own: a long TMPDIR must
        # not push it past the 108 bytes a unix socket path may have.
        self.run_dir = Path(tempfile.mkdtemp(prefix="lxcn-", dir="/run"))
        self.paths = Paths(socket=self.run_dir / "seccomp.sock", state_dir=root / "state",
                           admin_profiles=root / "profiles", udev_control=udev_control)
        self.log_path = root / "daemon.log"
        self.audit_path = root / "audit" / "audit.log"
        self.metrics_path = root / "metrics" / "lxc-notify.prom"
        self.config_path = root / "daemon.toml"
        # Everything the daemon writes stays under root: nothing in /var/log.
        self.config_path.write_text(
            f'[audit]\npath = "{self.audit_path}"\nmax_bytes = 1048576\nbackups = 2\n'
            f'[metrics]\npath = "{self.metrics_path}"\ninterval = 2\n')
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lxc_notify_plugin", *self.global_args(),
                               *args], capture_output=True, text=True, check=check)

    def global_args(self) -> list[str]:
        return ["--config", str(self.config_path),
                "--socket", str(self.paths.socket), "--state-dir", str(self.paths.state_dir),
                "--profile-dir", str(self.paths.admin_profiles),
                "--udev-control", str(self.paths.udev_control)]

    def hold_sockets(self) -> list[socket.socket]:
        """The daemon's two sockets, bound and listening here, as lxc-notify.socket
        has systemd hold them; pass them to start()."""
        held = []
        for path, kind in ((self.paths.socket, socket.SOCK_SEQPACKET),
                           (self.paths.agent_socket, socket.SOCK_STREAM)):
            sock = socket.socket(socket.AF_UNIX, kind)
            sock.bind(str(path))
            os.chmod(path, 0o600)
            sock.listen(64)
            held.append(sock)
        return held

    def start(self, held: list[socket.socket] | None = None,
              stored: dict[str, int] | None = None, env: dict[str, str] | None = None) -> None:
        """Start the daemon; ``held`` sockets and ``stored`` fds (by name) are passed
        as systemd passes a socket unit's sockets and its fd store."""
        # Under test_service.py's bounded run, every daemon starts as the systemd
        # unit starts it: its capability bounding set and umask (no no_new_privs).
        wrapper = unit_wrapper() if os.environ.get(UNDER_UNIT) else []
        activated: list[str] = []
        environment = {**os.environ, **(env or {})}
        fds = [sock.fileno() for sock in held or ()] + list((stored or {}).values())
        if fds:
            # As systemd passes them (sd_listen_fds): fds 3, 4, ... in the process
            # that LISTEN_PID names, named in LISTEN_FDNAMES; exec keeps the pid.
            activated = [sys.executable, "-c", _ACTIVATE, *map(str, fds), "--"]
            environment["LISTEN_FDS"] = str(len(fds))
            environment["LISTEN_FDNAMES"] = ":".join(
                ["socket"] * len(held or ()) + list((stored or {}).keys()))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*wrapper, *activated, sys.executable, "-m", "lxc_notify_plugin",
                 *self.global_args(), "daemon", "-v"], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, env=environment, pass_fds=fds)
        # A hang guard, not a timing: a daemon that exits fails at once (below).  In
        # the Debian 12 guest under TCG one took longer than 10 s to reach its first
        # log line (seen once, the OCI tier's first start).
        deadline = time.monotonic() + 60
        # Held sockets answer before the daemon runs: its pid file says it does.
        while not (self._pid_file_is_ours() if held else daemon_running(self.paths)):
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, "daemon did not start:\n" + self.log()
            time.sleep(0.05)
        if wrapper:
            status = Path(f"/proc/{self.pid}/status").read_text()
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            assert int(fields["CapBnd"], 16) == unit_capability_mask(), fields["CapBnd"]
            assert fields["NoNewPrivs"].strip() == "0"  # the unit sets none: see its comment

    def _pid_file_is_ours(self) -> bool:
        try:
            return self.paths.pid_file.read_text().strip() == str(self.pid)
        except OSError:
            return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> int:
        assert self.process is not None
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(20)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
                    raise AssertionError("daemon ignored SIGTERM:\n" + self.log()) from None
        finally:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return self.process.returncode


@pytest.fixture(scope="session")
def udev_ready() -> None:
    require(UDEV_CONTROL.exists(), "systemd-udevd running (scripts/setup.sh starts it)")


@pytest.fixture(scope="session")
def daemon(lxc_ready: None, udev_ready: None,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("daemon"))
    daemon.start()
    try:
        yield daemon
    finally:
        rc = daemon.stop()
    log = daemon.log()
    assert rc == 0, f"daemon exited {rc}:\n{log[-5000:]}"
    assert "Traceback" not in log, log[-5000:]


class Container(Sandbox):
    """A sandbox with nodeprobe installed; ``probe(...)`` returns its one-line answer."""

    daemon: Daemon | None = None  # the daemon it was enabled with, if any

    def destroy(self) -> None:
        if self.daemon is not None and self._created:
            # Its state would otherwise outlive it in the session daemon.
            self.daemon.cli("disable", self.name, check=False)
        super().destroy()

    @contextlib.contextmanager
    def background(self, *argv: str) -> Iterator[subprocess.Popen[bytes]]:
        """Run a nodeprobe command that prints "started" first; yield once it has.

        lxc-attach sometimes exits 1 before running anything (NOTES.md): a run
        that printed nothing never reached nodeprobe's first line, so it is
        retried.  One that printed something else fails at once, and so does one
        during which lxc-attach logged an error of its own (the process may
        then run unsupervised: see classify_attach in tools/sandbox.py).  The
        process is killed on the way out, whatever happened.
        """
        what = f"nodeprobe {' '.join(argv)} in {self.name}"
        with contextlib.ExitStack() as files:
            def logged() -> str:
                stderr.seek(0)
                return stderr.read().decode(errors="replace")

            for attempt in range(1, 4):
                # A file, not a pipe: a pipe nobody reads could block the process.
                stderr = files.enter_context(tempfile.TemporaryFile())
                process = subprocess.Popen(
                    ["lxc-attach", "-n", self.name, "-P", self.lxc_path, "--clear-env", "--",
                     "/bin/nodeprobe", *argv],
                    stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL)
                assert process.stdout is not None
                files.callback(process.stdout.close)
                ready, _, _ = select.select([process.stdout], [], [], 30)
                line = process.stdout.readline() if ready else b""
                if line.strip() == b"started":
                    break
                process.kill()
                process.wait()
                if line:
                    # Not read further: the attached process may outlive lxc-attach.
                    raise AssertionError(f"{what} printed {line!r} instead of 'started' "
                                         f"(lxc-attach exited {process.returncode}); "
                                         f"stderr:\n{logged()}")
                if attempt == 3:
                    raise AssertionError(f"{what} never started (lxc-attach exited "
                                         f"{process.returncode}): {logged().strip()}")
                print(f"background: {what} never started (lxc-attach exited "
                      f"{process.returncode}: {logged().strip() or 'no message'}); retrying",
                      file=sys.stderr)
                time.sleep(0.2)
            try:
                yield process
            except BaseException as err:
                if (error := lxc_attach_error(logged())) is not None:
                    err.add_note(f"lxc-attach logged meanwhile: {error}")
                raise
            else:
                if (error := lxc_attach_error(logged())) is not None:
                    raise AssertionError(f"{what} may have run unsupervised: lxc-attach "
                                         f"logged {error}")
            finally:
                process.kill()
                process.wait()

    def probe(self, *args: str, uid: int = 0, gid: int = 0, cwd: str | None = None) -> str:
        # nodeprobe exits 0 or 2, never 1, and a trapped call that fails changes
        # nothing: an unsupervised run of LXC's making may be retried.
        return self.attach("/bin/nodeprobe", *args, uid=uid, gid=gid, cwd=cwd,
                           idempotent_unsupervised=True).strip()

    def sh(self, script: str, uid: int = 0, gid: int = 0) -> str:
        return self.attach("/bin/sh", "-c", script, uid=uid, gid=gid)


def supervised_container(daemon: Daemon, nodeprobe: Path, profile: str = "default",
                         extra_config: str = "") -> Container:
    """A started container with nodeprobe, supervised with ``profile``;
    ``extra_config`` goes after the template's own (a later ``lxc.mount.auto``
    replaces its cgroup part)."""
    container = Container()
    container.daemon = daemon
    try:
        container.create()
        if extra_config:
            with container.config_file.open("a") as config:
                config.write(extra_config)
        container.install(nodeprobe, "/bin/nodeprobe")
        daemon.cli("enable", container.name, "--profile", profile)
        container.start()
    except BaseException:
        container.destroy()
        raise
    return container


def own_cgroup2_mount(box: Container) -> str:
    """Where the container sees its own v2 cgroup: the cgroup2 mount that shows the
    root of its cgroup namespace ("/"; LXC makes it for ``lxc.mount.auto =
    cgroup:mixed:force``: /sys/fs/cgroup/unified on a hybrid host)."""
    mounts = box.sh("cat /proc/self/mountinfo")
    inside = next((line.split()[4] for line in mounts.splitlines()
                   if " - cgroup2 " in line and line.split()[3] == "/"), None)
    require(inside is not None, "LXC mounting cgroup2 in the container (cgroup:mixed:force)")
    assert inside is not None
    return inside


@pytest.fixture(scope="session")
def container(daemon: Daemon, nodeprobe: Path) -> Iterator[Container]:
    container = supervised_container(daemon, nodeprobe)
    try:
        yield container
    finally:
        container.destroy()
