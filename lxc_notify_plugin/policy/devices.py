"""Device decisions: may this container have the supervisor create this node?"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from .profile import DeviceRule, Profile

# The overlayfs whiteout.  Since Linux 5.8 the kernel itself lets an
# unprivileged caller create it, so it never needs emulating.
WHITEOUT = ("c", 0, 0)


@dataclass(frozen=True)
class DevicePolicy:
    """An index over a profile's device rules, built once, consulted per request."""

    exact: dict[tuple[str, int, int], tuple[DeviceRule, ...]]
    ranges: tuple[DeviceRule, ...]

    @classmethod
    def from_profile(cls, profile: Profile) -> DevicePolicy:
        exact: dict[tuple[str, int, int], tuple[DeviceRule, ...]] = {}
        ranges = []
        for rule in profile.devices:
            if rule.minor_low == rule.minor_high:
                key = (rule.kind, rule.major, rule.minor_low)
                exact[key] = (*exact.get(key, ()), rule)
            else:
                ranges.append(rule)
        return cls(exact, tuple(ranges))

    def candidates(self, kind: str, major: int, minor: int) -> tuple[DeviceRule, ...]:
        """Every rule for this device, before any path pattern is looked at."""
        found = self.exact.get((kind, major, minor), ())
        if self.ranges:
            found += tuple(r for r in self.ranges if r.matches(kind, major, minor))
        return found

    def allows(self, kind: str, major: int, minor: int) -> bool:
        return bool(self.candidates(kind, major, minor))


def needs_path(rules: tuple[DeviceRule, ...]) -> bool:
    return any(rule.path is not None for rule in rules)


def choose(rules: tuple[DeviceRule, ...], container_path: str | None) -> DeviceRule | None:
    """The first rule that allows the node at ``container_path`` (its place inside the
    container, symlinks resolved); None when only path-restricted rules exist and
    none matches."""
    for rule in rules:
        if rule.path is None or (container_path is not None
                                 and fnmatch.fnmatchcase(container_path, rule.path)):
            return rule
    return None


def needs_emulation(policy: DevicePolicy, kind: str, major: int, minor: int) -> bool:
    """True when the supervisor may make the node; False means let the kernel decide.

    Letting the kernel decide (SECCOMP_USER_NOTIF_FLAG_CONTINUE) is safe for
    mknod: the kernel then checks the caller's own privileges, so the answer is
    exactly what the container would get without us (EPERM for a device in an
    unprivileged container, or the path error that comes first).
    """
    if (kind, major, minor) == WHITEOUT:
        return False
    return policy.allows(kind, major, minor)
