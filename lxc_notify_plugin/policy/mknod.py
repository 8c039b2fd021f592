"""The mknod family: which device nodes a container may have the supervisor create.

Declares the family (``mknod`` and ``mknodat``), its filter rules, its
profile tables (``[[devices]]`` and ``[[udev]]``) and the decision for one
node.  The filter sends us character and block nodes only,
and never the overlay whiteout (``c 0:0``), which the kernel itself lets an
unprivileged caller make: FIFOs, sockets, regular files and whiteouts never
leave the kernel.  Everything else the profile might refuse stays trapped,
since a reload or a udev event can allow it while the container runs.
"""

from __future__ import annotations

import fnmatch
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..errors import ConfigError
from .families import Described, Family, Setting, Settings
from .filter import NE, ArgMatch, Rule
from .schema import check_keys, union, want

S = TypeVar("S")


class _Sections(Protocol):
    """A Profile or a ContainerPolicy (not imported: they import the families)."""

    def of(self, family: Family[S]) -> S: ...

_MAX_MAJOR = (1 << 12) - 1  # the kernel's 32-bit dev_t: 12-bit major, 20-bit minor
_MAX_MINOR = (1 << 20) - 1

# The overlayfs whiteout.  Since Linux 5.8 the kernel itself lets an
# unprivileged caller create it, so it never needs emulating.
WHITEOUT = ("c", 0, 0)


DeviceKey = tuple[str, int, int]  # (type "c" or "b", major, minor)


@dataclass(frozen=True)
class DeviceRule:
    """One allowed device: type ``c`` or ``b``, a major, an inclusive minor range,
    optionally where it may be made (a glob on the path inside the container)
    and the most permissive mode it may get."""

    kind: str
    major: int
    minor_low: int
    minor_high: int
    path: str | None = None
    mode_cap: int | None = None
    comment: str = ""

    def matches(self, kind: str, major: int, minor: int) -> bool:
        return (self.kind == kind and self.major == major
                and self.minor_low <= minor <= self.minor_high)


@dataclass(frozen=True)
class UdevRule:
    """Devices allowed because of what udev says about them *now*.

    Every field given must match the device's udev record: its subsystem,
    a tag, a glob on its host device node, and properties (each a glob on the
    whole value, or one whitespace-separated word of it: a rule saying
    ``LXC_NOTIFY_PROFILES = "fuse"`` matches a device listing "fuse docker").
    """

    subsystem: str | None = None
    tag: str | None = None
    devnode: str | None = None
    properties: tuple[tuple[str, str], ...] = ()
    path: str | None = None
    mode_cap: int | None = None
    comment: str = ""


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
    """The family's settings: a profile's device and udev rules, with an index
    over the device rules built once and consulted per request."""

    devices: tuple[DeviceRule, ...] = ()
    udev: tuple[UdevRule, ...] = ()
    exact: dict[DeviceKey, tuple[DeviceRule, ...]] = field(init=False, compare=False,
                                                            repr=False)
    ranges: tuple[DeviceRule, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        exact: dict[DeviceKey, tuple[DeviceRule, ...]] = {}
        ranges = []
        for rule in self.devices:
            if rule.minor_low == rule.minor_high:
                key = (rule.kind, rule.major, rule.minor_low)
                exact[key] = (*exact.get(key, ()), rule)
            else:
                ranges.append(rule)
        object.__setattr__(self, "exact", exact)  # frozen: set once, here
        object.__setattr__(self, "ranges", tuple(ranges))

    @classmethod
    def from_profile(cls, profile: _Sections) -> DevicePolicy:
        return profile.of(FAMILY)

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


def filter_rules(policy: DevicePolicy) -> tuple[Rule, ...]:
    """Notify for character and block nodes whose dev is not 0.

    ``dev != 0`` compares all 64 bits of the register while the kernel reads
    32: garbage above them only ever makes us see a call (which we decode as
    the kernel does), never lets one past us.
    """
    return tuple(Rule(syscall, None, (ArgMatch(mode_arg, node_type, mask=_S_IFMT),
                                      ArgMatch(dev_arg, 0, NE)))
                 for syscall, mode_arg, dev_arg in _ENTRY_POINTS
                 for node_type in (stat.S_IFCHR, stat.S_IFBLK))


# --- the profile's tables ------------------------------------------------------------


def _device(entry: Any, file: str, key: str) -> DeviceRule:
    entry = want(entry, dict, file, key)
    check_keys(entry, {"type", "major", "minor", "path", "mode", "comment"}, file, key + ".")
    for required in ("type", "major", "minor"):
        if required not in entry:
            raise ConfigError(file, f"{key}.{required}", "missing")
    kind = want(entry["type"], str, file, f"{key}.type")
    if kind not in ("c", "b"):
        raise ConfigError(file, f"{key}.type", f"must be \"c\" or \"b\", not {kind!r}")
    major = want(entry["major"], int, file, f"{key}.major")
    if not 0 <= major <= _MAX_MAJOR:
        raise ConfigError(file, f"{key}.major", f"{major} is outside 0..{_MAX_MAJOR}")
    minor = want(entry["minor"], (int, list), file, f"{key}.minor")
    if isinstance(minor, list):
        if len(minor) != 2 or not all(
                isinstance(m, int) and not isinstance(m, bool) for m in minor):
            raise ConfigError(file, f"{key}.minor", "a range is written [first, last]")
        low, high = minor
    else:
        low = high = minor
    for value in (low, high):
        if not 0 <= value <= _MAX_MINOR:
            raise ConfigError(file, f"{key}.minor", f"{value} is outside 0..{_MAX_MINOR}")
    if low > high:
        raise ConfigError(file, f"{key}.minor", f"range [{low}, {high}] is empty")
    path, mode = _path_and_mode(entry, file, key)
    comment = want(entry.get("comment", ""), str, file, f"{key}.comment")
    return DeviceRule(kind, major, low, high, path, mode, comment)


def _path_and_mode(entry: dict[str, Any], file: str, key: str) -> tuple[str | None, int | None]:
    path = entry.get("path")
    if path is not None:
        path = str(want(path, str, file, f"{key}.path"))
        if not path.startswith("/"):
            raise ConfigError(file, f"{key}.path", "must be an absolute path pattern")
    mode = entry.get("mode")
    if mode is not None:
        mode = int(want(mode, int, file, f"{key}.mode"))
        if not 0 <= mode <= 0o7777:
            raise ConfigError(file, f"{key}.mode", f"{mode:#o} is not a permission mode")
    return path, mode


def _udev_rule(entry: Any, file: str, key: str) -> UdevRule:
    entry = want(entry, dict, file, key)
    check_keys(entry, {"subsystem", "tag", "devnode", "properties", "path", "mode", "comment"},
               file, key + ".")
    if not any(k in entry for k in ("subsystem", "tag", "devnode", "properties")):
        raise ConfigError(file, key, "matches every device: give at least one of subsystem, "
                                     "tag, devnode, properties")
    strings = {k: want(entry[k], str, file, f"{key}.{k}")
               for k in ("subsystem", "tag", "devnode") if k in entry}
    if "devnode" in strings and not strings["devnode"].startswith("/dev/"):
        raise ConfigError(file, f"{key}.devnode", "must be a pattern under /dev/")
    properties = want(entry.get("properties", {}), dict, file, f"{key}.properties")
    props = tuple((name, want(value, str, file, f"{key}.properties.{name}"))
                  for name, value in properties.items())
    path, mode = _path_and_mode(entry, file, key)
    comment = want(entry.get("comment", ""), str, file, f"{key}.comment")
    return UdevRule(strings.get("subsystem"), strings.get("tag"), strings.get("devnode"),
                    props, path, mode, comment)


def parse(data: Mapping[str, Any], file: str) -> DevicePolicy:
    device_entries = want(data.get("devices", []), list, file, "devices")
    devices = tuple(_device(entry, file, f"devices[{i}]") for i, entry in enumerate(device_entries))
    udev_entries = want(data.get("udev", []), list, file, "udev")
    udev = tuple(_udev_rule(entry, file, f"udev[{i}]") for i, entry in enumerate(udev_entries))
    return DevicePolicy(devices, udev)


def merge(layers: Sequence[tuple[DevicePolicy, str]]) -> tuple[DevicePolicy, dict[str, str]]:
    """Lists are joined, parents first, duplicates dropped."""
    return DevicePolicy(union(*(layer.devices for layer, _ in layers)),
                        union(*(layer.udev for layer, _ in layers))), {}


def describe(policy: DevicePolicy, given: Described) -> list[Setting]:
    settings = []
    for rule in policy.devices:
        minor = (str(rule.minor_low) if rule.minor_low == rule.minor_high
                 else f"{rule.minor_low}-{rule.minor_high}")
        extra = "".join([f" path {rule.path}" if rule.path else "",
                         f" mode<={rule.mode_cap:#o}" if rule.mode_cap is not None else "",
                         f"  # {rule.comment}" if rule.comment else ""])
        settings.append(Setting("devices", f"{rule.kind} {rule.major}:{minor}{extra}",
                                given.profile_source))
    return settings


FAMILY: Family[DevicePolicy] = Family(
    "mknod", tuple(syscall for syscall, _, _ in _ENTRY_POINTS), filter_rules,
    doc="Emulate mknod/mknodat for the profile's devices",
    settings=Settings(("devices", "udev"), DevicePolicy(), parse, merge, describe),
    capabilities={
        "CAP_MKNOD": "making the device nodes it emulates",
        "CAP_FSETID": "keeping the mode bits the caller asked for",
        "CAP_FOWNER": "lent to a caller owning the inode's namespace (chmod)",
        "CAP_CHOWN": "giving a usable twin node the owner of the node it stands for",
        "CAP_DAC_READ_SEARCH": "open_by_handle for twins",
    },
    host_views=("devices", "nodes"))
