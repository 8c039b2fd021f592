"""The dispatcher and the LXC transport's answers, driven without containers.

A fake transport (a socketpair feeding packed notices to a serving thread)
drives the same dispatcher and the real mknod handler, for every decision
that needs no privileges: the filter's leftovers and refused devices.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from lxc_notify_plugin import kernel
from lxc_notify_plugin.caller.thread import ThreadState
from lxc_notify_plugin.dispatch import Call, Dispatcher, Outcome, SupervisedContainer
from lxc_notify_plugin.handlers import Registered, registry
from lxc_notify_plugin.paths import PACKAGE_PROFILES
from lxc_notify_plugin.policy.effective import ContainerPolicy
from lxc_notify_plugin.policy.profile import load_profile
from lxc_notify_plugin.request import DONE, Answer, Notice
from lxc_notify_plugin.state import ContainerRecord
from lxc_notify_plugin.transport import lxc as protocol
from lxc_notify_plugin.transport.lxc import LxcProxy, _Session

COOKIE = b"c" * 64
X86_64, I386 = kernel.AUDIT_ARCH_X86_64, kernel.AUDIT_ARCH_I386
CHR = 0o20000


def make_container() -> SupervisedContainer:
    profile = load_profile("default", (PACKAGE_PROFILES,))
    return SupervisedContainer(ContainerRecord("box", COOKIE.decode(), "default"),
                     ContainerPolicy.from_profile(profile))


def with_handler(handle: object) -> Dispatcher:
    mknod = registry()["mknod"]
    return Dispatcher(handlers={"mknod": Registered(mknod.family, handle)})  # type: ignore[arg-type]


# --- a second transport: notices over a socketpair ----------------------------------------

_NOTICE = struct.Struct("=QIIi6Q")
_ANSWER = struct.Struct("=qiB")


class FakeTransport:
    """Reads packed notices from one end of a socketpair and writes answers back,
    on a thread of its own, through the same Dispatcher the real transports use."""

    def __init__(self, dispatcher: Dispatcher, container: SupervisedContainer) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.dispatcher, self.container = dispatcher, container
        self.thread = threading.Thread(target=self._serve)
        self.thread.start()

    def _serve(self) -> None:
        caller = ThreadState()
        try:
            while data := self.theirs.recv(_NOTICE.size):
                notif_id, tid, arch, nr, *args = _NOTICE.unpack(data)
                notice = Notice(notif_id, tid, arch, nr, tuple(args))
                answer = self.dispatcher.answer(self.container, notice, caller, os.getpid(),
                                                listener_fd=-1)
                self.theirs.send(_ANSWER.pack(answer.val, answer.error, answer.let_kernel_decide))
        finally:
            caller.close()

    def ask(self, nr: int, args: tuple[int, ...], arch: int = X86_64) -> Answer:
        padded = (*args, *(0,) * (6 - len(args)))
        self.ours.send(_NOTICE.pack(7, os.getpid(), arch, nr, *padded))
        val, error, let_kernel_decide = _ANSWER.unpack(self.ours.recv(_ANSWER.size))
        return Answer(val, error, bool(let_kernel_decide))

    def close(self) -> None:
        self.ours.close()
        self.thread.join()
        self.theirs.close()


@pytest.fixture
def fake() -> Iterator[FakeTransport]:
    transport = FakeTransport(Dispatcher(), make_container())
    try:
        yield transport
    finally:
        transport.close()


def test_a_second_transport_drives_the_real_mknod_handler(fake: FakeTransport) -> None:
    kernel_decides = Answer(let_kernel_decide=True)
    # /dev/tty1 is not in the default profile: the kernel's own answer (EPERM there).
    assert fake.ask(133, (0, CHR | 0o600, os.makedev(4, 1))) == kernel_decides
    # A whiteout never needs us; a FIFO is not ours to judge.
    assert fake.ask(259, (0xFFFFFF9C, 0, CHR, 0)) == kernel_decides
    assert fake.ask(133, (0, 0o10600, 0)) == kernel_decides
    # An unknown call (mount) and an unknown arch go to the kernel too.
    assert fake.ask(165, (0, 0, 0)) == kernel_decides
    assert fake.ask(133, (0, CHR, os.makedev(4, 1)), arch=kernel.AUDIT_ARCH_AARCH64) \
        == kernel_decides
    # Judged and handed back (tty1), none of ours (whiteout, FIFO), unknown to us.
    assert dict(fake.container.stats) == {"kernel": 1, "ignored": 2, "unknown": 2}


def test_a_handler_bug_is_answered_enosys_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken(call: Call) -> Answer:
        raise ZeroDivisionError("a bug")

    transport = FakeTransport(with_handler(broken), make_container())
    try:
        with caplog.at_level(logging.ERROR):
            assert transport.ask(133, (0, CHR, 1)) == Answer(error=errno.ENOSYS)
    finally:
        transport.close()
    assert "supervisor error" in caplog.text and "ZeroDivisionError" in caplog.text


def test_errors_are_classified_and_hooks_see_each_request() -> None:
    seen: list[Outcome] = []
    raised: list[BaseException] = [OSError(errno.EACCES, "no"), OSError(errno.ESRCH, "gone")]

    def failing(call: Call) -> Answer:
        raise raised.pop(0)

    dispatcher = with_handler(failing)
    dispatcher.hooks.append(seen.append)
    transport = FakeTransport(dispatcher, make_container())
    try:
        assert transport.ask(133, (0, CHR, 1)).error == errno.EACCES
        assert transport.ask(133, (0, CHR, 1)).error == errno.ESRCH
    finally:
        transport.close()
    assert [(o.syscall, o.outcome, o.error) for o in seen] == [
        ("mknod", "errno", errno.EACCES), ("mknod", "gone", errno.ESRCH)]
    assert dict(transport.container.stats) == {"errno": 1, "gone": 1}


def test_i386_arguments_are_32_bits_wide() -> None:
    seen: list[tuple[str, tuple[int, ...]]] = []

    def record(call: Call) -> Answer:
        seen.append((call.request.syscall, call.request.args))
        return Answer(error=errno.EXDEV)

    transport = FakeTransport(with_handler(record), make_container())
    try:
        garbage = 0xDEAD_BEEF_0000_0000
        assert transport.ask(14, (garbage | 0x1000, CHR, 3), arch=I386).error == errno.EXDEV
        assert transport.ask(297, (0xFFFFFF9C, 0x2000, CHR, 3), arch=I386).error == errno.EXDEV
        assert transport.ask(133, (garbage | 0x1000, CHR, 3)).error == errno.EXDEV
    finally:
        transport.close()
    assert seen == [("mknod", (0x1000, CHR, 3, 0, 0, 0)),
                    ("mknodat", (0xFFFFFF9C, 0x2000, CHR, 3, 0, 0)),
                    ("mknod", (garbage | 0x1000, CHR, 3, 0, 0, 0))]


# --- the LXC transport's own refusals -----------------------------------------------------


def lxc_exchange(tmp_path: Path, cookie: bytes, datagram: bytes | None = None,
                 dispatcher: Dispatcher | None = None, dev: int = os.makedev(4, 1),
                 sink_fd: int = -1) -> tuple[bytes | None, list[bytes]]:
    """What ``_reply`` returned for one datagram, and what it sent."""
    container = make_container()
    sizes = kernel.notif_sizes()
    proxy = LxcProxy(tmp_path / "s", dispatcher or Dispatcher(),
                     lambda c: container if c == COOKIE else None, sizes)
    raw = datagram or protocol.build(9, os.getpid(), 133, X86_64, (0, CHR, dev),
                                     init_pid=os.getpid(), cookie=cookie, sizes=sizes)
    returned: list[bytes | None] = []
    sent: list[bytes] = []

    def serve() -> None:  # on its own thread: ThreadState unshares its fs state
        caller = ThreadState()
        try:
            returned.append(proxy._reply(raw, [0, 1, 2], 0, _Session(1), caller, sent.append,
                                         sink_fd))
        finally:
            caller.close()

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    return returned[0], sent


def lxc_reply(tmp_path: Path, cookie: bytes, datagram: bytes | None = None) -> bytes:
    """The one reply a datagram gets, sent or returned to be sent."""
    returned, sent = lxc_exchange(tmp_path, cookie, datagram)
    replies = sent + ([returned] if returned is not None else [])
    assert len(replies) == 1, replies
    return replies[0]


def test_lxc_unknown_cookie_gets_enosys(tmp_path: Path) -> None:
    reply = lxc_reply(tmp_path, b"x" * 64)
    assert protocol.unpack_reply(reply) == (9, 0, -errno.ENOSYS, 0)


def test_lxc_known_cookie_reaches_the_dispatcher(tmp_path: Path) -> None:
    reply = lxc_reply(tmp_path, COOKIE)
    assert protocol.unpack_reply(reply) == (9, 0, 0, kernel.SECCOMP_USER_NOTIF_FLAG_CONTINUE)


def test_lxc_garbage_gets_the_unparseable_reply(tmp_path: Path) -> None:
    assert lxc_reply(tmp_path, COOKIE, b"\xff" * 200) == protocol.UNPARSEABLE_REPLY


# --- a refused call costs its decision: judged first, answered before the bookkeeping ------


class _NoCallerReads:
    """A thread state that fails the test if the dispatcher looks at the caller."""

    host_proc_fd = -1
    rests = 0

    def view(self, name: str, init_pid: int) -> object:
        raise AssertionError("a judged call read the caller's container")

    def rest(self) -> None:
        self.rests += 1


def test_a_refused_device_is_answered_from_the_notice_and_policy_first() -> None:
    order: list[str] = []
    seen: list[Outcome] = []
    container = make_container()

    def hook(outcome: Outcome) -> None:
        order.append("hook")
        seen.append(outcome)

    def send(answer: Answer) -> None:
        order.append(f"send, counted {sum(container.counts().values())}")

    dispatcher = Dispatcher(hooks=(hook,))
    path = ctypes.create_string_buffer(b"/dev/tty-refused")
    notice = Notice(5, threading.get_native_id(), X86_64, 259,
                    (0xFFFFFF9C, ctypes.addressof(path), CHR | 0o640, os.makedev(4, 1), 0, 0))
    thread = _NoCallerReads()
    answer = dispatcher.answer(container, notice, cast(ThreadState, thread),
                               os.getpid(), listener_fd=-1, send=send)
    assert answer == Answer(let_kernel_decide=True)
    # The thread rests after a refusal too: a pin its actors left goes (Actors.rest).
    assert thread.rests == 1
    # Sent before it was counted; then counted and told to the hooks with its
    # arguments from the notice (the caller's memory is not read for its path).
    assert order == ["send, counted 0", "hook"] and container.counts() == {"kernel": 1}
    assert (seen[0].syscall, seen[0].outcome) == ("mknodat", "kernel")
    assert seen[0].arguments == {"dev": "c 4:1", "mode": "0640"}

    # Without an audit log nothing is kept for it.
    dispatcher.keeps_details = False
    dispatcher.answer(container, notice, cast(ThreadState, _NoCallerReads()), os.getpid(),
                      listener_fd=-1, send=send)
    assert seen[1].arguments == {}


def test_a_failed_send_is_counted_and_raised() -> None:
    seen: list[Outcome] = []
    dispatcher = Dispatcher(hooks=(seen.append,))
    container = make_container()
    notice = Notice(6, os.getpid(), X86_64, 133, (0, CHR, os.makedev(4, 1), 0, 0, 0))

    def send(answer: Answer) -> None:
        raise BrokenPipeError(errno.EPIPE, "the monitor went away")

    with pytest.raises(BrokenPipeError):
        dispatcher.answer(container, notice, cast(ThreadState, _NoCallerReads()), os.getpid(),
                          listener_fd=-1, send=send)
    assert container.counts() == {"kernel": 1} and [o.outcome for o in seen] == ["kernel"]


def test_lxc_sends_the_answer_itself(tmp_path: Path) -> None:
    """A notification the dispatcher answers is sent by it, as soon as it is
    known, and _reply returns nothing more to send."""
    returned, sent = lxc_exchange(tmp_path, COOKIE)
    assert returned is None and len(sent) == 1
    assert protocol.unpack_reply(sent[0]) == (9, 0, 0, kernel.SECCOMP_USER_NOTIF_FLAG_CONTINUE)


def test_lxc_sends_nothing_more_for_a_request_its_actor_answered(tmp_path: Path) -> None:
    """The connection is offered to the handler (EarlyReply: its actor sends the
    "done" datagram itself); once it has, the transport sends no second one, and
    the request is counted and audited as any other."""
    offered: list[tuple[int, bytes]] = []

    def answered_by_its_actor(call: Call) -> Answer:
        early = call.request.early
        assert early is not None
        offered.append((early.sink_fd, early.done()))
        early.answered = True
        return DONE

    seen: list[Outcome] = []
    dispatcher = with_handler(answered_by_its_actor)
    dispatcher.hooks.append(seen.append)
    returned, sent = lxc_exchange(tmp_path, COOKIE, dispatcher=dispatcher,
                                  dev=os.makedev(1, 3), sink_fd=7)
    assert returned is None and sent == []
    assert len(offered) == 1 and offered[0][0] == 7
    assert protocol.unpack_reply(offered[0][1]) == (9, 0, 0, 0)
    assert [o.outcome for o in seen] == ["done"]
