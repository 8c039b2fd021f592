"""TOML profiles: what a container may ask the supervisor to do for it.

A profile is read once (at ``enable``/``start`` and when the daemon first sees
the container) into frozen dataclasses; the hot path only consults them.
Unknown keys and wrong types are errors naming the file and the key.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):  # noqa: UP036 - tomli where tomllib is missing
    import tomllib
else:  # pragma: no cover - Debian 12's interpreter has tomllib
    import tomli as tomllib

from ..errors import ConfigError

# Syscalls this build can intercept; a profile naming another is refused.
INTERCEPTABLE = ("mknod",)

_MAX_MAJOR = (1 << 12) - 1  # the kernel's 32-bit dev_t: 12-bit major, 20-bit minor
_MAX_MINOR = (1 << 20) - 1


@dataclass(frozen=True)
class DeviceRule:
    """One allowed device: type ``c`` or ``b``, a major, and an inclusive minor range."""

    kind: str
    major: int
    minor_low: int
    minor_high: int
    comment: str = ""

    def matches(self, kind: str, major: int, minor: int) -> bool:
        return (self.kind == kind and self.major == major
                and self.minor_low <= minor <= self.minor_high)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    source: str  # the file it came from, for messages
    intercept: frozenset[str]
    devices: tuple[DeviceRule, ...] = field(default=())


def _want(value: Any, kind: type | tuple[type, ...], file: str, key: str) -> Any:
    # bool is an int in Python; a profile saying `major = true` is a mistake.
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(file, key, f"expected {_type_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(file, key, f"expected {_type_name(kind)}, got {type(value).__name__}")
    return value


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "a boolean", list: "an array",
             dict: "a table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _check_keys(table: dict[str, Any], allowed: set[str], file: str, prefix: str) -> None:
    for key in table:
        if key not in allowed:
            allowed_list = ", ".join(sorted(allowed))
            raise ConfigError(file, prefix + key, f"unknown key (allowed: {allowed_list})")


def _device(entry: Any, file: str, key: str) -> DeviceRule:
    entry = _want(entry, dict, file, key)
    _check_keys(entry, {"type", "major", "minor", "comment"}, file, key + ".")
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
    comment = _want(entry.get("comment", ""), str, file, f"{key}.comment")
    return DeviceRule(kind, major, low, high, comment)


def parse_profile(text: str, file: str) -> Profile:
    """Parse one profile's text; ``file`` names it in every error."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(file, None, f"invalid TOML: {err}") from err
    _check_keys(data, {"name", "description", "intercept", "devices"}, file, "")
    name = _want(data.get("name", Path(file).stem), str, file, "name")
    description = _want(data.get("description", ""), str, file, "description")
    intercept_table = _want(data.get("intercept", {}), dict, file, "intercept")
    _check_keys(intercept_table, set(INTERCEPTABLE), file, "intercept.")
    intercept = frozenset(k for k, v in intercept_table.items()
                          if _want(v, bool, file, f"intercept.{k}"))
    device_entries = _want(data.get("devices", []), list, file, "devices")
    devices = tuple(_device(entry, file, f"devices[{i}]") for i, entry in enumerate(device_entries))
    return Profile(name, description, file, intercept, devices)


def load_profile(name: str, search_path: tuple[Path, ...]) -> Profile:
    """Find ``NAME.toml`` in the first directory of ``search_path`` that has it."""
    if "/" in name or name.startswith("."):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(name, None, "no such profile file")
        return parse_profile(path.read_text(), str(path))
    for directory in search_path:
        path = directory / f"{name}.toml"
        if path.is_file():
            return parse_profile(path.read_text(), str(path))
    raise ConfigError(name, None, "no such profile in " + ", ".join(map(str, search_path)))
