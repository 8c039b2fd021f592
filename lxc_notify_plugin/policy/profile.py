"""TOML profiles: what a container may ask the supervisor to do for it.

A profile file is parsed into a ``ProfileLayer`` (only what that file says),
its ``extends`` parents are loaded and merged in order, and the result is one
frozen ``Profile``.  This happens at ``enable``/``start``/``profile check``,
when the daemon first sees a container and on reload, never per request.
Unknown keys and wrong types are errors that name the file and the key.

Merging (parents first, in the order listed, then the file itself):
scalars and tables of switches (``intercept``, ``deny``, ``mount.shift``,
``mount.fuse``) take the last value given; lists (``devices``,
``mount.allowed``, ``mount.force_flags``, ``xattr.allowed``) are joined,
duplicates dropped.  See profiles/README.md.
"""

from __future__ import annotations

import errno
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):  # noqa: UP036 - tomli where tomllib is missing
    import tomllib
else:  # pragma: no cover - Debian 12's interpreter has tomllib
    import tomli as tomllib

from ..errors import ConfigError
from .families import LXD_FAMILIES, built

_MAX_MAJOR = (1 << 12) - 1  # the kernel's 32-bit dev_t: 12-bit major, 20-bit minor
_MAX_MINOR = (1 << 20) - 1
_FS_NAME = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,31}$")
_XATTR_PATTERN = re.compile(r"^(trusted|user|security|system)\.[A-Za-z0-9._*-]+$")
_MOUNT_FLAGS = ("nosuid", "nodev", "noexec", "noatime", "nodiratime", "relatime", "ro")
KERNEL = "kernel"  # the deny answer that lets the kernel decide


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


@dataclass(frozen=True)
class MountPolicy:
    allowed: tuple[str, ...] = ()
    shift: bool | None = None
    fuse: tuple[tuple[str, str], ...] = ()  # (filesystem, FUSE program)
    force_flags: tuple[str, ...] = ()
    # With shift on and no backend able to shift a filesystem: mount it
    # unshifted (files show as nobody) rather than refuse.
    unshifted_fallback: bool | None = None


@dataclass(frozen=True)
class ProfileLayer:
    """What one profile file says, before its parents are merged in."""

    name: str
    source: str
    description: str | None = None
    extends: tuple[str, ...] = ()
    intercept: tuple[tuple[str, bool], ...] = ()
    devices: tuple[DeviceRule, ...] = ()
    mount: MountPolicy = field(default_factory=MountPolicy)
    xattrs: tuple[str, ...] = ()
    deny: tuple[tuple[str, str], ...] = ()
    udev: tuple[UdevRule, ...] = ()


@dataclass(frozen=True)
class Profile:
    """A profile with its parents merged: what the supervisor enforces."""

    name: str
    description: str
    source: str  # the file it came from, for messages
    intercept: frozenset[str]
    devices: tuple[DeviceRule, ...] = ()
    mount: MountPolicy = field(default_factory=MountPolicy)
    xattrs: tuple[str, ...] = ()
    deny: tuple[tuple[str, str], ...] = ()  # (family, KERNEL or an errno name)
    sources: tuple[tuple[str, str], ...] = ()  # (setting, file that decided it)
    udev: tuple[UdevRule, ...] = ()

    def deny_answer(self, family: str) -> str:
        return dict(self.deny).get(family, KERNEL)


# --- parsing one file -------------------------------------------------------------------


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "a boolean", list: "an array",
             dict: "a table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _want(value: Any, kind: type | tuple[type, ...], file: str, key: str) -> Any:
    # bool is an int in Python; a profile saying `major = true` is a mistake.
    if isinstance(value, bool) and kind is not bool and not (
            isinstance(kind, tuple) and bool in kind):
        raise ConfigError(file, key, f"expected {_type_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(file, key, f"expected {_type_name(kind)}, got {type(value).__name__}")
    return value


def _check_keys(table: dict[str, Any], allowed: set[str], file: str, prefix: str) -> None:
    for key in table:
        if key not in allowed:
            allowed_list = ", ".join(sorted(allowed))
            raise ConfigError(file, prefix + key, f"unknown key (allowed: {allowed_list})")


def _strings(value: Any, file: str, key: str) -> tuple[str, ...]:
    items = _want(value, list, file, key)
    for i, item in enumerate(items):
        _want(item, str, file, f"{key}[{i}]")
    return tuple(items)


def check_fs_name(name: str, file: str, key: str) -> str:
    if not _FS_NAME.match(name):
        raise ConfigError(file, key, f"{name!r} is not a filesystem type name")
    return name


def _device(entry: Any, file: str, key: str) -> DeviceRule:
    entry = _want(entry, dict, file, key)
    _check_keys(entry, {"type", "major", "minor", "path", "mode", "comment"}, file, key + ".")
    for required in ("type", "major", "minor"):
        if required not in entry:
            raise ConfigError(file, f"{key}.{required}", "missing")
    kind = _want(entry["type"], str, file, f"{key}.type")
    if kind not in ("c", "b"):
        raise ConfigError(file, f"{key}.type", f"must be \"c\" or \"b\", not {kind!r}")
    major = _want(entry["major"], int, file, f"{key}.major")
    if not 0 <= major <= _MAX_MAJOR:
        raise ConfigError(file, f"{key}.major", f"{major} is outside 0..{_MAX_MAJOR}")
    minor = _want(entry["minor"], (int, list), file, f"{key}.minor")
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
    comment = _want(entry.get("comment", ""), str, file, f"{key}.comment")
    return DeviceRule(kind, major, low, high, path, mode, comment)


def _path_and_mode(entry: dict[str, Any], file: str, key: str) -> tuple[str | None, int | None]:
    path = entry.get("path")
    if path is not None:
        path = str(_want(path, str, file, f"{key}.path"))
        if not path.startswith("/"):
            raise ConfigError(file, f"{key}.path", "must be an absolute path pattern")
    mode = entry.get("mode")
    if mode is not None:
        mode = int(_want(mode, int, file, f"{key}.mode"))
        if not 0 <= mode <= 0o7777:
            raise ConfigError(file, f"{key}.mode", f"{mode:#o} is not a permission mode")
    return path, mode


def _udev_rule(entry: Any, file: str, key: str) -> UdevRule:
    entry = _want(entry, dict, file, key)
    _check_keys(entry, {"subsystem", "tag", "devnode", "properties", "path", "mode", "comment"},
                file, key + ".")
    if not any(k in entry for k in ("subsystem", "tag", "devnode", "properties")):
        raise ConfigError(file, key, "matches every device: give at least one of subsystem, "
                                     "tag, devnode, properties")
    strings = {k: _want(entry[k], str, file, f"{key}.{k}")
               for k in ("subsystem", "tag", "devnode") if k in entry}
    if "devnode" in strings and not strings["devnode"].startswith("/dev/"):
        raise ConfigError(file, f"{key}.devnode", "must be a pattern under /dev/")
    properties = _want(entry.get("properties", {}), dict, file, f"{key}.properties")
    props = tuple((name, _want(value, str, file, f"{key}.properties.{name}"))
                  for name, value in properties.items())
    path, mode = _path_and_mode(entry, file, key)
    comment = _want(entry.get("comment", ""), str, file, f"{key}.comment")
    return UdevRule(strings.get("subsystem"), strings.get("tag"), strings.get("devnode"),
                    props, path, mode, comment)


def _mount(table: Any, file: str) -> MountPolicy:
    table = _want(table, dict, file, "mount")
    _check_keys(table, {"allowed", "shift", "fuse", "force_flags", "unshifted_fallback"}, file,
                "mount.")
    allowed = tuple(check_fs_name(fs, file, "mount.allowed")
                    for fs in _strings(table.get("allowed", []), file, "mount.allowed"))
    shift = table.get("shift")
    if shift is not None:
        shift = _want(shift, bool, file, "mount.shift")
    fuse_table = _want(table.get("fuse", {}), dict, file, "mount.fuse")
    fuse = tuple((check_fs_name(fs, file, f"mount.fuse.{fs}"),
                  _want(program, str, file, f"mount.fuse.{fs}"))
                 for fs, program in fuse_table.items())
    for fs, program in fuse:
        if not program or "/" in program and not program.startswith("/"):
            raise ConfigError(file, f"mount.fuse.{fs}", f"{program!r} is not a program name")
    flags = _strings(table.get("force_flags", []), file, "mount.force_flags")
    for flag in flags:
        if flag not in _MOUNT_FLAGS:
            raise ConfigError(file, "mount.force_flags",
                              f"{flag!r} is not one of {', '.join(_MOUNT_FLAGS)}")
    fallback = table.get("unshifted_fallback")
    if fallback is not None:
        fallback = _want(fallback, bool, file, "mount.unshifted_fallback")
    return MountPolicy(allowed, shift, fuse, flags, fallback)


def _deny_answer(value: Any, file: str, key: str) -> str:
    answer = str(_want(value, str, file, key))
    if answer != KERNEL and not (answer.startswith("E") and hasattr(errno, answer)):
        raise ConfigError(file, key, f"{answer!r} is neither \"kernel\" nor an errno name "
                                     "such as \"EPERM\"")
    return answer


def parse_layer(text: str, file: str) -> ProfileLayer:
    """Parse one profile file's text; ``file`` names it in every error."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(file, None, f"invalid TOML: {err}") from err
    _check_keys(data, {"name", "description", "extends", "intercept", "devices", "udev",
                       "mount", "xattr", "deny"}, file, "")
    name = _want(data.get("name", Path(file).stem), str, file, "name")
    description = data.get("description")
    if description is not None:
        description = _want(description, str, file, "description")
    extends = _strings(data.get("extends", []), file, "extends")
    intercept_table = _want(data.get("intercept", {}), dict, file, "intercept")
    _check_keys(intercept_table, set(LXD_FAMILIES), file, "intercept.")
    intercept = tuple((k, _want(v, bool, file, f"intercept.{k}"))
                      for k, v in intercept_table.items())
    for family, on in intercept:
        if on and family not in built():
            raise ConfigError(file, f"intercept.{family}",
                              f"this build has no {family} handler yet: it cannot be intercepted")
    device_entries = _want(data.get("devices", []), list, file, "devices")
    devices = tuple(_device(entry, file, f"devices[{i}]") for i, entry in enumerate(device_entries))
    udev_entries = _want(data.get("udev", []), list, file, "udev")
    udev = tuple(_udev_rule(entry, file, f"udev[{i}]") for i, entry in enumerate(udev_entries))
    mount = _mount(data.get("mount", {}), file)
    xattr_table = _want(data.get("xattr", {}), dict, file, "xattr")
    _check_keys(xattr_table, {"allowed"}, file, "xattr.")
    xattrs = _strings(xattr_table.get("allowed", []), file, "xattr.allowed")
    for pattern in xattrs:
        if not _XATTR_PATTERN.match(pattern):
            raise ConfigError(file, "xattr.allowed", f"{pattern!r} is not an xattr name or "
                                                     "pattern (namespace.name, * allowed)")
    deny_table = _want(data.get("deny", {}), dict, file, "deny")
    _check_keys(deny_table, set(LXD_FAMILIES), file, "deny.")
    deny = tuple((k, _deny_answer(v, file, f"deny.{k}")) for k, v in deny_table.items())
    return ProfileLayer(name, file, description, extends, intercept, devices, mount, xattrs,
                        deny, udev)


# --- finding files and merging parents ---------------------------------------------------


def find_profile(name: str, search_path: tuple[Path, ...]) -> Path:
    """``NAME.toml`` in the first directory that has it, or a file path as given."""
    if is_file_name(name):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(name, None, "no such profile file")
        return path
    for directory in search_path:
        path = directory / f"{name}.toml"
        if path.is_file():
            return path
    raise ConfigError(name, None, "no such profile in " + ", ".join(map(str, search_path)))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as err:
        raise ConfigError(str(path), None, f"cannot read: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), None, "not UTF-8 text") from err


def is_file_name(name: str) -> bool:
    """A profile given as a file (``./mine.toml``) rather than by name (``mine``)."""
    return "/" in name or name.endswith(".toml")


def _parent_search(parent: str, child: Path, search_path: tuple[Path, ...]
                   ) -> tuple[str, tuple[Path, ...]]:
    """Where a parent named in ``child`` is looked for.

    A file name is relative to the child's directory.  A bare name follows
    the search path (admin profiles override shipped ones for parents too);
    a child outside the search path (``profile check ./mine.toml``) also
    finds siblings, after it.  A parent with the child's own name is the one
    it overrides: looked up only in the directories after the child's, so
    /etc/lxc-notify/profiles/default.toml can extend the shipped default.
    """
    if is_file_name(parent):
        return str(child.parent / parent), search_path
    directories = [d.resolve() for d in search_path]
    here = child.parent.resolve()
    if here not in directories:
        return parent, (*search_path, child.parent)
    if parent == child.stem:
        return parent, tuple(search_path[directories.index(here) + 1:])
    return parent, search_path


def _layers(name: str, search_path: tuple[Path, ...], chain: tuple[str, ...],
            requested_by: tuple[str, str] | None) -> list[ProfileLayer]:
    """The layers to merge for ``name``, parents first (depth first, in order)."""
    try:
        path = find_profile(name, search_path)
    except ConfigError as err:
        if requested_by is None:
            raise
        file, key = requested_by
        raise ConfigError(file, key, f"parent profile {name!r} not found") from err
    key_id = str(path.resolve())
    if key_id in chain:
        cycle = " -> ".join([*(Path(c).stem for c in chain), path.stem])
        assert requested_by is not None
        raise ConfigError(requested_by[0], requested_by[1], f"extends cycle: {cycle}")
    layer = parse_layer(_read(path), str(path))
    layers: list[ProfileLayer] = []
    for i, parent in enumerate(layer.extends):
        parent_name, parent_path = _parent_search(parent, path, search_path)
        layers += _layers(parent_name, parent_path, (*chain, key_id),
                          (str(path), f"extends[{i}]"))
    return [*layers, layer]


def _linearize(layers: list[ProfileLayer]) -> list[ProfileLayer]:
    """Each file once, where it first appears: in A extends [B, C], with B and C
    both extending D, D comes before B, and B's overrides of D stand."""
    seen: set[str] = set()
    unique = []
    for layer in layers:
        key = str(Path(layer.source).resolve())
        if key not in seen:
            seen.add(key)
            unique.append(layer)
    return unique


def _union(*groups: tuple[Any, ...]) -> tuple[Any, ...]:
    seen: dict[Any, None] = {}
    for group in groups:
        for item in group:
            seen.setdefault(item, None)
    return tuple(seen)


def merge(layers: list[ProfileLayer]) -> Profile:
    layers = _linearize(layers)
    top = layers[-1]
    sources: dict[str, str] = {}
    intercept: dict[str, bool] = {}
    deny: dict[str, str] = {}
    fuse: dict[str, str] = {}
    shift: bool | None = None
    fallback: bool | None = None
    description = ""
    for layer in layers:
        if layer.description is not None:
            description = layer.description
        for family, on in layer.intercept:
            intercept[family] = on
            sources[f"intercept.{family}"] = layer.source
        for family, answer in layer.deny:
            deny[family] = answer
            sources[f"deny.{family}"] = layer.source
        for fs, program in layer.mount.fuse:
            fuse[fs] = program
            sources[f"mount.fuse.{fs}"] = layer.source
        if layer.mount.shift is not None:
            shift = layer.mount.shift
            sources["mount.shift"] = layer.source
        if layer.mount.unshifted_fallback is not None:
            fallback = layer.mount.unshifted_fallback
            sources["mount.unshifted_fallback"] = layer.source
    mount = MountPolicy(
        allowed=_union(*(layer.mount.allowed for layer in layers)),
        shift=shift,
        fuse=tuple(fuse.items()),
        force_flags=_union(*(layer.mount.force_flags for layer in layers)),
        unshifted_fallback=fallback,
    )
    both = set(mount.allowed) & set(fuse)
    if both:
        raise ConfigError(top.source, "mount.fuse", f"{', '.join(sorted(both))} cannot be both "
                                                    "in mount.allowed and mount.fuse")
    return Profile(
        name=top.name, description=description, source=top.source,
        intercept=frozenset(k for k, v in intercept.items() if v),
        devices=_union(*(layer.devices for layer in layers)),
        mount=mount, xattrs=_union(*(layer.xattrs for layer in layers)),
        deny=tuple(deny.items()), sources=tuple(sorted(sources.items())),
        udev=_union(*(layer.udev for layer in layers)),
    )


def load_profile(name: str, search_path: tuple[Path, ...]) -> Profile:
    """Load ``name`` (a profile name or a file path) with its parents merged in.

    A profile given as a file finds its parents beside it first, so a set of
    profiles being written in one directory checks as a set.
    """
    return merge(_layers(name, search_path, (), None))


def parse_profile(text: str, file: str, search_path: tuple[Path, ...] = ()) -> Profile:
    """A profile from text (tests, ``profile check`` of stdin); parents from search_path."""
    layer = parse_layer(text, file)
    layers: list[ProfileLayer] = []
    for i, parent in enumerate(layer.extends):
        parent_name, parent_path = _parent_search(parent, Path(file), search_path)
        layers += _layers(parent_name, parent_path, (file,), (file, f"extends[{i}]"))
    return merge([*layers, layer])
