"""Profiles, device decisions and the compiled LXC policy: plain data, no privileges."""

from __future__ import annotations

from pathlib import Path

import pytest

from lxc_notify_plugin.errors import ConfigError
from lxc_notify_plugin.paths import PACKAGE_PROFILES
from lxc_notify_plugin.policy import mknod, mount
from lxc_notify_plugin.policy.effective import ContainerPolicy
from lxc_notify_plugin.policy.lxc_policy import check_with_libseccomp, compile_policy
from lxc_notify_plugin.policy.mknod import DevicePolicy, choose, mknod_rules, needs_path
from lxc_notify_plugin.policy.profile import load_profile, parse_profile

DEFAULT = load_profile("default", (PACKAGE_PROFILES,))


@pytest.mark.parametrize(("kind", "major", "minor", "decision"), [
    ("c", 1, 3, "emulate"), ("c", 1, 5, "emulate"), ("c", 1, 7, "emulate"),
    ("c", 1, 8, "emulate"), ("c", 1, 9, "emulate"), ("c", 5, 0, "emulate"),
    ("c", 5, 1, "emulate"), ("c", 5, 2, "emulate"),
    ("c", 0, 0, "kernel"),  # whiteout: the kernel allows it itself, never refused
    ("c", 1, 1, "refuse"),  # /dev/mem
    ("c", 4, 1, "refuse"), ("c", 10, 229, "refuse"), ("b", 1, 3, "refuse"),
    ("b", 7, 0, "refuse"),
])
def test_default_profile_allows_what_lxd_allows(kind: str, major: int, minor: int,
                                                decision: str) -> None:
    rules = mknod_rules(DevicePolicy.from_profile(DEFAULT), kind, major, minor)
    assert ("kernel" if rules is None else "emulate" if rules else "refuse") == decision


def test_minor_ranges() -> None:
    profile = parse_profile('[[devices]]\ntype = "b"\nmajor = 7\nminor = [0, 7]\n', "loop.toml")
    policy = DevicePolicy.from_profile(profile)
    assert policy.allows("b", 7, 0) and policy.allows("b", 7, 7)
    assert not policy.allows("b", 7, 8) and not policy.allows("c", 7, 0)


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("name = ", None, "invalid TOML"),
    ("colour = 1", "colour", "unknown key"),
    ("[intercept]\nchmod = true", "intercept.chmod", "unknown key"),
    ("extends = 'default'", "extends", "expected an array"),
    ("[[devices]]\ntype = 'c'\nmajor = 1\nminor = 3\npath = 'dev/x'", "devices[0].path",
     "absolute"),
    ("[[devices]]\ntype = 'c'\nmajor = 1\nminor = 3\nmode = 0o17777", "devices[0].mode",
     "not a permission mode"),
    ("[mount]\nallowed = ['Ext4!']", "mount.allowed", "not a filesystem type name"),
    ("[mount]\nallowed = ['ext4']\nfuse = { ext4 = 'fuse2fs' }", "mount.fuse",
     "cannot be both"),
    ("[mount]\nforce_flags = ['nosuid', 'suid']", "mount.force_flags", "not one of"),
    ("[xattr]\nallowed = ['overlay.opaque']", "xattr.allowed", "not an xattr name"),
    ("[deny]\nmknod = 'ENOTANERRNO'", "deny.mknod", "neither"),
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


def test_a_family_this_build_lacks_cannot_be_intercepted(unbuilt: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_profile(f"[intercept]\n{unbuilt} = true", "/etc/lxc-notify/profiles/bad.toml")
    assert raised.value.key == f"intercept.{unbuilt}"
    assert f"no {unbuilt} handler yet" in raised.value.reason


def test_admin_profiles_override_shipped_ones(tmp_path: Path) -> None:
    (tmp_path / "default.toml").write_text('name = "default"\ndescription = "mine"\n')
    assert load_profile("default", (tmp_path, PACKAGE_PROFILES)).description == "mine"
    with pytest.raises(ConfigError, match="no such profile"):
        load_profile("absent", (tmp_path, PACKAGE_PROFILES))


def test_compiled_policy_traps_only_device_nodes_that_are_not_whiteouts() -> None:
    text = compile_policy(ContainerPolicy.from_profile(DEFAULT))
    lines = text.splitlines()
    assert lines[:2] == ["2", "denylist"]
    notify = [line for line in lines if " notify " in line]
    # dev == 0 (the overlay whiteout) is the kernel's alone: never trapped.
    assert notify == [
        "mknod notify [1,8192,SCMP_CMP_MASKED_EQ,61440] [2,0,SCMP_CMP_NE]",
        "mknod notify [1,24576,SCMP_CMP_MASKED_EQ,61440] [2,0,SCMP_CMP_NE]",
        "mknodat notify [2,8192,SCMP_CMP_MASKED_EQ,61440] [3,0,SCMP_CMP_NE]",
        "mknodat notify [2,24576,SCMP_CMP_MASKED_EQ,61440] [3,0,SCMP_CMP_NE]",
    ]
    assert "kexec_load errno 1" in lines  # LXC's own default denylist is kept
    # A nested listener is refused in the filter (EBUSY, what the kernel says).
    assert "seccomp errno 16 [0,1,SCMP_CMP_MASKED_EQ,4294967295] " \
           "[1,8,SCMP_CMP_MASKED_EQ,8]" in lines


SHIPPED = sorted(p.stem for p in PACKAGE_PROFILES.glob("*.toml"))


def test_the_four_profiles_are_shipped() -> None:
    assert SHIPPED == ["default", "docker", "fuse", "tun"]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads_and_compiles(name: str) -> None:
    profile = load_profile(name, (PACKAGE_PROFILES,))
    assert profile.name == name and profile.description
    policy = ContainerPolicy.from_profile(profile)
    check_with_libseccomp(policy)
    assert "mknodat notify [2,8192,SCMP_CMP_MASKED_EQ,61440]" in compile_policy(policy)
    # Everything extends default: LXD's list is always there.
    assert DevicePolicy.from_profile(profile).allows("c", 1, 3)


def write(directory: Path, name: str, text: str) -> None:
    (directory / f"{name}.toml").write_text(text)


def test_extends_merges_parents_in_order(tmp_path: Path) -> None:
    write(tmp_path, "a", 'description = "a"\n[deny]\nmknod = "EPERM"\n'
          '[[devices]]\ntype = "c"\nmajor = 1\nminor = 3\n[mount]\nforce_flags = ["nosuid"]\n')
    write(tmp_path, "b", 'description = "b"\n[deny]\nmknod = "EACCES"\n'
          '[[devices]]\ntype = "c"\nmajor = 1\nminor = 5\n[mount]\nforce_flags = ["nodev"]\n')
    write(tmp_path, "child", 'extends = ["a", "b"]\n[[devices]]\ntype = "c"\nmajor = 1\n'
          'minor = 7\n')
    profile = load_profile("child", (tmp_path,))
    assert profile.description == "b"  # the last parent that says it
    assert profile.deny_answer("mknod") == "EACCES"
    assert dict(profile.sources)["deny.mknod"].endswith("b.toml")
    devices = profile.of(mknod.FAMILY).devices
    assert [(r.major, r.minor_low) for r in devices] == [(1, 3), (1, 5), (1, 7)]
    assert profile.of(mount.FAMILY).force_flags == ("nosuid", "nodev")
    assert profile.name == "child"


def test_extends_cycle_and_missing_parent_are_errors(tmp_path: Path) -> None:
    write(tmp_path, "x", 'extends = ["y"]\n')
    write(tmp_path, "y", 'extends = ["z"]\n')
    write(tmp_path, "z", 'extends = ["x"]\n')
    with pytest.raises(ConfigError) as raised:
        load_profile("x", (tmp_path,))
    assert raised.value.file.endswith("z.toml") and raised.value.key == "extends[0]"
    assert "cycle: x -> y -> z -> x" in raised.value.reason
    write(tmp_path, "orphan", 'extends = ["default", "nowhere"]\n')
    with pytest.raises(ConfigError) as raised:
        load_profile("orphan", (tmp_path, PACKAGE_PROFILES))
    assert raised.value.key == "extends[1]" and "'nowhere' not found" in raised.value.reason


def test_errors_in_a_parent_name_the_parent(tmp_path: Path) -> None:
    write(tmp_path, "broken", "[[devices]]\ntype = 'c'\nmajor = -1\nminor = 0\n")
    write(tmp_path, "kid", 'extends = ["broken"]\n')
    with pytest.raises(ConfigError) as raised:
        load_profile("kid", (tmp_path,))
    assert raised.value.file.endswith("broken.toml") and raised.value.key == "devices[0].major"


def test_bad_toml_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "bad", 'name = "x"\n\n[[devices]\n')
    with pytest.raises(ConfigError, match=r"line 3"):
        load_profile("bad", (tmp_path,))


def test_path_patterns_and_mode_caps() -> None:
    profile = parse_profile('[[devices]]\ntype = "c"\nmajor = 10\nminor = 229\n'
                            'path = "/dev/fuse"\nmode = 0o666\n', "fuse.toml")
    rules = DevicePolicy.from_profile(profile).candidates("c", 10, 229)
    assert needs_path(rules)
    assert choose(rules, "/dev/fuse") == rules[0] and rules[0].mode_cap == 0o666
    assert choose(rules, "/tmp/fuse") is None and choose(rules, None) is None


def test_diamond_extends_keeps_the_overrides(tmp_path: Path) -> None:
    write(tmp_path, "d", '[deny]\nmknod = "EPERM"\n')
    write(tmp_path, "b", 'extends = ["d"]\n[deny]\nmknod = "EACCES"\n')
    write(tmp_path, "c", 'extends = ["d"]\n')
    write(tmp_path, "a", 'extends = ["b", "c"]\n')
    profile = load_profile("a", (tmp_path,))
    assert profile.deny_answer("mknod") == "EACCES"
    assert dict(profile.sources)["deny.mknod"].endswith("b.toml")


def test_an_admin_profile_extends_the_shipped_one_of_its_name(tmp_path: Path) -> None:
    write(tmp_path, "default", 'extends = ["default"]\ndescription = "mine"\n'
          '[[devices]]\ntype = "c"\nmajor = 10\nminor = 200\n')
    profile = load_profile("default", (tmp_path, PACKAGE_PROFILES))
    policy = DevicePolicy.from_profile(profile)
    assert profile.description == "mine"
    assert policy.allows("c", 1, 3) and policy.allows("c", 10, 200)


def test_extends_by_file_name_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "base", '[[devices]]\ntype = "c"\nmajor = 10\nminor = 200\n')
    write(tmp_path, "top", 'extends = ["sub/base.toml"]\n')
    profile = load_profile(str(tmp_path / "top.toml"), ())
    assert DevicePolicy.from_profile(profile).allows("c", 10, 200)


def test_the_documented_example_is_a_valid_profile() -> None:
    readme = (PACKAGE_PROFILES / "README.md").read_text()
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    profile = parse_profile(example, "profiles/README.md", (PACKAGE_PROFILES,))
    assert profile.name == "lab" and profile.of(mknod.FAMILY).udev
    assert profile.of(mount.FAMILY).shift is True
    policy = DevicePolicy.from_profile(profile)
    assert policy.allows("c", 226, 128) and policy.allows("c", 10, 200)  # own + tun parent
