"""Pure parts of acting as the caller: /proc/PID/status fields and id maps."""

from __future__ import annotations

import os

from lxc_notify_plugin.caller import IdMap, status_field
from lxc_notify_plugin.start.lxc import BEGIN, END, _split_managed
from lxc_notify_plugin.state import ContainerRecord

STATUS = (b"Name:\tnodeprobe\nUmask:\t0022\nState:\tS (sleeping)\n"
          b"Uid:\t100000\t100000\t100000\t100005\nGid:\t100000\t100000\t100000\t100007\n"
          b"Groups:\t100000 100010 \nCapEff:\t000001ffffffffff\nNoNewPrivs:\t0")


def test_status_fields() -> None:
    assert status_field(STATUS, b"Umask") == b"0022"
    assert status_field(STATUS, b"Uid").split()[3] == b"100005"
    assert status_field(STATUS, b"Groups").split() == [b"100000", b"100010"]
    assert int(status_field(STATUS, b"CapEff"), 16) >> 27 & 1 == 1
    assert status_field(STATUS, b"NoNewPrivs") == b"0"  # last line, no newline
    assert status_field(STATUS, b"Missing") == b""
    assert status_field(STATUS, b"Uid") != status_field(STATUS, b"Gid")


def test_status_of_this_process() -> None:
    with open(f"/proc/{os.getpid()}/status", "rb") as status:
        text = status.read()
    assert int(status_field(text, b"Uid").split()[3]) == os.geteuid()
    assert status_field(text, b"Umask")


def test_id_maps() -> None:
    idmap = IdMap.parse("         0     100000      65536\n")
    assert idmap.maps_host_id(100000) and idmap.maps_host_id(165535)
    assert not idmap.maps_host_id(0) and not idmap.maps_host_id(165536)


def test_managed_block_is_found_and_removed() -> None:
    text = f"a = 1\n{BEGIN}\nlxc.seccomp.profile = x\n{END}\nb = 2\n"
    kept, found = _split_managed(text)
    assert found and kept == ["a = 1", "b = 2"]
    assert _split_managed("a = 1\n") == (["a = 1"], False)


def test_container_record_round_trip() -> None:
    record = ContainerRecord("c1", "ab" * 32, "default")
    assert ContainerRecord.from_json(record.to_json(), "c1.json") == record
