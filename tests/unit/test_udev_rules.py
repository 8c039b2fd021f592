"""[[udev]] profile rules against plain device records: the decision, from a table."""

from __future__ import annotations

import pytest

from lxc_notify_plugin.errors import ConfigError
from lxc_notify_plugin.policy.mknod import DevicePolicy, UdevDevice, choose
from lxc_notify_plugin.policy.profile import parse_profile

LOOP = UdevDevice("b", 7, 300, "block", "/dev/loop300", frozenset({"lxc_notify"}),
                  {"LXC_NOTIFY_PROFILES": "loop docker"})
UNTAGGED = UdevDevice("b", 7, 301, "block", "/dev/loop301", frozenset(), {})
FUSE = UdevDevice("c", 10, 229, "misc", "/dev/fuse", frozenset({"lxc_notify"}),
                  {"LXC_NOTIFY_PROFILES": "fuse"})


class Host(dict[tuple[str, int, int], UdevDevice]):
    def __init__(self, *devices: UdevDevice) -> None:
        super().__init__({(d.kind, d.major, d.minor): d for d in devices})


POLICY = DevicePolicy.from_profile(parse_profile(
    '[[udev]]\nsubsystem = "block"\ntag = "lxc_notify"\ndevnode = "/dev/loop*"\n'
    'properties = { LXC_NOTIFY_PROFILES = "loop" }\npath = "/dev/*"\n', "loop.toml"))


@pytest.mark.parametrize(("host", "key", "allowed"), [
    (Host(LOOP), ("b", 7, 300), True),
    (Host(), ("b", 7, 300), False),  # gone from the host: refused at once
    (Host(LOOP), ("c", 7, 300), False),  # right numbers, wrong type
    (Host(UNTAGGED), ("b", 7, 301), False),  # present, numbers in range, untagged
    (Host(FUSE), ("c", 10, 229), False),  # tagged, but another subsystem and profile
    (None, ("b", 7, 300), False),  # no udev at all: static entries only
])
def test_udev_rule_decisions(host: Host | None, key: tuple[str, int, int],
                             allowed: bool) -> None:
    assert POLICY.allows(*key, host) is allowed


def test_a_udev_rule_stands_for_exactly_that_device() -> None:
    (rule,) = POLICY.candidates("b", 7, 300, Host(LOOP))
    assert (rule.kind, rule.major, rule.minor_low, rule.minor_high) == ("b", 7, 300, 300)
    assert choose((rule,), "/dev/loop300") == rule and choose((rule,), "/tmp/x") is None


def test_property_match_is_a_glob_or_a_word() -> None:
    policy = DevicePolicy.from_profile(parse_profile(
        '[[udev]]\nproperties = { LXC_NOTIFY_PROFILES = "dock*" }\n', "p.toml"))
    assert policy.allows("b", 7, 300, Host(LOOP))
    assert not policy.allows("c", 10, 229, Host(FUSE))


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("[[udev]]\ncomment = 'all'", "udev[0]", "matches every device"),
    ("[[udev]]\ndevnode = '/tmp/x'", "udev[0].devnode", "under /dev/"),
    ("[[udev]]\ntag = 3", "udev[0].tag", "expected a string"),
    ("[[udev]]\ntag = 'x'\nmajor = 7", "udev[0].major", "unknown key"),
    ("[[udev]]\nproperties = { A = 1 }", "udev[0].properties.A", "expected a string"),
])
def test_bad_udev_rules(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_profile(text, "u.toml")
    assert raised.value.key == key and reason in raised.value.reason
