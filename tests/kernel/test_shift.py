"""Choosing how to shift a mount, against the real kernel: idmapped mounts work for
tmpfs here and not for ramfs, shiftfs is not in this kernel, and what a
filesystem type was found to use is learnt once.

Mounts are made detached (fsopen, fsmount) and never attached, in a forked
child: nothing outlives the test.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxc_notify_plugin import kernel
from lxc_notify_plugin.host.shift import IdmappedMounts, Shifter, Shiftfs, ShiftUnsupported
from tests.conftest import kernel_has_since
from tests.kernel.test_boundary import in_child


@pytest.fixture
def userns_pid() -> Iterator[int]:
    """A process in a new user namespace mapping its root to ours."""
    process = subprocess.Popen(["unshare", "--user", "--map-root-user", "sleep", "60"])
    try:
        deadline = 50
        while os.readlink(f"/proc/{process.pid}/ns/user") == os.readlink("/proc/self/ns/user"):
            deadline -= 1
            assert deadline, "unshare never entered its namespace"
            os.sched_yield()
            subprocess.run(["sleep", "0.02"], check=True)
        yield process.pid
    finally:
        process.kill()
        process.wait()


def detached(fs_type: str) -> int:
    fs_fd = kernel.fsopen(fs_type.encode())
    try:
        kernel.fsconfig(fs_fd, kernel.FSCONFIG_CMD_CREATE)
        return kernel.fsmount(fs_fd)
    finally:
        os.close(fs_fd)


class Recording:
    """A backend that says what it is told to, and counts its calls."""

    def __init__(self, name: str, unavailable: str | None = None, fails: int = 0) -> None:
        self.name = name
        self.why = unavailable
        self.fails = fails
        self.calls = 0

    def unavailable(self) -> str | None:
        return self.why

    def shift(self, mount_fd: int, userns_fd: int) -> int:
        self.calls += 1
        if self.fails:
            raise OSError(self.fails, os.strerror(self.fails))
        return mount_fd


def test_this_kernel_has_idmapped_mounts_and_no_shiftfs(tmp_path: Path) -> None:
    assert IdmappedMounts().unavailable() is None
    assert Shiftfs().unavailable() == "shiftfs is not in this kernel"
    listed = tmp_path / "filesystems"
    listed.write_text("nodev\tsysfs\n\text4\nnodev\tshiftfs\n")
    assert Shiftfs(str(listed)).unavailable() is None  # found at run time when present


def test_tmpfs_is_idmapped_and_ramfs_is_refused(userns_pid: int) -> None:
    def work() -> tuple[str, str | None, str, str | None, bool]:
        shifter = Shifter()
        userns_fd = os.open(f"/proc/{userns_pid}/ns/user", os.O_RDONLY)
        tmpfs, ramfs = detached("tmpfs"), detached("ramfs")
        if not kernel_has_since(6, 3):  # tmpfs takes an idmapping since 6.3
            try:
                shifter.shift("tmpfs", tmpfs, userns_fd)
                return ("idmapped", None, "", None, True)
            except ShiftUnsupported as err:
                return ("", shifter.learnt("tmpfs"), str(err), None, False)
        backend, attach_fd = shifter.shift("tmpfs", tmpfs, userns_fd)
        try:
            shifter.shift("ramfs", ramfs, userns_fd)
            refused = ""
        except ShiftUnsupported as err:
            refused = str(err)
        # A mount idmapped already is the kernel's EPERM: that mount's failure,
        # not a reason to stop using the backend for the type.
        try:
            shifter.shift("tmpfs", tmpfs, userns_fd)
            odd = True
        except OSError as err:
            odd = err.errno != errno.EPERM or isinstance(err, ShiftUnsupported)
        return (backend, shifter.learnt("tmpfs"), refused, shifter.learnt("ramfs"),
                odd or attach_fd != tmpfs)

    backend, learnt, refused, ramfs_learnt, odd = in_child(work)
    if not kernel_has_since(6, 3):
        assert "cannot shift tmpfs" in refused and not odd, refused
        return
    assert (backend, learnt) == ("idmapped", "idmapped")
    assert "cannot shift ramfs" in refused and "shiftfs is not in this kernel" in refused
    assert ramfs_learnt == ""
    assert not odd


def test_selection_prefers_in_order_and_learns_once() -> None:
    absent = Recording("first", unavailable="not here")
    refuses = Recording("second", fails=errno.EINVAL)
    works = Recording("third")
    shifter = Shifter([absent, refuses, works])
    assert shifter.learnt("ext4") is None
    assert shifter.shift("ext4", 7, 8) == ("third", 7)
    assert shifter.learnt("ext4") == "third"
    assert shifter.shift("ext4", 7, 8) == ("third", 7)
    assert (refuses.calls, works.calls) == (1, 2)  # the refusal was not asked again


def test_a_type_no_backend_shifts_is_refused_at_once_afterwards() -> None:
    refuses = Recording("only", fails=errno.EOPNOTSUPP)
    shifter = Shifter([refuses])
    for _ in range(3):
        with pytest.raises(ShiftUnsupported, match="only: vfat refuses it"):
            shifter.shift("vfat", 7, 8)
    assert refuses.calls == 1


def test_a_failure_of_one_mount_teaches_nothing() -> None:
    flaky = Recording("flaky", fails=errno.ENOMEM)
    shifter = Shifter([flaky])
    with pytest.raises(OSError) as raised:
        shifter.shift("ext4", 7, 8)
    assert raised.value.errno == errno.ENOMEM and not isinstance(raised.value, ShiftUnsupported)
    assert shifter.learnt("ext4") is None
