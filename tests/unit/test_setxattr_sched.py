"""setxattr's name decision and filter rules, sched's family, and the families' traps."""

from __future__ import annotations

from lxc_notify_plugin.paths import PACKAGE_PROFILES
from lxc_notify_plugin.policy.effective import ContainerPolicy
from lxc_notify_plugin.policy.lxc_policy import compile_policy
from lxc_notify_plugin.policy.profile import load_profile
from lxc_notify_plugin.policy.setxattr import name_allowed

DOCKER = ("trusted.overlay.opaque", "trusted.overlay.redirect", "trusted.overlay.*x")


def test_names_match_byte_for_byte_and_globs() -> None:
    assert name_allowed(DOCKER, b"trusted.overlay.opaque")
    assert name_allowed(("trusted.overlay.*",), b"trusted.overlay.metacopy")
    assert not name_allowed(DOCKER, b"trusted.overlay.opaquE")
    assert not name_allowed(DOCKER, b"user.overlay.opaque")
    assert not name_allowed(DOCKER, b"trusted.overlay.opaque\xff")  # not ASCII: never
    assert not name_allowed((), b"trusted.overlay.opaque")


def test_names_whose_values_are_namespaced_are_never_emulated() -> None:
    everything = ("system.*", "security.*")
    for name in (b"system.posix_acl_access", b"system.posix_acl_default",
                 b"security.capability"):
        assert not name_allowed(everything, name)
    assert name_allowed(everything, b"security.evm")


def _policy(profile: str, config: dict[str, str] | None = None) -> ContainerPolicy:
    return ContainerPolicy.from_profile(load_profile(profile, (PACKAGE_PROFILES,)), config)


def test_docker_traps_setxattr_default_traps_none_of_the_new_families() -> None:
    docker = compile_policy(_policy("docker"))
    for line in ("setxattr notify", "lsetxattr notify", "fsetxattr notify"):
        assert line in docker.splitlines()
    default = compile_policy(_policy("default"))
    for name in ("setxattr", "sysinfo", "sched_setscheduler", "sched_setparam"):
        assert f"{name} notify" not in default


def test_keys_switch_sysinfo_and_sched_on_and_setxattr_needs_names() -> None:
    prefix = "security.syscalls.intercept."
    text = compile_policy(_policy("default", {prefix + "sysinfo": "true",
                                              prefix + "sched_setscheduler": "true",
                                              prefix + "setxattr": "true"})).splitlines()
    assert "sysinfo notify" in text
    assert "sched_setscheduler notify" in text and "sched_setparam notify" in text
    # default allows no xattr name: nothing to act on, nothing trapped.
    assert not any(line.startswith(("setxattr", "lsetxattr", "fsetxattr")) for line in text)
