"""The supervisor's answer to each datagram, driven without sockets or containers."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from lxc_notify_plugin import kernel
from lxc_notify_plugin.caller import Request, SupervisorThread
from lxc_notify_plugin.handlers import Answer
from lxc_notify_plugin.paths import Paths
from lxc_notify_plugin.policy.effective import ContainerPolicy
from lxc_notify_plugin.policy.profile import Profile
from lxc_notify_plugin.state import ContainerRecord
from lxc_notify_plugin.supervisor import Container, Supervisor, _Session
from lxc_notify_plugin.transport import lxc as protocol

COOKIE = b"c" * 64


class OneContainer:
    def __init__(self) -> None:
        profile = Profile("t", "", "t.toml", frozenset({"mknod"}))
        self.container = Container(ContainerRecord("box", COOKIE.decode(), "t"),
                                   ContainerPolicy.from_profile(profile))

    def lookup(self, cookie: bytes) -> Container | None:
        return self.container if cookie == COOKIE else None


@pytest.fixture
def supervisor(tmp_path: Path) -> Supervisor:
    return Supervisor(Paths(socket=tmp_path / "s", state_dir=tmp_path / "state"),
                      registry=OneContainer())  # type: ignore[arg-type]


def answer(supervisor: Supervisor, nr: int, arch: int = kernel.AUDIT_ARCH_X86_64,
           cookie: bytes = COOKIE) -> tuple[int, int, int, int]:
    raw = protocol.build(9, os.getpid(), nr, arch, (0, 0o20666, os.makedev(1, 3)),
                         init_pid=os.getpid(), cookie=cookie, sizes=supervisor.sizes)
    session = _Session(1)
    session.thread = object()  # type: ignore[assignment]  # handlers here ignore it
    return protocol.unpack_reply(supervisor._answer(raw, [0, 1, 2], 0, session))


def test_a_handler_bug_is_answered_enosys_and_logged(
        supervisor: Supervisor, caplog: pytest.LogCaptureFixture) -> None:
    def broken(request: Request, thread: SupervisorThread, policy: ContainerPolicy) -> Answer:
        raise ZeroDivisionError("a bug")

    supervisor.handlers["mknod"] = broken
    with caplog.at_level(logging.ERROR):
        assert answer(supervisor, 133) == (9, 0, -errno.ENOSYS, 0)
    assert "supervisor error" in caplog.text and "ZeroDivisionError" in caplog.text


def test_handler_oserror_becomes_its_errno(supervisor: Supervisor) -> None:
    def denied(request: Request, thread: SupervisorThread, policy: ContainerPolicy) -> Answer:
        raise OSError(errno.EACCES, "no")

    supervisor.handlers["mknod"] = denied
    assert answer(supervisor, 133) == (9, 0, -errno.EACCES, 0)


def test_unknown_arch_and_unhandled_calls_go_to_the_kernel(supervisor: Supervisor) -> None:
    continue_ = (9, 0, 0, kernel.SECCOMP_USER_NOTIF_FLAG_CONTINUE)
    assert answer(supervisor, 133, arch=kernel.AUDIT_ARCH_AARCH64) == continue_
    assert answer(supervisor, 165) == continue_  # mount: not handled by this build


def test_unknown_cookie_gets_enosys(supervisor: Supervisor) -> None:
    assert answer(supervisor, 133, cookie=b"x" * 64) == (9, 0, -errno.ENOSYS, 0)


def test_i386_numbers_reach_the_mknod_handler(supervisor: Supervisor) -> None:
    seen = []

    def record(request: Request, thread: SupervisorThread, policy: ContainerPolicy) -> Answer:
        seen.append(request.syscall)
        return Answer(error=errno.EXDEV)

    supervisor.handlers["mknod"] = record
    supervisor.handlers["mknodat"] = record
    assert answer(supervisor, 14, arch=kernel.AUDIT_ARCH_I386)[2] == -errno.EXDEV
    assert answer(supervisor, 297, arch=kernel.AUDIT_ARCH_I386)[2] == -errno.EXDEV
    assert seen == ["mknod", "mknodat"]
