"""The systemd unit as rendered, and the daemon's side of Type=notify."""

from __future__ import annotations

import socket
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
    from lxc_notify_plugin.supervisor import sd_notify

    name = f"lxc-notify-test-{tmp_path.name}" if abstract else str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name if abstract else name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name if abstract else name)
        sd_notify("READY=1")
        assert receiver.recv(64) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    sd_notify("READY=1")  # outside systemd: nothing, no error
