"""The actor answers the caller itself once its node is made (``Actor.mknodat_answering``).

A real notification stands in for LXC's: a forked child calls mknodat under a
notify filter (``notifying_child``), and one end of a socketpair stands in for
LXC's connection, where the actor writes the "done" datagram.  What must hold
when that datagram arrives, since the caller's call returns right after it:
the node is there, and neither the actor nor the daemon's thread holds an fd
of the caller's directory (it would keep the directory's mount busy, and a
privileged caller's ``umount`` right after its ``mknod`` would be EBUSY).
A caller that left before the node was answered has it undone, and gets no
datagram; a refused node is an errno, and no datagram either.  The actor runs
in this process's own cgroups.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from lxc_notify_plugin import kernel
from lxc_notify_plugin.caller.actor import AbandonedNode, Actor, Identity
from lxc_notify_plugin.kernel.fd import OwnedFd
from lxc_notify_plugin.request import EarlyReply
from tests.kernel.conftest import holds
from tests.kernel.test_seccomp_notify import child_result, mknodat_call, notifying_child

DONE = b"the datagram that says done"
ROOT = Identity(0, 0, (), 0o022, 1 << kernel.CAP_MKNOD)
OUTSIDER = 23456  # owns nothing here


def _wait_until_receiving(thread: threading.Thread) -> None:
    """Until ``thread`` waits in recvfrom (x86_64: 45), as /proc says."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/self/task/{thread.native_id}/syscall") as f:
            if f.read().split()[0] == "45":
                return
        time.sleep(0.001)
    raise AssertionError("the order was never sent")


def _directory(path: Path) -> OwnedFd:
    return OwnedFd(os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))


def _receiver(sink: socket.socket, directory: Path, actor: Actor) -> tuple[threading.Thread,
                                                                          list[object]]:
    """A thread that waits for the datagram and, the moment it arrives, looks at
    who still holds the directory."""
    seen: list[object] = []

    def receive() -> None:
        data = sink.recv(4096)
        seen.extend([data, holds(actor.process.pid, directory), holds(os.getpid(), directory),
                     (directory / "node").exists()])

    thread = threading.Thread(target=receive)
    thread.start()
    return thread, seen


def test_the_actor_answers_once_nothing_of_the_callers_is_held(actor: Actor,
                                                               tmp_path: Path) -> None:
    for attempt in range(50):
        directory = tmp_path / f"dir-{attempt}"
        directory.mkdir()
        path = os.fsencode(directory / "unused")
        sink, lxc = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with sink, lxc, notifying_child(mknodat_call(path)) as (_, listener, channel):
            notif = kernel.notif_recv(listener)
            early = EarlyReply(lxc.fileno(), lambda: DONE)
            thread, seen = _receiver(sink, directory, actor)
            held = _directory(directory)
            with held:
                assert actor.mknodat_answering(held, b"node", stat.S_IFCHR | 0o600,
                                               os.makedev(1, 3), ROOT, 0, early, listener,
                                               notif.id)
                assert held.fd == -1  # given up before the actor answered
            thread.join(10)
            assert seen == [DONE, False, False, True], f"attempt {attempt}"
            assert early.answered
            # What LXC's monitor does with the datagram: the kernel's answer.
            kernel.notif_send(listener, kernel.seccomp_notif_resp(notif.id, 0, 0, 0))
            assert child_result(channel) == (0, 0)
        assert stat.S_ISCHR((directory / "node").stat().st_mode)


def test_a_caller_that_left_has_its_node_undone_and_no_answer(actor: Actor,
                                                              tmp_path: Path) -> None:
    sink, lxc = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sink, lxc, notifying_child(mknodat_call(b"/unused")) as (pid, listener, _):
        notif = kernel.notif_recv(listener)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        early = EarlyReply(lxc.fileno(), lambda: DONE)
        with _directory(tmp_path) as held, pytest.raises(AbandonedNode):
            actor.mknodat_answering(held, b"node", stat.S_IFCHR | 0o600, os.makedev(1, 3),
                                    ROOT, 0, early, listener, notif.id)
        assert not early.answered
        sink.setblocking(False)
        with pytest.raises(BlockingIOError):
            sink.recv(4096)
    assert not (tmp_path / "node").exists()


def test_a_refused_node_is_an_errno_and_a_retry_with_the_callers_dac_caps(
        actor: Actor, tmp_path: Path) -> None:
    """Refused on the directory's permissions (EACCES), the node is tried again with
    the capabilities the daemon says reach the directory; without any, EACCES is the
    caller's, and the actor sends nothing (the daemon answers)."""
    tmp_path.chmod(0o755)  # root's: an outsider may not write
    outsider = Identity(OUTSIDER, OUTSIDER, (), 0o022, 1 << kernel.CAP_MKNOD)
    sink, lxc = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sink, lxc:
        sink.setblocking(False)
        for retry_caps, expected in ((0, errno.EACCES), (1 << kernel.CAP_DAC_OVERRIDE, 0)):
            with notifying_child(mknodat_call(b"/unused")) as (_, listener, channel):
                notif = kernel.notif_recv(listener)
                early = EarlyReply(lxc.fileno(), lambda: DONE)
                with _directory(tmp_path) as held:
                    if expected:
                        with pytest.raises(PermissionError) as raised:
                            actor.mknodat_answering(held, b"node", stat.S_IFCHR | 0o600,
                                                    os.makedev(1, 3), outsider, retry_caps,
                                                    early, listener, notif.id)
                        assert raised.value.errno == expected
                        assert not early.answered
                        with pytest.raises(BlockingIOError):
                            sink.recv(4096)
                    else:
                        assert actor.mknodat_answering(held, b"node", stat.S_IFCHR | 0o600,
                                                       os.makedev(1, 3), outsider, retry_caps,
                                                       early, listener, notif.id)
                        assert sink.recv(4096) == DONE
                kernel.notif_send(listener, kernel.seccomp_notif_resp(notif.id, 0, 0, 0))
                assert child_result(channel) == (0, 0)
    assert (tmp_path / "node").stat().st_uid == OUTSIDER


@pytest.mark.parametrize("answered_meanwhile", [False, True])
def test_an_actor_that_dies_past_go_is_taken_as_answering_only_if_the_caller_left(
        actor: Actor, tmp_path: Path, answered_meanwhile: bool) -> None:
    """Once the actor has its go, it may have answered before it died: the daemon
    then sends nothing (a second datagram would be read by LXC's monitor as the
    answer to the next call), unless the caller visibly still waits."""
    sink, lxc = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with sink, lxc, notifying_child(mknodat_call(b"/unused")) as (_, listener, channel):
        notif = kernel.notif_recv(listener)
        early = EarlyReply(lxc.fileno(), lambda: DONE)
        os.kill(actor.process.pid, signal.SIGSTOP)  # it gets the order, never acts on it
        failed: list[BaseException] = []

        def order() -> None:
            with _directory(tmp_path) as held:
                try:
                    actor.mknodat_answering(held, b"node", stat.S_IFCHR | 0o600,
                                            os.makedev(1, 3), ROOT, 0, early, listener,
                                            notif.id)
                except BaseException as err:
                    failed.append(err)

        thread = threading.Thread(target=order)
        thread.start()
        _wait_until_receiving(thread)  # the order and its go are sent
        if answered_meanwhile:  # as LXC's monitor would, with the actor's datagram
            kernel.notif_send(listener, kernel.seccomp_notif_resp(notif.id, 0, 0, 0))
            assert child_result(channel) == (0, 0)
        os.kill(actor.process.pid, signal.SIGKILL)
        thread.join(10)
        assert len(failed) == 1 and "actor" in str(failed[0])
        assert early.answered is answered_meanwhile
        if not answered_meanwhile:
            kernel.notif_send(listener, kernel.seccomp_notif_resp(notif.id, 0, 0, 0))
