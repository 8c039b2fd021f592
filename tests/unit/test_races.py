"""Issue 20, part 3: every notification gets an answer, and counts stay right under threads.

Each test here failed before its fix; fakes stand in for the kernel and the
runtimes (no privileges needed).
"""

from __future__ import annotations

import array
import errno
import itertools
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from lxc_notify_plugin import kernel
from lxc_notify_plugin.caller import actor as actor_module
from lxc_notify_plugin.caller.thread import ThreadState
from lxc_notify_plugin.dispatch import Call, Dispatcher, Outcome, SupervisedContainer
from lxc_notify_plugin.errors import SupervisorFault, own_step
from lxc_notify_plugin.handlers import nodes
from lxc_notify_plugin.host import udev
from lxc_notify_plugin.host.flaglock import FlagLocker
from lxc_notify_plugin.paths import Paths
from lxc_notify_plugin.request import KERNEL_DECIDES, NOT_OURS, Answer, Notice, Request
from lxc_notify_plugin.service import status
from lxc_notify_plugin.service.config import DaemonConfig
from lxc_notify_plugin.supervisor import Supervisor
from lxc_notify_plugin.transport import lxc as protocol
from lxc_notify_plugin.transport.listener import serve_listener
from lxc_notify_plugin.transport.lxc import LxcProxy, _Session
from lxc_notify_plugin.transport.oci_agent import OciAgent
from lxc_notify_plugin.transport.oci_state import parse_state
from tests.unit.test_dispatch import (
    CHR,
    COOKIE,
    X86_64,
    FakeTransport,
    make_container,
    with_handler,
)


@pytest.fixture
def fine_switching() -> Iterator[None]:
    """Threads switch every microsecond, not every 5 ms: races show up in a short test."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


# --- 3: counts under threads ---------------------------------------------------------------

def _every_outcome() -> object:
    """A handler whose calls end in each outcome a handler can give, in turn."""
    results: Iterator[Answer | OSError] = itertools.cycle((
        Answer(), KERNEL_DECIDES, NOT_OURS, OSError(errno.EACCES, "no"),
        OSError(errno.ESRCH, "gone")))

    def handle(call: Call) -> Answer:
        result = next(results)
        if isinstance(result, OSError):
            raise result
        return result

    return handle


def test_counts_stay_right_while_status_reads_them(fine_switching: None) -> None:
    """Many OCI listener threads of one container count while status reads the counts:
    no count is lost and no reader sees the Counter change size under it."""
    writers, per_round, rounds = 4, 12, 400
    dispatcher = with_handler(_every_outcome())
    # status sums a container's counters over its connections: the first is copied
    # whole, the next ones are iterated (where a change of size shows).
    settled = make_container()
    settled.stats.update({"done": 1})
    current: list[SupervisedContainer] = [make_container()]
    start, finish = threading.Barrier(writers + 1), threading.Barrier(writers + 1)
    stop = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        caller = ThreadState()
        try:
            for _ in range(rounds):
                start.wait()
                container = current[0]
                for n in range(per_round):
                    nr = 133 if n % 6 else 165  # mount: a call this profile does not trap
                    notice = Notice(n, os.getpid(), X86_64, nr, (0, CHR, 1, 0, 0, 0))
                    dispatcher.answer(container, notice, caller, os.getpid(), listener_fd=-1)
                finish.wait()
        except BaseException as err:
            failures.append(err)
            start.abort()
            finish.abort()
        finally:
            caller.close()

    def read() -> None:
        while not stop.is_set():
            container = current[0]
            try:
                status.container_row("box", "default", "running", True, None,
                                     [settled, container], lambda name: {})
                session = _Session(1)
                session.container = container
                session.stats()
            except BaseException as err:
                failures.append(err)
                return

    threads = [threading.Thread(target=write) for _ in range(writers)]
    threads.append(threading.Thread(target=read))
    for thread in threads:
        thread.start()
    lost = []
    try:
        for _ in range(rounds):
            current[0] = make_container()
            start.wait()
            finish.wait()
            total = sum(current[0].stats.values())
            if total != writers * per_round:
                lost.append(writers * per_round - total)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures
    assert not lost, f"counts lost in {len(lost)} of {rounds} rounds: {lost}"


# --- 5: one lock per container ---------------------------------------------------------------

def test_each_container_has_its_own_lock() -> None:
    """A container's threads never wait for another container's (it was one class-wide lock)."""
    busy, other = make_container(), make_container()
    with busy._lock:
        thread = threading.Thread(target=other.add_connection, args=(1,))
        thread.start()
        thread.join(2.0)
        blocked = thread.is_alive()
    thread.join()
    assert not blocked and other.connections == 1 and busy.connections == 0


# --- 4: a status that fails leaves the daemon serving --------------------------------------

def _listening(path: Path, kind: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    sock.bind(str(path))
    sock.listen()
    return sock


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    """A daemon on sockets of its own in tmp_path (handed in as systemd would: no
    root needed), with no udev, audit log or metrics file."""
    paths = Paths(socket=tmp_path / "run" / "seccomp.sock", state_dir=tmp_path / "state",
                  admin_profiles=tmp_path / "profiles", udev_control=tmp_path / "no-udev")
    (tmp_path / "run").mkdir()
    daemon = Supervisor(DaemonConfig(paths=paths))
    daemon.lxc.bind(_listening(paths.socket, socket.SOCK_SEQPACKET))
    daemon.agent.bind(_listening(paths.agent_socket, socket.SOCK_STREAM))
    daemon._bound = True
    yield daemon


def _until(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_failed_status_leaves_the_daemon_serving(
        supervisor: Supervisor, caplog: pytest.LogCaptureFixture) -> None:
    calls = []
    write_status = supervisor._write_status

    def fail_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("dictionary changed size during iteration")
        write_status()

    supervisor._write_status = fail_once  # type: ignore[method-assign]
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            supervisor.serve()
        except BaseException as err:
            failures.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        supervisor.request_status()
        # The first request was taken and failed: serve() logged it, or (the bug) ended.
        _until(lambda: "status could not be written" in caplog.text or not thread.is_alive(),
               "the first status to fail")
        assert not supervisor.paths.status_file.exists()
        supervisor.request_status()
        _until(lambda: supervisor.paths.status_file.exists() or not thread.is_alive(),
               "the second status")
        answered = supervisor.paths.status_file.exists()  # a stop removes it
    finally:
        supervisor.stop()
        thread.join()
    assert not failures, failures
    assert answered and len(calls) == 2
    assert "status" in caplog.text and "dictionary changed size" in caplog.text


# --- 6: the agent's attach is one step -----------------------------------------------------

STATE = (b'{"ociVersion":"1.0.2-dev","fds":["seccompFd"],"pid":24914,"metadata":"",'
         b'"state":{"ociVersion":"1.0.2-dev","id":"rt1","status":"creating","pid":24914,'
         b'"bundle":"/tmp/b"}}')


class InterleavingLock:
    """A lock that runs ``before`` once, just before its ``at``-th acquire: another
    thread's step, forced in between two of the code's lock sections."""

    def __init__(self, at: int, before: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self.acquires = 0
        self.at, self.before = at, before
        self.fired = False

    def __enter__(self) -> None:
        self.acquires += 1
        if self.acquires == self.at and not self.fired:
            self.fired = True
            self.before()
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def _agent(tmp_path: Path) -> OciAgent:
    container = make_container()
    # proc_root without the init: no user namespace, no NodeStore.
    return OciAgent(tmp_path / "agent.sock", Dispatcher(), lambda state: (container, None),
                    proc_root=str(tmp_path))


def test_a_listener_attached_while_the_last_one_detaches_is_served_and_listed(
        tmp_path: Path) -> None:
    """The first listener of a container detaches while a second attaches: the second
    must be counted in the container that status and reload see (it was counted in
    one already dropped from the agent's table, so both missed it)."""
    agent = _agent(tmp_path)
    state = parse_state(STATE, 1)
    first = agent._attach(state)
    # The detach may come between any two of _attach's lock sections.
    lock = InterleavingLock(2, lambda: agent._detach(state, first))
    agent._lock = lock  # type: ignore[assignment]
    second = agent._attach(state)
    if not lock.fired:  # one section: the detach comes after the attach
        lock.fired = True
        agent._detach(state, first)
    assert second.listeners == 1 and second.container.connections == 1
    assert agent.containers() == [second.container]
    agent._detach(state, second)
    assert agent.containers() == [] and second.container.connections == 0


# --- 2: no thread to be had ----------------------------------------------------------------

class FakeKeeper:
    def __init__(self) -> None:
        self.released: list[str] = []

    def keep(self, listener: int, state: bytes) -> str | None:
        return None

    def release(self, name: str) -> None:
        self.released.append(name)


@pytest.fixture
def no_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit's task limit is reached: the daemon's serving threads cannot start
    (its connections' and listeners', and those of programs' listeners)."""
    start = threading.Thread.start

    def refuse(thread: threading.Thread) -> None:
        if thread.name.startswith(("lxc-notify-", "program-")):
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", refuse)


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as err:
        return err.errno == errno.EBADF
    return False


def test_an_adopted_listener_without_a_thread_is_closed_and_released(
        tmp_path: Path, no_threads: None, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(kernel, "is_listener", lambda fd, proc_root="/proc": True)
    agent = _agent(tmp_path)
    keeper = FakeKeeper()
    agent.keeper = keeper
    listener, other_end = os.pipe2(os.O_CLOEXEC)  # stands in for a kept listener
    try:
        agent.adopt("lxc-notify-oci-1", listener, STATE)
        # Closed (its callers get ENOSYS from the kernel rather than wait for ever in
        # systemd's fd store), released, and nothing of it left in the agent.
        assert _closed(listener)
        assert keeper.released == ["lxc-notify-oci-1"]
        assert not agent._threads and not agent.containers()
        assert "can't start new thread" in caplog.text
    finally:
        os.close(other_end)
        if not _closed(listener):
            os.close(listener)


def test_udev_without_a_thread_leaves_a_frozen_view(
        tmp_path: Path, no_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve() starts the udev watcher: a RuntimeError there stopped the daemon."""
    monkeypatch.setattr(udev, "udev_running", lambda control: True)
    monkeypatch.setattr(udev.UdevWatcher, "_enumerate", lambda self, context: None)
    watcher = udev.UdevWatcher(udev.HostDeviceIndex(), tmp_path / "control")
    assert watcher.start() is False and not watcher.running
    watcher.stop()  # joins no thread that never started


# --- 7: the daemon's own OSErrors are its faults, not the caller's errno ---------------------

@pytest.mark.parametrize("raised", [
    OSError(errno.EMFILE, "Too many open files"),  # one of our opens, unwrapped
    OSError(errno.ENFILE, "Too many open files in system"),
    SupervisorFault("make its private tmpfs", OSError(errno.EMFILE, "Too many open files")),
])
def test_a_full_fd_table_of_ours_is_a_fault_the_caller_sees_as_enomem(
        raised: OSError, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Outcome] = []

    def handle(call: Call) -> Answer:
        raise raised

    dispatcher = with_handler(handle)
    dispatcher.hooks.append(seen.append)
    transport = FakeTransport(dispatcher, make_container())
    try:
        with caplog.at_level(logging.ERROR):
            assert transport.ask(133, (0, CHR, 1)) == Answer(error=errno.ENOMEM)
    finally:
        transport.close()
    assert [(o.outcome, o.error) for o in seen] == [("fault", errno.ENOMEM)]
    assert "(caller gets ENOMEM)" in caplog.text


def test_own_step_makes_our_oserrors_faults() -> None:
    with pytest.raises(SupervisorFault) as caught, own_step("make the node store's directory"):
        os.mkdir("/nonexistent/x")
    # The caller gets the one errno of our own failures; the log keeps the step's.
    assert caught.value.errno == errno.ENOMEM and caught.value.cause.errno == errno.ENOENT
    assert caught.value.step.startswith("make the node")
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    fault = SupervisorFault("setns", OSError(errno.EPERM, "no"))
    with pytest.raises(SupervisorFault) as again, own_step("outer"):
        raise fault
    assert again.value is fault


# --- 1: a thread without its ThreadState still answers ---------------------------------------

@pytest.fixture
def no_caller_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """ThreadState cannot open its fds: the daemon's fd table is full."""
    def full(self: ThreadState, proc_root: str = "/proc") -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(ThreadState, "__init__", full)


def test_lxc_answers_every_datagram_when_its_thread_state_cannot_be_made(
        tmp_path: Path, no_caller_threads: None, caplog: pytest.LogCaptureFixture) -> None:
    """Each datagram gets a reply at once (it got none: LXC answered ENOSYS after 30 s):
    a trapped call the supervisor's fault (ENOMEM, logged), an untrapped one the kernel's."""
    container = make_container()
    sizes = kernel.notif_sizes()
    proxy = LxcProxy(tmp_path / "s", Dispatcher(),
                     lambda cookie: container if cookie == COOKIE else None, sizes)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.settimeout(10)
    thread = threading.Thread(target=proxy._serve_connection, args=(theirs, 1))
    thread.start()
    replies = []
    try:
        with caplog.at_level(logging.ERROR):
            for notif_id, nr in ((9, 133), (10, 165), (11, 133)):  # mknod, mount, mknod
                raw = protocol.build(notif_id, os.getpid(), nr, X86_64,
                                     (0, CHR | 0o600, os.makedev(1, 3)), init_pid=os.getpid(),
                                     cookie=COOKIE, sizes=sizes)
                # Three fds, as LXC sends (/proc/PID, its mem, the listener): unused here.
                fds = [os.open("/", os.O_PATH | os.O_CLOEXEC) for _ in range(3)]
                try:
                    ours.sendmsg([raw], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          array.array("i", fds))])
                finally:
                    for fd in fds:
                        os.close(fd)
                replies.append(protocol.unpack_reply(ours.recv(4096)))
    finally:
        ours.close()
        thread.join()
    assert replies == [(9, 0, -errno.ENOMEM, 0),
                       (10, 0, 0, kernel.SECCOMP_USER_NOTIF_FLAG_CONTINUE),
                       (11, 0, -errno.ENOMEM, 0)]
    assert container.counts() == {"fault": 2, "unknown": 1}
    assert "Too many open files" in caplog.text and "(caller gets ENOMEM)" in caplog.text
    assert container.connections == 0 and not proxy._threads


def test_a_listener_answers_every_notification_when_its_thread_state_cannot_be_made(
        no_caller_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The OCI listener's thread too: it raised, and the listener was closed."""
    pending_r, pending_w = os.pipe2(os.O_CLOEXEC)  # readable while a notification waits
    stop_r, stop_w = os.pipe2(os.O_CLOEXEC)
    sent: list[tuple[int, int, int]] = []

    def recv(listener: int, into: kernel.seccomp_notif) -> None:
        os.read(listener, 1)
        into.id, into.pid = 77, os.getpid()
        into.data.arch, into.data.nr = X86_64, 133

    def send(listener: int, resp: kernel.seccomp_notif_resp) -> None:
        nonlocal pending_w
        sent.append((resp.id, resp.error, resp.flags))
        os.close(pending_w)  # no task left in the filter: POLLHUP
        pending_w = -1

    monkeypatch.setattr(kernel, "notif_recv", recv)
    monkeypatch.setattr(kernel, "notif_send", send)
    container = make_container()
    os.write(pending_w, b"n")
    try:
        why = serve_listener(pending_r, container, os.getpid(), Dispatcher(), stop_r)
    finally:
        for fd in (pending_r, pending_w, stop_r, stop_w):
            if fd >= 0:
                os.close(fd)
    assert (why, sent) == ("hangup", [(77, -errno.ENOMEM, 0)])
    assert container.counts() == {"fault": 1}


# --- 7, still open after the first pass: our own steps answer one errno, at one boundary ----

def _own_step_fails(where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                    ) -> Callable[[Call], None]:
    """A step of the daemon's own that fails as it can on a real host, run from a
    handler: what the caller must not read as the kernel's answer about its call."""
    store_root = tmp_path / "store"
    store_root.mkdir()
    if where == "the node store's directory":
        # Its directory cannot be made: ENOTDIR (the store's root is no directory).
        (tmp_path / "not-a-dir").write_text("")
        monkeypatch.setattr(kernel, "private_tmpfs", lambda *args: os.open(
            tmp_path / "not-a-dir", os.O_PATH | os.O_CLOEXEC))
    else:
        monkeypatch.setattr(kernel, "private_tmpfs", lambda *args: os.open(
            store_root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
    user_ns = "user:[4026531837]"

    def step(call: Call) -> None:
        if where == "the node store's directory":
            os.close(call.host.nodes.directory(user_ns))
        elif where == "a twin's name in the store":
            # The store's next name is taken: mknod there says EEXIST, which the
            # caller would read as its own path existing.
            store = store_root / "".join(c if c.isalnum() else "_" for c in user_ns)
            store.mkdir()
            (store / "node0").write_text("")
            held = os.open(tmp_path, os.O_PATH | os.O_CLOEXEC)
            try:
                like = os.stat_result((CHR | 0o666, 0, 0, 1, 0, 0, 0, 0, 0, 0),
                                      {"st_rdev": os.makedev(1, 3)})
                node = SimpleNamespace(stat=like, fd=held)
                fake_thread = SimpleNamespace(set_ids=lambda *args: None, proc_root="/proc")
                request = SimpleNamespace(container=SimpleNamespace(user_ns=user_ns))
                nodes.overmount_usable_twin(cast(ThreadState, fake_thread),
                                            cast(Request, request),
                                            cast(nodes.Placeholder, node), call.host.nodes)
            finally:
                os.close(held)
        else:  # the flag locker's tmpfs is full
            class Full:
                def lock(self, mount_fd: int, return_ns_fd: int) -> int:
                    raise OSError(errno.ENOSPC, "No space left on device")  # a slot's mkdir

                def close(self) -> None:
                    pass

            call.host.flag_locks._locker = cast(FlagLocker, Full())
            call.host.flag_locks.lock(-1, -1)

    return step


@pytest.mark.parametrize("where", ["the node store's directory", "a twin's name in the store",
                                   "the flag locker's tmpfs"])
def test_our_own_steps_fail_as_faults_the_caller_sees_as_enomem(
        where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """An OSError of the node store or the flag locker reached the caller as its
    errno (ENOTDIR, EEXIST, ENOSPC), as if the kernel had said it about the
    caller's call, and was counted as a refusal, logged at debug level; each is
    now the supervisor's fault: ENOMEM, counted as a fault, logged as an error."""
    step = _own_step_fails(where, tmp_path, monkeypatch)
    assert _one_call(step, caplog) == (errno.ENOMEM, [("fault", errno.ENOMEM)])
    assert "supervisor could not" in caplog.text and "(caller gets ENOMEM)" in caplog.text


def _one_call(step: Callable[[Call], object], caplog: pytest.LogCaptureFixture,
              while_served: Callable[[Dispatcher], None] = lambda dispatcher: None
              ) -> tuple[int, list[tuple[str, int]]]:
    """One mknod through a dispatcher whose handler runs ``step``: the errno the
    caller gets, and (outcome, errno) as the hooks saw it."""
    seen: list[Outcome] = []

    def handle(call: Call) -> Answer:
        step(call)
        return Answer()

    dispatcher = with_handler(handle)
    dispatcher.hooks.append(seen.append)
    transport = FakeTransport(dispatcher, make_container())
    try:
        with caplog.at_level(logging.ERROR):
            answer = transport.ask(133, (0, CHR, 1))
        while_served(dispatcher)
    finally:
        transport.close()
        dispatcher.close()
    return answer.error, [(o.outcome, o.error) for o in seen]


# --- 2, the same for every transport: one way to start a serving thread ------------------

def test_a_programs_listener_without_a_thread_is_a_fault_not_a_bug(
        no_threads: None, caplog: pytest.LogCaptureFixture) -> None:
    """A program started for a caller (a FUSE redirect) hands its listener to the
    dispatcher; with no thread to serve it, the RuntimeError went up as our bug
    (ENOSYS, a traceback); it is the supervisor's fault (ENOMEM), the listener is
    closed, and no thread is left for the stop to join."""
    listener, other_end = os.pipe2(os.O_CLOEXEC)  # stands in for the program's listener
    left: list[object] = []
    try:
        answered = _one_call(lambda call: call.serve_listener(listener), caplog,
                             lambda dispatcher: left.extend(
                                 dispatcher._side._threads if dispatcher._side else ["?"]))
        assert _closed(listener)
    finally:
        os.close(other_end)
        if not _closed(listener):
            os.close(listener)
    assert answered == (errno.ENOMEM, [("fault", errno.ENOMEM)]) and left == []
    assert "can't start new thread" in caplog.text and "(caller gets ENOMEM)" in caplog.text


class PeerConn:
    """An accepted connection as far as accepting it goes: root's peer credentials."""

    def __init__(self) -> None:
        self.closed = False

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        return struct.pack("3i", 4242, 0, 0)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("transport", ["lxc", "agent"])
def test_a_connection_without_a_thread_is_closed_and_forgotten(
        transport: str, tmp_path: Path, no_threads: None,
        caplog: pytest.LogCaptureFixture) -> None:
    """Both sockets start a thread per connection the same way (transport/threads.py):
    one that cannot start leaves no thread for the stop to join and nothing
    half-registered, and its connection is closed (LXC reconnects once, then
    answers ENOSYS; a runtime's listener closes with it)."""
    conn = PeerConn()
    if transport == "lxc":
        proxy = LxcProxy(tmp_path / "s", Dispatcher(), lambda cookie: None,
                         kernel.notif_sizes())
        proxy._take(cast(socket.socket, conn))
        left: list[object] = [*proxy._threads]
    else:
        agent = _agent(tmp_path)
        agent.sock = cast(socket.socket, SimpleNamespace(accept=lambda: (conn, None)))
        agent.accept()
        left = [*agent._threads, *agent._reading]
    assert conn.closed and left == []
    assert "not served: can't start new thread" in caplog.text


# --- 6, once more: from the attach on, the detach follows whatever fails ------------------

class FailingKeeper(FakeKeeper):
    def keep(self, listener: int, state: bytes) -> str | None:
        raise OSError(errno.EIO, "the fd store's socket failed")


def test_a_listener_whose_keeping_fails_is_detached_all_the_same(tmp_path: Path) -> None:
    """Between the attach and the serving loop (keeping the listener in systemd's
    store, its wake-up flag) a failure skipped the detach: the container stayed in
    status and reload with one listener too many, served by no one, for ever."""
    agent = _agent(tmp_path)
    agent.keeper = FailingKeeper()
    state = parse_state(STATE, 1)
    listener, other_end = os.pipe2(os.O_CLOEXEC)
    try:
        with pytest.raises(OSError, match="fd store"):
            agent._serve(listener, state, STATE)
    finally:
        os.close(listener)
        os.close(other_end)
    assert agent.containers() == []
    assert not agent._served


# --- 7, the actor: our own process, and a caller that left while it worked ---------------

def _dead_actor() -> actor_module.Actor:
    """An actor whose process is gone: its socket's peer closed, as when the
    container's init exits (the actor exits with it) in the middle of a request."""
    actor = actor_module.Actor.__new__(actor_module.Actor)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    theirs.close()
    actor.sock = ours
    actor.process = cast(subprocess.Popen[bytes], SimpleNamespace(
        wait=lambda timeout=None: 0, kill=lambda: None, poll=lambda: 0, pid=-1))
    actor.follow_cpu, actor.cpu, actor.used = False, -1, 0.0
    # The container's init is gone too (it took the actor along): the new actor
    # that a refused send asks for cannot be made.
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    actor.init_pid, actor.procs_files, actor.hierarchies, actor.leave = gone, (), (), 0
    return actor


@pytest.mark.parametrize("caller_waits", [True, False])
def test_an_actor_that_dies_mid_request(caller_waits: bool, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """The actor's socket resets under a request (seen: a container stopped while its
    caller waited in mknod). The caller got EPIPE or ECONNRESET, our socket's errnos,
    and an ERROR line said the supervisor failed even when the caller had gone with
    its container. Now a caller that still waits gets OWN_STEP_ERRNO (a fault, logged);
    one that left is counted gone, at debug level."""
    monkeypatch.setattr(kernel, "notif_id_valid", lambda fd, notif_id: caller_waits)
    who = actor_module.Identity(0, 0, (), 0o022, 0)

    def step(call: Call) -> None:
        directory = os.open("/", os.O_PATH | os.O_CLOEXEC)  # sent along, as the handler's
        try:
            _dead_actor().mknodat(directory, b"null", CHR | 0o666, os.makedev(1, 3), who)
        finally:
            os.close(directory)

    answered = _one_call(step, caplog)
    if caller_waits:
        assert answered == (errno.ENOMEM, [("fault", errno.ENOMEM)])
        assert "supervisor could not read the actor's answer" in caplog.text
    else:
        assert answered == (errno.ESRCH, [("gone", errno.ESRCH)])
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
