"""Device allow-lists from udev metadata, with hotplug, against a real systemd-udevd."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lxc_notify_plugin.host.udev import RULES_FILE
from tests.lxc.conftest import Container, Daemon, supervised_container

LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81
RUN_RULES = Path("/run/udev/rules.d")


def udev_reload() -> None:
    subprocess.run(["udevadm", "control", "--reload"], check=True)


def settle() -> None:
    subprocess.run(["udevadm", "settle", "--timeout=30"], check=True)


def loop_ctl(request: int, number: int) -> None:
    fd = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, request, number)
    finally:
        os.close(fd)


def free_loop_numbers(count: int) -> list[int]:
    numbers = []
    for number in range(300, 1000):
        if not Path(f"/sys/block/loop{number}").exists():
            numbers.append(number)
            if len(numbers) == count:
                return numbers
    raise AssertionError("no free loop numbers")


def eventually(check: Callable[[], str], expected: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (got := check()) != expected:
        assert time.monotonic() < deadline, f"still {got!r}, wanted {expected!r}"
        time.sleep(0.1)


class Loops:
    """Loop devices this test adds (LOOP_CTL_ADD, so udev sees them appear)."""

    def __init__(self) -> None:
        self.added: list[int] = []

    def add(self, number: int) -> None:
        loop_ctl(LOOP_CTL_ADD, number)
        self.added.append(number)
        settle()

    def remove(self, number: int) -> None:
        loop_ctl(LOOP_CTL_REMOVE, number)
        self.added.remove(number)
        settle()

    def cleanup(self) -> None:
        for number in list(self.added):
            try:
                self.remove(number)
            except OSError as err:
                assert err.errno == errno.ENXIO, err


@pytest.fixture
def loops(udev_ready: None) -> Iterator[Loops]:
    loops = Loops()
    try:
        yield loops
    finally:
        loops.cleanup()


@pytest.fixture
def delegation(daemon: Daemon, nodeprobe: Path, loops: Loops
               ) -> Iterator[tuple[Container, int, int]]:
    """A container whose profile allows loop devices udev tags for it, and two free
    loop numbers: the first tagged by a test rule, the second not."""
    tagged, untagged = free_loop_numbers(2)
    profile = f"udevloop-{uuid.uuid4().hex[:6]}"
    rules = RUN_RULES / f"99-lxc-notify-test-{profile}.rules"
    profile_file = daemon.paths.admin_profiles / f"{profile}.toml"
    try:
        RUN_RULES.mkdir(parents=True, exist_ok=True)
        rules.write_text(f'SUBSYSTEM=="block", KERNEL=="loop{tagged}", TAG+="lxc_notify", '
                         f'ENV{{LXC_NOTIFY_PROFILES}}+="{profile} other"\n')
        udev_reload()
        daemon.paths.admin_profiles.mkdir(parents=True, exist_ok=True)
        profile_file.write_text(
            'extends = ["default"]\n[[udev]]\nsubsystem = "block"\ntag = "lxc_notify"\n'
            f'devnode = "/dev/loop*"\nproperties = {{ LXC_NOTIFY_PROFILES = "{profile}" }}\n')
        container = supervised_container(daemon, nodeprobe, profile=profile)
        try:
            yield container, tagged, untagged
        finally:
            container.destroy()
    finally:
        rules.unlink(missing_ok=True)
        udev_reload()
        profile_file.unlink(missing_ok=True)


def test_tagged_device_follows_hotplug(delegation: tuple[Container, int, int], loops: Loops,
                                       daemon: Daemon) -> None:
    box, tagged, untagged = delegation
    node = f"/tmp/loop{tagged}"
    assert box.probe("mknod", node, "b", "7", str(tagged)) == "EPERM"  # not on the host yet
    loops.add(tagged)
    loops.add(untagged)
    listed = daemon.cli("udev", "list").stdout
    assert f"/dev/loop{tagged}" in listed and f"/dev/loop{untagged} " not in listed
    eventually(lambda: box.probe("mknod", node, "b", "7", str(tagged)), "ok")
    assert box.probe("stat", node) == f"mode 60644 uid 0 gid 0 major 7 minor {tagged}"
    # Present on the host, same numbers range, but untagged: no rule allows it.
    assert box.probe("mknod", f"/tmp/loop{untagged}", "b", "7", str(untagged)) == "EPERM"
    # LOOP_CTL_REMOVE takes the device away (losetup -d would only detach it).
    loops.remove(tagged)
    eventually(lambda: box.probe("mknod", f"{node}-again", "b", "7", str(tagged)), "EPERM")


def test_shipped_rules_install_and_check(daemon: Daemon, udev_ready: None) -> None:
    RUN_RULES.mkdir(parents=True, exist_ok=True)
    installed = RUN_RULES / RULES_FILE.name
    # An admin's (or a crashed run's) copy there is put back afterwards.
    saved = installed.read_bytes() if installed.exists() else None
    try:
        out = daemon.cli("udev", "install", "--rules-dir", str(RUN_RULES)).stdout
        assert "udev reloaded its rules" in out
        test = subprocess.run(["udevadm", "test", "--action=add", "/sys/class/misc/fuse"],
                              capture_output=True, text=True, check=True)
        report = test.stdout + test.stderr
        assert f"Reading rules file: {installed}" in report
        assert not [line for line in report.splitlines() if f"{installed}:" in line], report
        assert "TAGS=:lxc_notify:" in report
        assert "LXC_NOTIFY_PROFILES=fuse docker" in report
        listed = daemon.cli("udev", "list").stdout
        assert any(line.split()[:3] == ["c", "10:229", "/dev/fuse"] and "fuse docker" in line
                   for line in listed.splitlines()), listed
    finally:
        if saved is None:
            installed.unlink(missing_ok=True)
        else:
            installed.write_bytes(saved)
        udev_reload()
        subprocess.run(["udevadm", "trigger", "--action=change", "--subsystem-match=misc"],
                       check=True)  # so /dev/fuse's tags follow the rules as they are again
        settle()


def test_without_udev_the_daemon_serves_static_entries(lxc_ready: None, nodeprobe: Path,
                                                       tmp_path: Path) -> None:
    blind = Daemon(tmp_path, udev_control=tmp_path / "no-udev-here")
    blind.start()
    try:
        container = supervised_container(blind, nodeprobe)
        try:
            assert container.probe("mknod", "/tmp/null", "c", "1", "3") == "ok"
        finally:
            container.destroy()
        listed = blind.cli("udev", "list")
        assert listed.returncode == 0 and "udev is not running" in listed.stderr
    finally:
        assert blind.stop() == 0
    log = blind.log()
    assert log.count("udev is not running") == 1
    assert "Traceback" not in log
