"""The effective policy: checks that only hold once the keys are laid over the profile."""

from __future__ import annotations

import pytest

from lxc_notify_plugin.errors import ConfigError
from lxc_notify_plugin.policy import keys as lxd
from lxc_notify_plugin.policy import mount
from lxc_notify_plugin.policy.effective import ContainerPolicy
from lxc_notify_plugin.policy.profile import Profile, parse_profile

P = lxd.PREFIX
FILE = "/var/lib/lxc-notify/containers/c1.json"


def profile(mount: str) -> Profile:
    return parse_profile(f"[mount]\n{mount}\n", "mine.toml")


@pytest.mark.parametrize(("mount", "config", "key"), [
    ('allowed = ["ext4"]', {P + "mount.fuse": "ext4=fuse2fs"}, P + "mount.fuse"),
    ('fuse = { ext4 = "fuse2fs" }', {P + "mount.allowed": "xfs,ext4"}, P + "mount.allowed"),
])
def test_a_key_cannot_put_a_profile_filesystem_in_both(mount: str, config: dict[str, str],
                                                       key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ContainerPolicy.from_profile(profile(mount), config, FILE)
    assert (raised.value.file, raised.value.key) == (FILE, key)
    assert "ext4 cannot be both in mount.allowed and mount.fuse" in raised.value.reason


def test_keys_that_replace_the_conflicting_profile_value_are_fine() -> None:
    # The key replaces the profile's list, so the profile's ext4 is gone.
    policy = ContainerPolicy.from_profile(profile('allowed = ["ext4"]'),
                                          {P + "mount.allowed": "xfs",
                                           P + "mount.fuse": "ext4=fuse2fs"}, FILE)
    assert policy.of(mount.FAMILY).allowed == ("xfs",)
    assert policy.of(mount.FAMILY).fuse == (("ext4", "fuse2fs"),)
    policy = ContainerPolicy.from_profile(profile('allowed = ["ext4"]'),
                                          {P + "mount.fuse": "xfs=fuse-xfs"}, FILE)
    mounts = policy.of(mount.FAMILY)
    assert (mounts.allowed, mounts.fuse) == (("ext4",), (("xfs", "fuse-xfs"),))
