"""Hostile input, generated: every datagram answered, nothing leaked, no walk escapes.

Two properties against the real daemon:

* Whatever arrives at its sockets (random bytes; LXC datagrams with fields
  broken, cut short or extended; 0 to 5 fds of the wrong kinds; unknown
  cookies; the real cookie with a used notification id and a listener whose
  task has exited), each datagram gets the answer the wire format says
  (UNPARSEABLE_REPLY for what does not parse, ENOSYS for an unknown cookie,
  otherwise a 136-byte reply that echoes the request and never claims a
  success it could not have had), in time, and afterwards the daemon has the
  fds and threads it had before.  Cases come from hypothesis, derandomized,
  so CI runs the same few thousand every time.
* A path component flipped between a directory and symlinks out of it, while
  a caller mknods through it, never leads the supervisor outside the
  container's root.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import socket
import struct
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lxc_notify_plugin import kernel
from lxc_notify_plugin.errors import ProtocolError
from lxc_notify_plugin.kernel.seccomp import SECCOMP_USER_NOTIF_FLAG_CONTINUE
from lxc_notify_plugin.transport import lxc as protocol
from tests.kernel.test_seccomp_notify import child_result, mknodat_call, notifying_child
from tests.lxc.conftest import Container, Daemon, supervised_container, wait_for
from tests.lxc.test_robustness import stable_fd_count

SIZES: Final = kernel.notif_sizes()
REPLY_TIMEOUT: Final = 10.0  # seconds; a daemon that takes longer "hangs"
PER_CONNECTION: Final = 40  # datagrams before the next connection: both paths get exercised
AT_FDCWD_U64: Final = 2**64 - 100
FUZZ = settings(max_examples=2000, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])
AGENT_FUZZ = settings(FUZZ, max_examples=300)

# Fields of LXC's header and notification that a mutation may overwrite
# (offset, struct format): see transport/lxc.py for the layout.
FIELDS: Final = {
    "reserved": (0, "Q"), "monitor_pid": (8, "i"), "init_pid": (12, "i"),
    "size_notif": (16, "H"), "size_resp": (18, "H"), "size_data": (20, "H"),
    "cookie_len": (24, "Q"), "notif_id": (32, "Q"), "pid": (40, "I"), "nr": (48, "i"),
    "arch": (52, "I"), "resp_id": (112, "Q"), "resp_error": (128, "i"),
}


@pytest.fixture(scope="module")
def box(daemon: Daemon, nodeprobe: Path) -> Iterator[Container]:
    """This module's own container, not the session's: a forged connection
    bound to a container's cookie, when it ends, drops that container's twins'
    names from the daemon's store (see test_stale_listener_stops_a_real_request),
    and other modules' tests must not inherit that."""
    container = supervised_container(daemon, nodeprobe)
    try:
        yield container
    finally:
        container.destroy()


class Wire:
    """A connection to the LXC socket, as a monitor holds one; opened again
    after PER_CONNECTION datagrams or when the daemon hangs up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.sent = 0

    def exchange(self, datagram: bytes, fds: Sequence[int]) -> bytes:
        """The daemon's reply, or b"" if it hung up; TimeoutError if it said nothing."""
        if self.sock is None or self.sent >= PER_CONNECTION:
            self.close()
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.sock.settimeout(REPLY_TIMEOUT)
            self.sock.connect(str(self.path))
        self.sent += 1
        socket.send_fds(self.sock, [datagram], list(fds))
        reply = self.sock.recv(4096)
        if not reply:
            self.close()
        return reply

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.sent = None, 0


@dataclass
class Target:
    """What the cases are made of: the real container's cookie, init and the
    address of a real string in its memory, pids of every kind, a listener
    whose only notification was answered and whose task exited, and fds of
    every kind the daemon might be handed instead of the three it wants."""

    cookie: bytes
    init: int
    arg_start: int  # init's argv[0] ("init"), a readable C string in its memory
    dead_pid: int
    used_id: int  # the notification id the stale listener carried
    fds: dict[str, int]

    @property
    def pids(self) -> list[int]:
        return [self.init, os.getpid(), self.dead_pid, 1, 2**31 - 1]

    def lxc_fds(self, who: str = "init") -> list[int]:
        return [self.fds[f"proc_{who}"], self.fds[f"mem_{who}"], self.fds["stale"]]


def stale_listener() -> tuple[int, int]:
    """(listener fd, id): a forked child's filter (only a child may load one)
    raised one notification, answered here; then the child exited, so the
    listener has no task left and the id will never be valid again."""
    with notifying_child(mknodat_call(b"/nonexistent-dir/never-made")) as (pid, fd, channel):
        notif = kernel.notif_recv(fd)
        kernel.notif_send(fd, kernel.seccomp_notif_resp(notif.id, 0, -errno.EPERM, 0))
        assert child_result(channel) == (-1, errno.EPERM)
        listener = os.dup(fd)
        os.waitpid(pid, 0)
    assert not kernel.notif_id_valid(listener, notif.id)
    return listener, int(notif.id)


@pytest.fixture(scope="module")
def target(box: Container, daemon: Daemon, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Target]:
    record = json.loads((daemon.paths.containers_dir / f"{box.name}.json").read_text())
    init = box.init_pid()
    with open(f"/proc/{init}/stat") as stat:
        arg_start = int(stat.read().rsplit(")", 1)[1].split()[45])  # field 48, arg_start
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    fds: dict[str, int] = {}
    try:
        fds["stale"], used_id = stale_listener()
        for who, pid in (("self", os.getpid()), ("init", init)):
            fds[f"proc_{who}"] = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY)
            fds[f"mem_{who}"] = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        regular = tmp_path_factory.mktemp("fuzz") / "regular"
        regular.write_bytes(b"not a listener")
        fds["file"] = os.open(regular, os.O_RDWR)
        fds["pipe"], fds["pipe_w"] = os.pipe()
        fds["socket"], fds["socket_peer"] = (s.detach() for s in socket.socketpair())
        fds["devnull"] = os.open("/dev/null", os.O_RDWR)
        yield Target(record["cookie"].encode(), init, arg_start, child, used_id, fds)
    finally:
        for fd in fds.values():
            os.close(fd)


def settled(count: Callable[[], int], want: int, what: str, timeout: float = 15) -> None:
    """``count()`` comes back to ``want``: connection threads end asynchronously."""
    deadline = time.monotonic() + timeout
    while (now := count()) != want:
        assert time.monotonic() < deadline, f"the daemon's {what}: {now}, before {want}"
        time.sleep(0.1)


def thread_count(daemon: Daemon) -> int:
    return len(os.listdir(f"/proc/{daemon.pid}/task"))


@pytest.fixture
def unharmed(box: Container, daemon: Daemon) -> Iterator[None]:
    """Around a fuzz: the daemon is alive, still serves the container, made
    no node for a forged request, and has the fds and threads it had before."""
    assert box.probe("mknod", f"/tmp/before-{uuid.uuid4().hex[:8]}", "c", "1", "3") == "ok"
    fds, threads, made = stable_fd_count(daemon), thread_count(daemon), daemon.log().count(
        " made ")
    yield
    assert daemon.alive()
    assert daemon.log().count(" made ") == made, "a forged request made a node"
    assert box.probe("mknod", f"/tmp/after-{uuid.uuid4().hex[:8]}", "c", "1", "3") == "ok"
    settled(lambda: thread_count(daemon), threads, "thread count")
    settled(lambda: daemon.fd_count(), fds, "fd count")
    assert "Traceback" not in daemon.log()


def check_reply(reply: bytes, datagram: bytes, fd_count: int, cookie: bytes) -> str:
    """The answer the wire format prescribes for ``datagram``; which one it was."""
    if not datagram and not fd_count:
        # A 0-byte SEQPACKET datagram reads as the peer's hangup: the daemon
        # cannot tell them apart, and closes.  LXC never sends one.
        assert reply == b""
        return "hangup"
    try:
        notification = protocol.parse(datagram, fd_count, SIZES)
    except ProtocolError:
        assert reply == protocol.UNPARSEABLE_REPLY
        return "unparseable"
    if notification.cookie != cookie:
        assert reply == notification.reply(error=errno.ENOSYS)
        return "unknown cookie"
    assert len(reply) == protocol.REPLY_SIZE and reply[:protocol.RESP_OFFSET] == datagram[
        :protocol.RESP_OFFSET]
    notif_id, val, error, flags = protocol.unpack_reply(reply)
    assert (notif_id, val) == (notification.notif_id, 0)
    # The listener is stale or not a listener at all: nothing can have been
    # done, so the answer is an errno or "the kernel decides", never success.
    assert (error < 0 and flags == 0) or (error == 0 and flags == SECCOMP_USER_NOTIF_FLAG_CONTINUE)
    return errno.errorcode.get(-error, "kernel decides") if error else "kernel decides"


# --- strategies -----------------------------------------------------------------------------

U64 = st.integers(0, 2**64 - 1)


def field_values(fmt: str) -> st.SearchStrategy[int]:
    bits = struct.calcsize(fmt) * 8
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if fmt.islower() else (0, 2**bits - 1)
    edges = [v for v in (0, 1, -1, high, low, 8, 80, 24, 64, 136, 1024, 1025) if low <= v <= high]
    return st.sampled_from(edges) | st.integers(low, high)


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1200), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 1200)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=64)),
    st.sampled_from(sorted(FIELDS)).flatmap(
        lambda name: st.tuples(st.just(name), field_values(FIELDS[name][1]))),
)


def mutate(datagram: bytes, mutations: Sequence[tuple[object, ...]]) -> bytes:
    data = bytearray(datagram)
    for kind, *what in mutations:
        if kind == "flip":
            index, bits = what
            assert isinstance(index, int) and isinstance(bits, int)
            if index < len(data):
                data[index] ^= bits
        elif kind == "truncate":
            assert isinstance(what[0], int)
            del data[what[0]:]
        elif kind == "extend":
            assert isinstance(what[0], bytes)
            data += what[0]
        else:
            offset, fmt = FIELDS[str(kind)]
            if offset + struct.calcsize(fmt) <= len(data):
                struct.pack_into("=" + fmt, data, offset, what[0])
    return bytes(data)


def lxc_cases(t: Target) -> st.SearchStrategy[tuple[bytes, list[str]]]:
    """(datagram, names of the fds to attach)."""
    address = st.sampled_from([0, 8, t.arg_start, t.arg_start + 2, 2**64 - 1]) | U64
    mode = st.sampled_from([0o20666, 0o60600, 0o10644, 0o140777, 0]) | st.integers(0, 2**32 - 1)
    dev = st.sampled_from([os.makedev(1, 3), os.makedev(1, 1), os.makedev(4, 1), 0]) | U64
    dirfd = st.sampled_from([AT_FDCWD_U64, 0, 3, 2**32 - 100]) | U64
    mknod_args = st.tuples(address, mode, dev)
    mknodat_args = st.tuples(dirfd, address, mode, dev)
    calls = st.one_of(
        st.tuples(st.sampled_from([133, 14]), mknod_args),  # mknod: x86_64, i386
        st.tuples(st.sampled_from([259, 297]), mknodat_args),  # mknodat
        st.tuples(st.sampled_from([0, 165, 188, 99, 144, -1]) | st.integers(-2**31, 2**31 - 1),
                  st.tuples(U64, U64, U64, U64, U64, U64)))
    cookie = (st.sampled_from([t.cookie] * 6 + [b"", t.cookie[:-1], t.cookie + b"\0"])
              | st.binary(max_size=48) | st.binary(min_size=1020, max_size=1030))
    built = st.builds(
        lambda notif_id, pid, init_pid, call, arch, cookie: protocol.build(
            notif_id, pid, call[0], arch, call[1], init_pid=init_pid, cookie=cookie, sizes=SIZES),
        st.sampled_from([t.used_id, 0, 1, 2**64 - 1]) | U64, st.sampled_from(t.pids),
        st.sampled_from(t.pids), calls,
        st.sampled_from([kernel.AUDIT_ARCH_X86_64] * 4 + [kernel.AUDIT_ARCH_I386, 0, 2**32 - 1]),
        cookie)
    # What the container's init would send for mknod c 1:3 of a path it has:
    # every check before the listener's passes.
    real = st.builds(
        lambda notif_id, call: protocol.build(
            notif_id, t.init, call[0], kernel.AUDIT_ARCH_X86_64, call[1], init_pid=t.init,
            cookie=t.cookie, sizes=SIZES),
        st.sampled_from([t.used_id, 1]) | U64,
        st.sampled_from([(133, (t.arg_start, 0o20600, os.makedev(1, 3))),
                         (259, (AT_FDCWD_U64, t.arg_start, 0o20600, os.makedev(1, 3)))]))
    # one_of picks its branches alike: repeated ones weigh more, so that about
    # half the cases get past parsing to the dispatcher.
    datagram = st.one_of(
        st.binary(max_size=1300),
        built, built, real,
        st.builds(mutate, built, st.lists(MUTATION, min_size=1, max_size=3)))
    kind = st.sampled_from(sorted(t.fds))
    fds = st.one_of(st.sampled_from([["proc_init", "mem_init", "stale"],
                                     ["proc_self", "mem_self", "stale"]]),
                    kind.map(lambda listener: ["proc_init", "mem_init", listener]),
                    st.lists(kind, min_size=3, max_size=3),
                    st.lists(kind, max_size=5))
    return st.tuples(datagram, fds)


# --- the tests ------------------------------------------------------------------------------


@pytest.mark.usefixtures("unharmed")
def test_lxc_socket_answers_every_hostile_datagram(daemon: Daemon, target: Target) -> None:
    wire = Wire(daemon.paths.socket)
    answers: Counter[str] = Counter()

    @FUZZ
    @given(case=lxc_cases(target))
    def one(case: tuple[bytes, list[str]]) -> None:
        datagram, names = case
        fds = [target.fds[name] for name in names]
        answers[check_reply(wire.exchange(datagram, fds), datagram, len(fds), target.cookie)] += 1

    try:
        one()
    finally:
        wire.close()
    print(f"answers: {dict(answers.most_common())}")
    # The cases reach every path: refused, unknown, and served by the
    # dispatcher down to the listener check (ESRCH) and to fds of the wrong kind.
    assert {"unparseable", "unknown cookie", "hangup", "ESRCH", "ENOTTY"} <= answers.keys()


@pytest.fixture
def twin(box: Container, target: Target) -> Path:
    """A usable twin of the box's (/dev is nodev), as the host sees it."""
    name = f"/dev/keep-{uuid.uuid4().hex[:8]}"
    assert box.probe("mknod", name, "c", "1", "3") == "ok"
    seen_from_host = Path(f"/proc/{target.init}/root{name}")
    assert seen_from_host.stat().st_nlink == 1
    return seen_from_host


def test_stale_listener_stops_a_real_request(box: Container, daemon: Daemon, target: Target,
                                             twin: Path, unharmed: None) -> None:
    """The real cookie, the container's init as the caller, a readable path in
    its memory, a used notification id: everything the daemon checks before it
    acts holds, except that the listener's task is gone.  ESRCH, nothing made.

    And when this second connection for the container ends, its twins keep their
    names (link count 1, bindable): only the container's last connection drops
    them (found by this test: every connection's end used to)."""
    assert not os.path.lexists(box.rootfs / "init")  # "init", relative to init's cwd, /
    ended = f"container {box.name}: disconnected"
    before = daemon.log().count(ended)
    wire = Wire(daemon.paths.socket)
    try:
        datagram = protocol.build(target.used_id, target.init, 133, kernel.AUDIT_ARCH_X86_64,
                                  (target.arg_start, 0o20666, os.makedev(1, 3)),
                                  init_pid=target.init, cookie=target.cookie, sizes=SIZES)
        for _ in range(3):
            reply = wire.exchange(datagram, target.lxc_fds())
            assert protocol.unpack_reply(reply) == (target.used_id, 0, -errno.ESRCH, 0)
    finally:
        wire.close()
    assert not os.path.lexists(box.rootfs / "init")
    # Its thread releases the container's twins' names (or, with the bug, drops them),
    # then logs the disconnect.
    wait_for(lambda: daemon.log().count(ended) > before, "the second connection to end")
    assert twin.stat().st_nlink == 1


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


def agent_cases(t: Target) -> st.SearchStrategy[tuple[bytes, list[str]]]:
    """(bytes to send, names of the fds to attach): junk, JSON, OCI states with
    seccompFd on fds of every kind (the stale listener included), huge ones."""
    kinds = st.lists(st.sampled_from(sorted(t.fds)), min_size=1, max_size=3)
    pid = st.sampled_from(t.pids) | st.integers(-5, 2**70) | st.text(max_size=5)

    def state(names: list[str], pid: object, init: object, meta: str, extra: object) -> bytes:
        fd_names = ["seccompFd", *(f"fd{i}" for i in range(1, len(names)))]
        return json.dumps({"ociVersion": "1.0.2", "fds": fd_names, "pid": pid, "metadata": meta,
                           "state": {"ociVersion": "1.0.2", "id": f"fuzz-{len(meta)}",
                                     "status": "creating", "pid": init, "bundle": "/nowhere",
                                     "annotations": extra}}).encode()

    states = kinds.flatmap(lambda names: st.tuples(
        st.builds(state, st.just(names), pid, pid,
                  st.sampled_from(["", "profile=default", "profile=../etc"]) | st.text(max_size=20),
                  st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3) | JSON),
        st.just(names)))
    huge = st.sampled_from([b"{" + b" " * 300_000 + b"}",
                            json.dumps({"state": {"id": "x" * 300_000}}).encode(),
                            b"[" * 100_000])
    return st.one_of(
        st.tuples(st.binary(min_size=1, max_size=2000), st.lists(st.sampled_from(sorted(t.fds)),
                                                                 max_size=4)),
        st.tuples(JSON.map(lambda doc: json.dumps(doc).encode()), st.just([])),
        states,
        st.tuples(huge, st.just([])))


@pytest.mark.usefixtures("unharmed")
def test_agent_socket_refuses_junk(daemon: Daemon, target: Target) -> None:
    """The agent never answers a state: it keeps the listener or hangs up.
    Every case must end in its hangup, in time, whatever was sent."""

    @AGENT_FUZZ
    @given(case=agent_cases(target))
    def one(case: tuple[bytes, list[str]]) -> None:
        payload, names = case
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(REPLY_TIMEOUT)
            sock.connect(str(daemon.paths.agent_socket))
            try:
                socket.send_fds(sock, [payload[:1]], [target.fds[name] for name in names])
                sock.sendall(payload[1:])
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(1) == b""
            except (BrokenPipeError, ConnectionResetError):
                pass  # hung up on while still sending (a state over the size bound)

    one()


# --- the symlink race -----------------------------------------------------------------------

RACE_SECONDS: Final = 4


def counts(line: str) -> dict[str, int]:
    words = line.split()
    return {key: int(value) for key, value in zip(words[::2], words[1::2], strict=True)}


def test_symlink_flip_never_leads_outside_the_container(box: Container, daemon: Daemon) -> None:
    """``flip`` swaps /tmp/DIR/comp between a directory and symlinks to "/" and
    to a "../" chain past the root while ``mknodloop`` mknods DIR/comp/LEAF.
    In the container, every node made is found in the directory or at /LEAF
    (lost == 0); on the host, none appears where a walk that followed the
    links in the daemon's root, or from its cwd, would have put it."""
    tag = uuid.uuid4().hex[:8]
    directory, leaf = f"/tmp/flip-{tag}", f"flipleaf-{tag}"
    cwd = Path(os.readlink(f"/proc/{daemon.pid}/cwd"))
    outside = [Path("/") / leaf, Path("/tmp") / leaf, cwd / leaf, cwd / directory.lstrip("/"),
               Path(directory), box.rootfs.parent / leaf, Path(box.lxc_path) / leaf]
    host_dir = box.rootfs / directory.lstrip("/")
    try:
        box.sh(f"mkdir {directory}")
        with box.background("flip", directory, str(RACE_SECONDS + 2)) as flipper:
            loop = counts(box.probe("mknodloop", f"{directory}/comp/{leaf}", str(RACE_SECONDS)))
            assert flipper.stdout is not None
            ready, _, _ = select.select([flipper.stdout], [], [], RACE_SECONDS + 10)
            flips = flipper.stdout.readline().decode().split() if ready else []
        assert flips[:1] == ["flips"] and int(flips[1]) > 0, flips
        escaped = [str(p) for p in outside if os.path.lexists(p)]
        assert not escaped, f"nodes outside the container's root: {escaped}"
        print(f"flips {flips[1]}, mknodloop {loop}")
        assert loop["lost"] == 0, loop
        # The race really ran through the supervisor (the kernel makes no c 1:3
        # here), through the directory and through the links.
        assert loop["indir"] > 0 and loop["atroot"] > 0, loop
        assert "ENOSYS" not in loop, loop
        assert daemon.alive() and "Traceback" not in daemon.log()
    finally:
        for path in outside:
            if os.path.lexists(path) and not path.is_dir():
                path.unlink()  # a failed run must not leave nodes on the host
        (box.rootfs / leaf).unlink(missing_ok=True)
        if host_dir.exists():
            # rmtree never follows the symlinks in there, whatever state they are in.
            shutil.rmtree(host_dir)
