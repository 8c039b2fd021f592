"""The policy one container runs under: its profile with its LXD keys laid over it.

Built once per container (and again on reload), never per request.  Every
setting remembers where it came from, for ``config show --effective``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from . import keys as lxd
from .families import LXD_FAMILIES
from .mknod import DevicePolicy
from .mount import ALWAYS_FORCED, DEFAULT_FORCED
from .profile import KERNEL, MountPolicy, Profile

DEFAULT_SOURCE = "default"


@dataclass(frozen=True)
class Setting:
    name: str
    value: str
    source: str  # a profile file, "key NAME", or "default"


@dataclass(frozen=True)
class ContainerPolicy:
    profile: Profile
    devices: DevicePolicy
    intercept: frozenset[str]
    mount: MountPolicy
    settings: tuple[Setting, ...]

    @classmethod
    def from_profile(cls, profile: Profile, config: dict[str, str] | None = None,
                     config_file: str = "<config>") -> ContainerPolicy:
        config = config or {}
        sources = dict(profile.sources)
        settings: list[Setting] = []
        intercept = set(profile.intercept)
        for family in LXD_FAMILIES:
            key = lxd.PREFIX + family
            if key in config:
                on = config[key] == "true"
                source = f"key {key}"
            else:
                on = family in profile.intercept
                source = sources.get(f"intercept.{family}", DEFAULT_SOURCE)
            (intercept.add if on else intercept.discard)(family)
            settings.append(Setting(f"intercept.{family}", str(on).lower(), source))

        mount = profile.mount
        allowed, fuse, shift = mount.allowed, mount.fuse, mount.shift
        if lxd.PREFIX + "mount.allowed" in config:
            allowed = lxd.parse_fs_list(config[lxd.PREFIX + "mount.allowed"], config_file,
                                        lxd.PREFIX + "mount.allowed")
        if lxd.PREFIX + "mount.fuse" in config:
            fuse = lxd.parse_fuse_map(config[lxd.PREFIX + "mount.fuse"], config_file,
                                      lxd.PREFIX + "mount.fuse")
        if lxd.PREFIX + "mount.shift" in config:
            shift = config[lxd.PREFIX + "mount.shift"] == "true"
        # The profile and the keys are each checked alone; laid over each other
        # they can still name one filesystem in both (profile allowed + key fuse).
        both = set(allowed) & {fs for fs, _ in fuse}
        if both:
            # Name the key that brought the conflict in (fuse first, as check_together).
            file, key = profile.source, "mount.fuse"
            for name in ("mount.fuse", "mount.allowed"):
                if lxd.PREFIX + name in config:
                    file, key = config_file, lxd.PREFIX + name
                    break
            raise ConfigError(file, key, f"{', '.join(sorted(both))} cannot be both in "
                                         "mount.allowed and mount.fuse (profile and keys "
                                         "together)")
        mount = MountPolicy(allowed, shift, fuse, mount.force_flags, mount.unshifted_fallback)
        for name, value, key in (
                ("mount.allowed", ",".join(allowed), "mount.allowed"),
                ("mount.shift", str(bool(shift)).lower(), "mount.shift"),
                ("mount.fuse", ",".join(f"{f}={p}" for f, p in fuse), "mount.fuse")):
            source = (f"key {lxd.PREFIX}{key}" if lxd.PREFIX + key in config
                      else sources.get(name, profile.source if value else DEFAULT_SOURCE))
            settings.append(Setting(name, value, source))
        if "mount" in intercept:
            forced = sorted(set(mount.force_flags or DEFAULT_FORCED) | set(ALWAYS_FORCED))
            settings.append(Setting("mount.force_flags", ",".join(forced),
                                    profile.source if mount.force_flags else DEFAULT_SOURCE))
            settings.append(Setting("mount.unshifted_fallback",
                                    str(bool(mount.unshifted_fallback)).lower(),
                                    sources.get("mount.unshifted_fallback", DEFAULT_SOURCE)))
        for rule in profile.devices:
            minor = (str(rule.minor_low) if rule.minor_low == rule.minor_high
                     else f"{rule.minor_low}-{rule.minor_high}")
            extra = "".join([f" path {rule.path}" if rule.path else "",
                             f" mode<={rule.mode_cap:#o}" if rule.mode_cap is not None else "",
                             f"  # {rule.comment}" if rule.comment else ""])
            settings.append(Setting("devices", f"{rule.kind} {rule.major}:{minor}{extra}",
                                    profile.source))
        for pattern in profile.xattrs:
            settings.append(Setting("xattr.allowed", pattern, profile.source))
        for family, answer in profile.deny:
            settings.append(Setting(f"deny.{family}", answer, sources.get(f"deny.{family}",
                                                                          profile.source)))
        return cls(profile, DevicePolicy.from_profile(profile), frozenset(intercept), mount,
                   tuple(settings))

    def intercepts(self, family: str) -> bool:
        return family in self.intercept

    def deny_answer(self, family: str) -> str:
        """KERNEL, or the errno name the profile answers refused calls with."""
        return self.profile.deny_answer(family) if family in self.intercept else KERNEL
