"""The dispatcher and the listener transport against real notifications, no LXC.

A forked child loads a notify filter for character-device mknodat and makes
calls; a serving thread answers them through ``transport.listener`` and the
real mknod handler.  Between requests the test reads the serving thread's
identity from /proc and checks that nothing of a caller stayed behind that a
daemon step could use: all its capabilities, the host's root, cwd and mount
namespace.  Its fsuid, fsgid, groups and umask are, by design, the last
caller's (caller/thread.py says why), and a request that fails before acting
leaves them as they were.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import socket
import stat
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyseccomp
import pytest

from lxc_notify_plugin import kernel
from lxc_notify_plugin.caller.task import status_field
from lxc_notify_plugin.dispatch import Call, Dispatcher, SupervisedContainer
from lxc_notify_plugin.handlers import Registered, registry
from lxc_notify_plugin.paths import PACKAGE_PROFILES
from lxc_notify_plugin.policy.effective import ContainerPolicy
from lxc_notify_plugin.policy.profile import load_profile
from lxc_notify_plugin.request import Answer
from lxc_notify_plugin.state import ContainerRecord
from lxc_notify_plugin.transport.listener import serve_listener, set_sync_wake_up

_libc = ctypes.CDLL(None, use_errno=True)
_RESULT = struct.Struct("=q")
AT_FDCWD = -100

Step = Callable[[], int]


def _mknodat(path: bytes, dev: int = os.makedev(1, 3), mode: int = 0o666) -> Step:
    def call() -> int:
        result = _libc.mknodat(AT_FDCWD, path, stat.S_IFCHR | mode, dev)
        return 0 if result == 0 else -ctypes.get_errno()
    return call


def _bad_pointer() -> int:
    result = _libc.mknodat(AT_FDCWD, ctypes.c_void_p(8), stat.S_IFCHR | 0o600,
                           os.makedev(1, 3))
    return 0 if result == 0 else -ctypes.get_errno()


_DAC = (1 << kernel.CAP_DAC_OVERRIDE | 1 << kernel.CAP_DAC_READ_SEARCH
        | 1 << kernel.CAP_FOWNER)


def _child(channel: socket.socket, steps: list[tuple[int, int, Step]]) -> None:
    """Load the filter, hand over the listener, then for each step take on
    (fsuid, umask) and call, reporting each result.  A caller with another
    fsuid keeps CAP_MKNOD (raised again: leaving fsuid 0 drops it) but no DAC
    capability, like a container's non-root user given CAP_MKNOD."""
    code = 1
    try:
        filt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        filt.add_rule(pyseccomp.NOTIFY, "mknodat",
                      pyseccomp.Arg(2, pyseccomp.MASKED_EQ, 0o170000, stat.S_IFCHR))
        filt.load()
        keeper = os.fork()
        if keeper == 0:  # keeps a task in the filter, so the listener outlives the caller
            signal.pause()
            os._exit(0)
        listener = pyseccomp._libseccomp.seccomp_notify_fd(filt._filter)
        socket.send_fds(channel, [_RESULT.pack(keeper)], [listener])
        os.close(listener)
        caps = kernel.capget()
        # SA_RESTART, as Go's preemption signal: an interrupted call is restarted.
        signal.signal(signal.SIGUSR1, lambda *_: None)
        signal.siginterrupt(signal.SIGUSR1, False)
        for fsuid, umask, step in steps:
            channel.recv(1)  # go
            os.umask(umask)
            _libc.setfsuid(fsuid)
            effective = caps.permitted if fsuid == 0 else caps.permitted & ~_DAC
            kernel.capset(kernel.ThreadCaps(effective, caps.permitted, caps.inheritable))
            channel.send(_RESULT.pack(step()))
        code = 0
    finally:
        os._exit(code)


class Served:
    def __init__(self, pid: int, keeper: int, channel: socket.socket,
                 serving: threading.Thread, tid_box: list[int],
                 container: SupervisedContainer) -> None:
        self.pid, self.keeper, self.channel, self.serving = pid, keeper, channel, serving
        self.tid_box, self.container = tid_box, container

    def step(self) -> int:
        self.channel.send(b"g")
        return int(_RESULT.unpack(self.channel.recv(_RESULT.size))[0])

    def identity(self) -> dict[str, object]:
        base = f"/proc/self/task/{self.tid_box[0]}"
        with open(f"{base}/status", "rb") as f:
            status = f.read()
        return {
            "fsuid": int(status_field(status, b"Uid").split()[3]),
            "fsgid": int(status_field(status, b"Gid").split()[3]),
            "caps": int(status_field(status, b"CapEff"), 16),
            "umask": int(status_field(status, b"Umask"), 8),
            "root": os.readlink(f"{base}/root"), "cwd": os.readlink(f"{base}/cwd"),
            "mnt": os.readlink(f"{base}/ns/mnt"),
        }


@contextmanager
def served(steps: list[tuple[int, int, Step]], dispatcher: Dispatcher | None = None
           ) -> Iterator[Served]:
    container = SupervisedContainer(ContainerRecord("kernel-tier", "", "default"),
                          ContainerPolicy.from_profile(load_profile("default",
                                                                    (PACKAGE_PROFILES,))))
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        parent_end.close()
        _child(child_end, steps)
    child_end.close()
    stop_r, stop_w = os.pipe()
    keeper_pid, fds, _, _ = socket.recv_fds(parent_end, _RESULT.size, 1)
    keeper = int(_RESULT.unpack(keeper_pid)[0])
    listener = fds[0]
    set_sync_wake_up(listener)
    tid_box: list[int] = []
    ended: list[str] = []

    def serve() -> None:
        tid_box.append(threading.get_native_id())
        ended.append(serve_listener(listener, container, pid, dispatcher or Dispatcher(),
                                    stop_r))

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        while not tid_box:
            pass
        yield Served(pid, keeper, parent_end, thread, tid_box, container)
    finally:
        os.write(stop_w, b"x")
        thread.join(10)
        assert not thread.is_alive()
        for fd in (listener, stop_r, stop_w):
            os.close(fd)
        for victim in (keeper, pid):
            try:  # the keeper is the child's child: killed, reaped by init
                os.kill(victim, signal.SIGKILL)
                if victim == pid:
                    os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        parent_end.close()


def _rested(identity: dict[str, object]) -> None:
    """What must always be true of a thread between requests."""
    assert identity["caps"] == kernel.capget().effective
    assert identity["root"] == "/" and identity["cwd"] == "/"
    assert identity["mnt"] == os.readlink("/proc/self/ns/mnt")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may search (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="lxcn-identity-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_identity_after_success_failures_and_other_callers(open_dir: Path) -> None:
    tmp_path = open_dir
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    steps = [
        (0, 0o022, _mknodat(bytes(shared / "root-null"))),  # done
        (0, 0o022, _mknodat(bytes(tmp_path / "missing" / "x"))),  # ENOENT
        (1000, 0o077, _mknodat(bytes(shared / "user-null"))),  # done, as uid 1000
        (1000, 0o077, _mknodat(bytes(private / "x"))),  # EACCES for uid 1000
        (1000, 0o077, _bad_pointer),  # EFAULT before acting
        (0, 0o022, _mknodat(b"relative-null")),  # done, relative to the child's cwd
    ]
    cwd = os.getcwd()
    os.chdir(shared)  # the child inherits it
    try:
        with served(steps) as s:
            assert s.step() == 0
            after_root = s.identity()
            _rested(after_root)
            assert (after_root["fsuid"], after_root["umask"]) == (0, 0o022)
            assert s.step() == -errno.ENOENT
            _rested(s.identity())
            assert s.step() == 0
            after_user = s.identity()
            _rested(after_user)
            assert (after_user["fsuid"], after_user["umask"]) == (1000, 0o077)
            assert s.step() == -errno.EACCES
            _rested(s.identity())
            before = s.identity()
            assert s.step() == -errno.EFAULT
            assert s.identity() == before  # failed before acting: nothing changed
            assert s.step() == 0
            _rested(s.identity())
            assert dict(s.container.stats) == {"done": 3, "errno": 3}
    finally:
        os.chdir(cwd)
    made = {p.name: p.stat() for p in shared.iterdir()}
    assert set(made) == {"root-null", "user-null", "relative-null"}
    assert made["root-null"].st_uid == 0 and stat.S_IMODE(made["root-null"].st_mode) == 0o644
    assert made["user-null"].st_uid == 1000 and stat.S_IMODE(made["user-null"].st_mode) == 0o600
    assert os.major(made["user-null"].st_rdev) == 1 and os.minor(made["user-null"].st_rdev) == 3


def test_a_caller_that_dies_mid_request(tmp_path: Path) -> None:
    """The caller is killed after we received its call: answered, counted as gone,
    nothing made, and the thread at rest."""
    victim: list[int] = []
    real = registry()["mknod"]

    def kill_then_handle(call: Call) -> Answer:
        os.kill(victim[0], signal.SIGKILL)
        os.waitpid(victim[0], 0)
        return real.handle(call)

    dispatcher = Dispatcher(handlers={"mknod": Registered(real.family, kill_then_handle)})
    with served([(0, 0o022, _mknodat(bytes(tmp_path / "never")))], dispatcher) as s:
        victim.append(s.pid)
        s.channel.send(b"g")
        for _ in range(1000):
            if s.container.stats:
                break
            threading.Event().wait(0.01)
        assert dict(s.container.stats) == {"gone": 1}
        _rested(s.identity())
    assert not (tmp_path / "never").exists()


def test_the_listener_ends_when_no_task_is_left(tmp_path: Path) -> None:
    with served([(0, 0o022, _mknodat(bytes(tmp_path / "one")))]) as s:
        assert s.step() == 0
        os.kill(s.keeper, signal.SIGKILL)
        os.waitpid(s.pid, 0)  # its last step done, the child exits; reaped, it leaves the filter
        s.serving.join(10)
        assert not s.serving.is_alive()


def test_an_interrupted_caller_does_not_meet_its_abandoned_node(
        open_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller is interrupted (SA_RESTART) just after we made its node: the node
    is undone, and the restarted call, a new notification, succeeds."""
    real_valid = kernel.notif_id_valid
    checks: dict[int, int] = {}
    victim: list[int] = []

    def interrupting_valid(listener_fd: int, notif_id: int) -> bool:
        checks[notif_id] = checks.get(notif_id, 0) + 1
        if len(checks) == 1 and checks[notif_id] == 2:  # after the first node was made
            os.kill(victim[0], signal.SIGUSR1)
            for _ in range(1000):
                if not real_valid(listener_fd, notif_id):
                    break
                threading.Event().wait(0.001)
        return real_valid(listener_fd, notif_id)

    monkeypatch.setattr(kernel, "notif_id_valid", interrupting_valid)
    node = open_dir / "restarted"
    with served([(0, 0o022, _mknodat(bytes(node)))]) as s:
        victim.append(s.pid)
        assert s.step() == 0  # not EEXIST: the abandoned node was undone
        assert dict(s.container.stats) == {"gone": 1, "done": 1}
        assert len(checks) == 2
    assert stat.S_ISCHR(node.stat().st_mode)


def test_pids_translate_from_the_callers_namespace() -> None:
    """host_pid: 0 is the caller itself; a pid of the caller's namespace (here the
    host's, one level) maps to its host id; one the namespace lacks is ESRCH."""
    from lxc_notify_plugin.caller.task import host_pid
    from lxc_notify_plugin.request import ContainerUserns, IdMap, Notice, Request

    view = ContainerUserns("self", os.getpid(), os.readlink("/proc/self/ns/user"),
                         IdMap(((0, 0, 1 << 32),)), IdMap(((0, 0, 1 << 32),)))
    proc_fd = os.open(f"/proc/{os.getpid()}", os.O_PATH | os.O_DIRECTORY)
    try:
        request = Request(view, Notice(1, os.getpid(), kernel.AUDIT_ARCH_X86_64, 144,
                                       (0, 0, 0, 0, 0, 0)), "sched_setscheduler", -1, proc_fd)
        assert host_pid(request, 0) == os.getpid()
        assert host_pid(request, os.getppid()) == os.getppid()
        with pytest.raises(OSError) as raised:
            host_pid(request, 4_000_000)
        assert raised.value.errno == errno.ESRCH
    finally:
        os.close(proc_fd)
