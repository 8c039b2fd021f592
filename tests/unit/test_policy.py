"""Profiles, device decisions and the compiled LXC policy: plain data, no privileges."""

from __future__ import annotations

from pathlib import Path

import pytest

from lxc_notify_plugin.errors import ConfigError
from lxc_notify_plugin.paths import PACKAGE_PROFILES
from lxc_notify_plugin.policy.devices import DevicePolicy, needs_emulation
from lxc_notify_plugin.policy.lxc_policy import compile_policy
from lxc_notify_plugin.policy.profile import load_profile, parse_profile

DEFAULT = load_profile("default", (PACKAGE_PROFILES,))


@pytest.mark.parametrize(("kind", "major", "minor", "emulate"), [
    ("c", 1, 3, True), ("c", 1, 5, True), ("c", 1, 7, True), ("c", 1, 8, True),
    ("c", 1, 9, True), ("c", 5, 0, True), ("c", 5, 1, True), ("c", 5, 2, True),
    ("c", 0, 0, False),  # whiteout: the kernel allows it itself
    ("c", 1, 1, False),  # /dev/mem
    ("c", 4, 1, False), ("c", 10, 229, False), ("b", 1, 3, False), ("b", 7, 0, False),
])
def test_default_profile_allows_what_lxd_allows(kind: str, major: int, minor: int,
                                                emulate: bool) -> None:
    assert needs_emulation(DevicePolicy.from_profile(DEFAULT), kind, major, minor) is emulate


def test_minor_ranges() -> None:
    profile = parse_profile('[[devices]]\ntype = "b"\nmajor = 7\nminor = [0, 7]\n', "loop.toml")
    policy = DevicePolicy.from_profile(profile)
    assert policy.allows("b", 7, 0) and policy.allows("b", 7, 7)
    assert not policy.allows("b", 7, 8) and not policy.allows("c", 7, 0)


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("name = ", None, "invalid TOML"),
    ("colour = 1", "colour", "unknown key"),
    ("[intercept]\nmount = true", "intercept.mount", "unknown key"),
    ("[intercept]\nmknod = 1", "intercept.mknod", "expected a boolean"),
    ("[[devices]]\ntype = 'x'\nmajor = 1\nminor = 3", "devices[0].type", "must be"),
    ("[[devices]]\ntype = 'c'\nmajor = 4096\nminor = 3", "devices[0].major", "outside"),
    ("[[devices]]\ntype = 'c'\nmajor = 1\nminor = 1048576", "devices[0].minor", "outside"),
    ("[[devices]]\ntype = 'c'\nmajor = 1\nminor = [5, 3]", "devices[0].minor", "empty"),
    ("[[devices]]\ntype = 'c'\nmajor = true\nminor = 3", "devices[0].major", "boolean"),
    ("[[devices]]\ntype = 'c'\nminor = 3", "devices[0].major", "missing"),
    ("[[devices]]\ntype = 'c'\nmajor = 1\nminor = 3\nextra = 1", "devices[0].extra",
     "unknown key"),
])
def test_bad_profiles_name_file_and_key(text: str, key: str | None, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_profile(text, "/etc/lxc-notify/profiles/bad.toml")
    assert raised.value.file == "/etc/lxc-notify/profiles/bad.toml"
    assert raised.value.key == key
    assert reason in raised.value.reason
    assert str(raised.value).startswith("/etc/lxc-notify/profiles/bad.toml")


def test_admin_profiles_override_shipped_ones(tmp_path: Path) -> None:
    (tmp_path / "default.toml").write_text('name = "default"\ndescription = "mine"\n')
    assert load_profile("default", (tmp_path, PACKAGE_PROFILES)).description == "mine"
    with pytest.raises(ConfigError, match="no such profile"):
        load_profile("absent", (tmp_path, PACKAGE_PROFILES))


def test_compiled_policy_traps_only_device_nodes() -> None:
    text = compile_policy(DEFAULT)
    lines = text.splitlines()
    assert lines[:2] == ["2", "denylist"]
    notify = [line for line in lines if " notify " in line]
    assert notify == [
        "mknod notify [1,8192,SCMP_CMP_MASKED_EQ,61440]",
        "mknod notify [1,24576,SCMP_CMP_MASKED_EQ,61440]",
        "mknodat notify [2,8192,SCMP_CMP_MASKED_EQ,61440]",
        "mknodat notify [2,24576,SCMP_CMP_MASKED_EQ,61440]",
    ]
    assert "kexec_load errno 1" in lines  # LXC's own default denylist is kept
