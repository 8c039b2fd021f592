"""Pure parts of acting as the caller: /proc/PID/status fields and id maps."""

from __future__ import annotations

import os

from lxc_notify_plugin.admin.lxc_config import BEGIN, END, _split_managed
from lxc_notify_plugin.caller.task import status_field
from lxc_notify_plugin.request import IdMap
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


def test_id_maps_translate_to_inside() -> None:
    idmap = IdMap.parse("0 100000 65536\n")
    assert idmap.to_inside(100000) == 0 and idmap.to_inside(101000) == 1000
    assert idmap.to_inside(0) is None and idmap.to_inside(165536) is None


def test_long_status_is_read_whole(tmp_path: os.PathLike[str]) -> None:
    """A caller with thousands of groups has a status longer than 16 KiB."""
    from lxc_notify_plugin.caller.task import read_whole

    path = os.path.join(tmp_path, "status")
    groups = " ".join(str(100000 + i) for i in range(5000))
    text = (f"Name:\tx\nGroups:\t{groups}\nCapEff:\t000001ffffffffff\n").encode()
    with open(path, "wb") as f:
        f.write(text)
    fd = os.open(path, os.O_RDONLY)
    try:
        whole = read_whole(fd)
    finally:
        os.close(fd)
    assert len(whole) > 16384 and status_field(whole, b"CapEff") == b"000001ffffffffff"


def test_paths_through_the_callers_own_names() -> None:
    from lxc_notify_plugin.caller.task import AT_FDCWD, CallerCreds, rebase_self_path

    creds = CallerCreds(100000, 100000, (), 0, 0o22, "user:[1]", ns_tgid=42, ns_tid=43)
    cases = {
        b"/dev/fd/3/x": (3, b"x"), b"/proc/self/fd/5/a/b": (5, b"a/b"),
        b"/proc/thread-self/fd/7/n": (7, b"n"), b"/proc/42/fd/3/n": (3, b"n"),
        b"/proc/42/task/43/fd/3/n": (3, b"n"), b"/dev/fd/3": (3, b"."),
        b"/proc/self/cwd/x": (AT_FDCWD, b"x"), b"/proc/42/cwd": (AT_FDCWD, b"."),
        b"/proc/thread-self/root/x": (AT_FDCWD, b"/x"),
        b"/proc/self/status": (AT_FDCWD, b"/proc/42/status"),
        b"/proc/thread-self/x": (AT_FDCWD, b"/proc/42/task/43/x"),
        b"/proc/1/fd/3/n": (AT_FDCWD, b"/proc/1/fd/3/n"),  # another task's: not rebased
        b"/proc/42/task/44/fd/3/n": (AT_FDCWD, b"/proc/42/task/44/fd/3/n"),
        b"/tmp/x": (AT_FDCWD, b"/tmp/x"), b"rel/x": (AT_FDCWD, b"rel/x"),
    }
    for path, expected in cases.items():
        assert rebase_self_path(path, AT_FDCWD, creds) == expected, path
