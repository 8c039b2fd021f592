"""The systemd unit as rendered, and the daemon's side of Type=notify."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from lxc_notify_plugin import kernel
from lxc_notify_plugin.service import unit


def test_the_unit_grants_exactly_the_listed_capabilities() -> None:
    settings = dict(line.split("=", 1) for line in unit.render().splitlines()
                    if "=" in line and not line.startswith("#"))
    granted = settings["CapabilityBoundingSet"].split()
    assert granted == list(unit.CAPABILITIES)
    assert all(isinstance(getattr(kernel, name), int) for name in granted)
    assert "@" not in unit.render()  # every placeholder filled
    assert settings["Type"] == "notify" and settings["Before"] == "lxc.service"
    for absent in ("SystemCallFilter", "PrivateTmp", "ProtectSystem", "OOMScoreAdjust"):
        assert absent not in settings  # see the unit's comments: they would leak


def test_install_without_systemd_writes_the_unit_only(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unit, "systemd_is_init", lambda: False)
    done = unit.install(tmp_path)
    assert (tmp_path / unit.UNIT_NAME).read_text() == unit.render()
    assert "systemd is not this system's init" in done[-1]
    unit.remove(tmp_path)
    assert not (tmp_path / unit.UNIT_NAME).exists()


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
