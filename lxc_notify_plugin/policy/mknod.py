"""The mknod family: which device nodes a container may have the supervisor create.

Declares the family (``mknod`` and ``mknodat``), its filter rules and the
decision for one node.  The filter sends us character and block nodes only,
and never the overlay whiteout (``c 0:0``), which the kernel itself lets an
unprivileged caller make: FIFOs, sockets, regular files and whiteouts never
leave the kernel.  Everything else the profile might refuse stays trapped,
since a reload or a udev event can allow it while the container runs.
"""

from __future__ import annotations

import fnmatch
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .families import Family
from .filter import NE, ArgMatch, Rule
from .profile import DeviceRule, Profile, UdevRule

if TYPE_CHECKING:
    from .effective import ContainerPolicy

# The overlayfs whiteout.  Since Linux 5.8 the kernel itself lets an
# unprivileged caller create it, so it never needs emulating.
WHITEOUT = ("c", 0, 0)


DeviceKey = tuple[str, int, int]  # (type "c" or "b", major, minor)


@dataclass(frozen=True, slots=True)
class UdevDevice:
    """What udev says about one device node on the host (plain data, no pyudev)."""

    kind: str
    major: int
    minor: int
    subsystem: str
    devnode: str | None
    tags: frozenset[str] = frozenset()
    properties: Mapping[str, str] = field(default_factory=dict)


class HostDevices(Protocol):
    """The devices the host has now, by (type, major, minor): kept by udev.py."""

    def get(self, key: DeviceKey) -> UdevDevice | None: ...


def _property_matches(value: str | None, pattern: str) -> bool:
    if value is None:
        return False
    return fnmatch.fnmatchcase(value, pattern) or any(
        fnmatch.fnmatchcase(word, pattern) for word in value.split())


def udev_rule_matches(rule: UdevRule, device: UdevDevice) -> bool:
    return ((rule.subsystem is None or rule.subsystem == device.subsystem)
            and (rule.tag is None or rule.tag in device.tags)
            and (rule.devnode is None or (device.devnode is not None
                                          and fnmatch.fnmatchcase(device.devnode, rule.devnode)))
            and all(_property_matches(device.properties.get(name), pattern)
                    for name, pattern in rule.properties))


@dataclass(frozen=True)
class DevicePolicy:
    """An index over a profile's device rules, built once, consulted per request."""

    exact: dict[DeviceKey, tuple[DeviceRule, ...]]
    ranges: tuple[DeviceRule, ...]
    udev: tuple[UdevRule, ...] = ()

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
        return cls(exact, tuple(ranges), profile.udev)

    def candidates(self, kind: str, major: int, minor: int,
                   host: HostDevices | None = None) -> tuple[DeviceRule, ...]:
        """Every rule for this device, before any path pattern is looked at.

        A udev rule counts only while the host has the device and its udev
        record matches; it then stands as a rule for exactly that device.
        """
        found = self.exact.get((kind, major, minor), ())
        if self.ranges:
            found += tuple(r for r in self.ranges if r.matches(kind, major, minor))
        if self.udev and host is not None:
            device = host.get((kind, major, minor))
            if device is not None:
                found += tuple(DeviceRule(kind, major, minor, minor, rule.path, rule.mode_cap,
                                          rule.comment or f"udev: {device.devnode}")
                               for rule in self.udev if udev_rule_matches(rule, device))
        return found

    def allows(self, kind: str, major: int, minor: int, host: HostDevices | None = None) -> bool:
        return bool(self.candidates(kind, major, minor, host))


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


def mknod_rules(policy: DevicePolicy, kind: str, major: int, minor: int,
                host: HostDevices | None = None) -> tuple[DeviceRule, ...] | None:
    """The decision for one node, before its path is known.

    None: the kernel decides it itself, whatever the profile says (whiteouts,
    which it allows an unprivileged caller).  Empty: the profile does not
    allow it.  Otherwise the rules that may, path patterns still to check.
    """
    if (kind, major, minor) == WHITEOUT:
        return None
    return policy.candidates(kind, major, minor, host)


_S_IFMT = 0o170000  # stat.S_IFMT is a function in Python, the mask is this
# (syscall, index of its mode argument, index of its dev argument)
_ENTRY_POINTS = (("mknod", 1, 2), ("mknodat", 2, 3))


def filter_rules(policy: ContainerPolicy) -> tuple[Rule, ...]:
    """Notify for character and block nodes whose dev is not 0.

    ``dev != 0`` compares all 64 bits of the register while the kernel reads
    32: garbage above them only ever makes us see a call (which we decode as
    the kernel does), never lets one past us.
    """
    return tuple(Rule(syscall, None, (ArgMatch(mode_arg, node_type, mask=_S_IFMT),
                                      ArgMatch(dev_arg, 0, NE)))
                 for syscall, mode_arg, dev_arg in _ENTRY_POINTS
                 for node_type in (stat.S_IFCHR, stat.S_IFBLK))


FAMILY = Family("mknod", tuple(syscall for syscall, _, _ in _ENTRY_POINTS), filter_rules)
