"""LXD's keys: types, defaults, validation and layering over a profile."""

from __future__ import annotations

import pytest

from lxc_notify_plugin.errors import ConfigError
from lxc_notify_plugin.paths import PACKAGE_PROFILES
from lxc_notify_plugin.policy import keys as lxd
from lxc_notify_plugin.policy.catalog import built
from lxc_notify_plugin.policy.effective import ContainerPolicy
from lxc_notify_plugin.policy.profile import load_profile

P = lxd.PREFIX
FILE = "/var/lib/lxc-notify/containers/c1.json"


@pytest.mark.parametrize(("given", "stored"), [
    ("true", "true"), ("TRUE", "true"), ("1", "true"), ("yes", "true"), ("on", "true"),
    ("false", "false"), ("0", "false"), ("No", "false"), ("off", "false"),
])
def test_lxd_booleans(given: str, stored: str) -> None:
    assert lxd.normalize(P + "mknod", given, FILE) == stored


@pytest.mark.parametrize(("key", "value", "reason"), [
    (P + "mknod", "maybe", "not a boolean"),
    (P + "mknod", "", "not a boolean"),
    (P + "chmod", "true", "unknown key"),
    (P + "mount.allowed", "ext4,Bad!", "not a filesystem type name"),
    (P + "mount.fuse", "ext4", "not fs=fuse-program"),
    (P + "mount.fuse", "ext4=", "not fs=fuse-program"),
])
def test_bad_values(key: str, value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as raised:
        lxd.normalize(key, value, FILE)
    assert (raised.value.file, raised.value.key) == (FILE, key)
    assert reason in raised.value.reason


def test_lists_are_normalized() -> None:
    assert lxd.normalize(P + "mount.allowed", " ext4, xfs ,", FILE) == "ext4,xfs"
    assert lxd.normalize(P + "mount.fuse", "ext4 = fuse2fs", FILE) == "ext4=fuse2fs"


def test_keys_without_a_handler_are_refused_unless_off(unbuilt: str) -> None:
    # A build without the family still knows LXD's keys of it (its switch and
    # its other keys) and refuses them, rather than silently accepting them.
    specs = [spec for spec in lxd.known().values() if spec.family == unbuilt]
    assert {spec.name for spec in specs} > {P + unbuilt}
    for spec in specs:
        value = "true" if spec.kind == "bool" else "ext4"
        with pytest.raises(ConfigError, match=f"no {unbuilt} handler yet"):
            lxd.check_buildable(spec.name, value, FILE)
        if spec.kind == "bool":
            lxd.check_buildable(spec.name, "false", FILE)


def test_a_sub_key_of_a_family_this_build_lacks_needs_its_switch(unbuilt: str) -> None:
    sub_keys = [spec.name for spec in lxd.known().values()
                if spec.family == unbuilt and spec.name != P + unbuilt and spec.kind == "bool"]
    assert sub_keys
    for key in sub_keys:
        with pytest.raises(ConfigError, match=f"needs {P}{unbuilt}"):
            lxd.check_together({key: "true"}, FILE)
        lxd.check_together({key: "true", P + unbuilt: "true"}, FILE)


@pytest.mark.parametrize("key", sorted(spec.name for spec in lxd.known().values()
                                       if spec.family in built() and spec.kind == "bool"))
def test_keys_of_built_handlers_are_accepted(key: str) -> None:
    lxd.check_buildable(key, "true", FILE)


def test_a_filesystem_cannot_be_both_allowed_and_fuse() -> None:
    with pytest.raises(ConfigError, match="cannot be both"):
        lxd.check_together({P + "mount.allowed": "ext4,xfs", P + "mount.fuse": "ext4=fuse2fs"},
                           FILE)
    lxd.check_together({P + "mount.allowed": "xfs", P + "mount.fuse": "ext4=fuse2fs"}, FILE)


def test_keys_layer_over_the_profile_and_say_where_values_came_from() -> None:
    profile = load_profile("default", (PACKAGE_PROFILES,))
    plain = ContainerPolicy.from_profile(profile)
    assert plain.intercepts("mknod")
    settings = {s.name: s for s in plain.settings}
    assert settings["intercept.mknod"].source.endswith("default.toml")
    assert settings["intercept.mount"].source == "default"

    off = ContainerPolicy.from_profile(profile, {P + "mknod": "false"})
    assert not off.intercepts("mknod")
    settings = {s.name: s for s in off.settings}
    assert settings["intercept.mknod"].value == "false"
    assert settings["intercept.mknod"].source == f"key {P}mknod"
