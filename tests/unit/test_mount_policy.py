"""The mount family's decisions that need no kernel: which calls, which flags, which options."""

from __future__ import annotations

import errno

from lxc_notify_plugin import kernel
from lxc_notify_plugin.policy import mount
from lxc_notify_plugin.policy.effective import ContainerPolicy
from lxc_notify_plugin.policy.lxc_policy import check_with_libseccomp, compile_policy
from lxc_notify_plugin.policy.mount import MountPolicy
from lxc_notify_plugin.policy.profile import parse_profile


def test_only_new_superblocks_are_trapped() -> None:
    rule, magic, fsopen = mount.filter_rules(mount.MountPolicy())
    # Calls with the old magic (its bits include MS_PRIVATE and MS_SLAVE) too.
    assert magic.args[0].value == kernel.MS_MGC_VAL and magic.args[0].mask == kernel.MS_MGC_MSK
    assert rule.syscall == "mount" and rule.args[0].index == 3 and rule.args[0].value == 0
    for flag in (kernel.MS_BIND, kernel.MS_REMOUNT, kernel.MS_MOVE, kernel.MS_SHARED,
                 kernel.MS_PRIVATE, kernel.MS_SLAVE, kernel.MS_UNBINDABLE):
        assert rule.args[0].mask & flag
    assert not rule.args[0].mask & (kernel.MS_RDONLY | kernel.MS_NOSUID | kernel.MS_REC)
    assert fsopen.syscall == "fsopen" and not fsopen.args


def test_the_filter_compiles_for_lxc_and_libseccomp() -> None:
    profile = parse_profile('[intercept]\nmount = true\n[mount]\nallowed = ["ext4"]\n', "m.toml")
    policy = ContainerPolicy.from_profile(profile)
    text = compile_policy(policy)
    assert f"mount notify [3,0,SCMP_CMP_MASKED_EQ,{mount.NOT_NEW}]" in text
    assert "fsopen notify" in text
    check_with_libseccomp(policy)


def test_the_old_magic_is_dropped_as_path_mount_does() -> None:
    assert mount.mount_flags(kernel.MS_MGC_VAL | kernel.MS_RDONLY) == kernel.MS_RDONLY
    # With the magic, every bit from 16 up goes, the upper half included (seen: mounts).
    assert mount.mount_flags(kernel.MS_MGC_VAL | 1 << 32 | kernel.MS_RDONLY) == 1
    assert mount.flags_error(mount.mount_flags(kernel.MS_MGC_VAL | 1 << 32)) is None
    # Without it, MS_NOUSER (1 << 31, sign-extended) and every upper bit are EINVAL.
    assert mount.flags_error(mount.mount_flags(1 << 31)) == errno.EINVAL
    assert mount.flags_error(mount.mount_flags(1 << 40 | kernel.MS_RDONLY)) == errno.EINVAL
    # Unused bits below 31 are ignored (seen: 9, 15, 22, 26-30 mount).
    for bit in (9, 22, 26, 30):
        assert mount.flags_error(mount.mount_flags(1 << bit)) is None


def test_choice_and_forced_flags() -> None:
    policy = MountPolicy(allowed=("ext4",), fuse=(("xfs", "fuse-xfs"),))
    assert mount.choice(policy, "ext4") == (mount.EMULATE, "")
    assert mount.choice(policy, "xfs") == (mount.REDIRECT, "fuse-xfs")
    assert mount.choice(policy, "tmpfs") is None
    assert mount.forced_flags(policy) == kernel.MS_NOSUID | kernel.MS_NODEV
    # A profile's own list replaces the default, but nodev always stays.
    assert mount.forced_flags(MountPolicy(force_flags=("noexec",))) == (
        kernel.MS_NOEXEC | kernel.MS_NODEV)


def test_options_are_split_as_the_kernel_splits_them() -> None:
    # Empty pieces and pieces with an empty key are skipped (seen: ",,=x,ro" mounts ro).
    assert mount.parse_options(b",,=x,=,ro") == (mount.Option(b"ro", None),)
    assert mount.parse_options(b"data=") == (mount.Option(b"data", b""),)
    options = mount.parse_options(b"ro,,data=ordered,errors=remount-ro,noload")
    assert [(o.key, o.value) for o in options] == [
        (b"ro", None), (b"data", b"ordered"), (b"errors", b"remount-ro"), (b"noload", None)]
    assert mount.refused_option(options) is None
    assert mount.refused_option(mount.parse_options(b"errors=panic")) == "errors=panic"
    assert mount.refused_option(mount.parse_options(b"x,logdev=/dev/sdb")) == "logdev=/dev/sdb"
    assert mount.refused_option(mount.parse_options(b"dax")) == "dax"


def test_ms_flags_become_superblock_flags_and_mount_attributes() -> None:
    t = mount.translate(kernel.MS_RDONLY | kernel.MS_NOEXEC | kernel.MS_SYNCHRONOUS
                        | kernel.MS_NOSYMFOLLOW, kernel.MS_NOSUID | kernel.MS_NODEV)
    assert t.sb_flags == (b"ro", b"sync")
    assert t.attrs == (kernel.MOUNT_ATTR_RDONLY | kernel.MOUNT_ATTR_NOEXEC
                       | kernel.MOUNT_ATTR_NOSUID | kernel.MOUNT_ATTR_NODEV
                       | kernel.MOUNT_ATTR_NOSYMFOLLOW)
    # One atime setting: strictatime wins over noatime (seen); relatime is the default (0).
    both = mount.translate(kernel.MS_NOATIME | kernel.MS_STRICTATIME, 0)
    assert both.attrs & kernel.MOUNT_ATTR__ATIME == kernel.MOUNT_ATTR_STRICTATIME
    assert mount.translate(kernel.MS_RELATIME, 0).attrs == kernel.MOUNT_ATTR_RELATIME == 0
    assert mount.translate(kernel.MS_STRICTATIME, 0).attrs == kernel.MOUNT_ATTR_STRICTATIME
    # Kernel-internal bits never pass.
    assert mount.translate(kernel.MS_KERNMOUNT, 0).flags == 0


def test_config_steps_keep_the_kernels_order_and_ours_last() -> None:
    options = mount.parse_options(b"rw,errors=panic2,noload")
    steps = mount.config_steps("ext4", kernel.MS_RDONLY, options, kernel.MS_RDONLY)
    # MS_RDONLY's "ro", the caller's "rw" clearing it (the kernel's own parse),
    # then the forced "ro" and the stored-default override after everything.
    assert steps == [("flag", b"ro", None), ("flag", b"rw", None),
                     ("string", b"errors", b"panic2"), ("flag", b"noload", None),
                     ("flag", b"ro", None), ("string", b"errors", b"remount-ro")]
    # Without a forced ro, the caller's "rw" wins: the superblock (and the
    # device open) is read-write, as the kernel makes it.
    steps = mount.config_steps("ext4", kernel.MS_RDONLY, mount.parse_options(b"rw"), 0)
    assert steps[-2:] == [("flag", b"rw", None), ("string", b"errors", b"remount-ro")]
    # A contained choice of the caller's stays; other filesystems get no override.
    kept = mount.config_steps("ext4", 0, mount.parse_options(b"errors=continue"), 0)
    assert kept == [("string", b"errors", b"continue")]
    assert mount.config_steps("xfs", 0, (), 0) == []


def test_a_fuse_program_gets_the_flags_as_words() -> None:
    options = mount.parse_options(b"errors=remount-ro")
    assert mount.fuse_options(kernel.MS_RDONLY | kernel.MS_NODEV, options) == \
        "ro,nodev,errors=remount-ro"
    assert mount.fuse_options(0, ()) == ""


def test_profiles_may_allow_an_unshifted_fallback() -> None:
    profile = parse_profile("[mount]\nshift = true\nunshifted_fallback = true\n", "m.toml")
    assert profile.of(mount.FAMILY).unshifted_fallback is True
    assert ContainerPolicy.from_profile(profile).of(mount.FAMILY).unshifted_fallback is True
