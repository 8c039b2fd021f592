"""The systemd unit as rendered, and the daemon's side of Type=notify."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from lxc_notify_plugin import kernel
from lxc_notify_plugin.paths import Paths
from lxc_notify_plugin.service import unit


def test_the_unit_grants_exactly_the_listed_capabilities() -> None:
    settings = dict(line.split("=", 1) for line in unit.render().splitlines()
                    if "=" in line and not line.startswith("#"))
    granted = settings["CapabilityBoundingSet"].split()
    assert granted == list(unit.capabilities())
    assert all(isinstance(getattr(kernel, name), int) for name in granted)
    assert "@" not in unit.render()  # every placeholder filled
    assert settings["Type"] == "notify" and settings["Before"] == "lxc.service"
    for absent in ("SystemCallFilter", "PrivateTmp", "ProtectSystem", "OOMScoreAdjust"):
        assert absent not in settings  # see the unit's comments: they would leak


def test_install_without_systemd_writes_the_unit_only(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unit, "systemd_is_init", lambda: False)
    paths = Paths(socket=Path("/run/x/seccomp.sock"))
    done = unit.install(paths, tmp_path)
    assert (tmp_path / unit.UNIT_NAME).read_text() == unit.render()
    socket_unit = (tmp_path / unit.SOCKET_NAME).read_text()
    assert "ListenSequentialPacket=/run/x/seccomp.sock" in socket_unit
    assert "ListenStream=/run/x/oci-agent.sock" in socket_unit
    assert "systemd is not this system's init" in done[-1]
    unit.remove(tmp_path)
    assert not (tmp_path / unit.UNIT_NAME).exists()
    assert not (tmp_path / unit.SOCKET_NAME).exists()


def test_sockets_systemd_passes_are_taken_by_path_and_type(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    from lxc_notify_plugin.service import activation

    held = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    held.bind(str(tmp_path / "s.sock"))
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}  # another process's: not ours
    assert activation.inherited_sockets(env) == [] and env == {}
    sockets = [held]
    assert activation.take(sockets, tmp_path / "s.sock", socket.SOCK_STREAM) is None
    assert activation.take(sockets, tmp_path / "other.sock", socket.SOCK_SEQPACKET) is None
    assert activation.take(sockets, tmp_path / "s.sock", socket.SOCK_SEQPACKET) is held
    assert sockets == []
    held.close()


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_reaches_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         abstract: bool) -> None:
    from lxc_notify_plugin.service.activation import sd_notify

    name = f"lxc-notify-test-{tmp_path.name}" if abstract else str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name if abstract else name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name if abstract else name)
        sd_notify("READY=1")
        assert receiver.recv(64) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    sd_notify("READY=1")  # outside systemd: nothing, no error


class _FakeSystemctl:
    """subprocess.run for systemctl: records each command, fails the ones named in ``fail``."""

    def __init__(self, fail: str = "") -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        if self.fail and self.fail in argv:
            return subprocess.CompletedProcess(argv, 1, "", "Failed to enable unit: no\n")
        return subprocess.CompletedProcess(argv, 0, "", "Created symlink x -> y.\n")


def test_install_enables_the_unit_files_themselves(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A --unit-dir outside systemd's search path is only found by path (issue 19:
    # "Unit file lxc-notify.socket does not exist" under a real systemd).
    fake = _FakeSystemctl()
    monkeypatch.setattr(unit, "systemd_is_init", lambda: True)
    monkeypatch.setattr(subprocess, "run", fake)
    monkeypatch.chdir(tmp_path)
    done = unit.install(Paths(), Path("units"))
    folder = tmp_path / "units"
    assert fake.calls == [["systemctl", "daemon-reload"],
                          ["systemctl", "enable", "--now", str(folder / unit.SOCKET_NAME),
                           str(folder / unit.UNIT_NAME)]]
    assert "Created symlink x -> y." in done  # systemctl's own words reach the admin
    fake.calls.clear()
    unit.remove(Path("units"))
    assert fake.calls == [["systemctl", "disable", "--now", unit.UNIT_NAME, unit.SOCKET_NAME],
                          ["systemctl", "daemon-reload"]]
    assert not (folder / unit.UNIT_NAME).exists()


def test_a_refused_enable_is_an_error_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from lxc_notify_plugin import cli

    monkeypatch.setattr(unit, "systemd_is_init", lambda: True)
    monkeypatch.setattr(subprocess, "run", _FakeSystemctl(fail="enable"))
    config = tmp_path / "daemon.toml"
    config.write_text("")  # this machine's /etc/lxc-notify/daemon.toml plays no part
    status = cli.main(["service", "install", "--config", str(config),
                       "--unit-dir", str(tmp_path / "units")])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("lxc-notify: systemctl enable --now "), err
    assert "Failed to enable unit: no" in err and "Traceback" not in err
