"""Device decisions: may this container have the supervisor create this node?"""

from __future__ import annotations

from dataclasses import dataclass

from .profile import DeviceRule, Profile

# The overlayfs whiteout.  Since Linux 5.8 the kernel itself lets an
# unprivileged caller create it, so it never needs emulating.
WHITEOUT = ("c", 0, 0)


@dataclass(frozen=True)
class DevicePolicy:
    """An index over a profile's device rules, built once, consulted per request."""

    exact: frozenset[tuple[str, int, int]]
    ranges: tuple[DeviceRule, ...]

    @classmethod
    def from_profile(cls, profile: Profile) -> DevicePolicy:
        exact = frozenset((r.kind, r.major, r.minor_low) for r in profile.devices
                          if r.minor_low == r.minor_high)
        ranges = tuple(r for r in profile.devices if r.minor_low != r.minor_high)
        return cls(exact, ranges)

    def allows(self, kind: str, major: int, minor: int) -> bool:
        if (kind, major, minor) in self.exact:
            return True
        return any(rule.matches(kind, major, minor) for rule in self.ranges)


def needs_emulation(policy: DevicePolicy, kind: str, major: int, minor: int) -> bool:
    """True when the supervisor should make the node; False means let the kernel decide.

    Letting the kernel decide (SECCOMP_USER_NOTIF_FLAG_CONTINUE) is safe for
    mknod: the kernel then checks the caller's own privileges, so the answer is
    exactly what the container would get without us (EPERM for a device in an
    unprivileged container, or the path error that comes first).
    """
    if (kind, major, minor) == WHITEOUT:
        return False
    return policy.allows(kind, major, minor)
