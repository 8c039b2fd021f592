"""Checking values as a profile file or an LXD key gives them.

Shared by the profile parser and the families' own tables and keys; every
error names the file and the key.  Pure functions, no policy.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError

_FS_NAME = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,31}$")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "a boolean", list: "an array",
             dict: "a table"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def want(value: Any, kind: type | tuple[type, ...], file: str, key: str) -> Any:
    # bool is an int in Python; a profile saying `major = true` is a mistake.
    if isinstance(value, bool) and kind is not bool and not (
            isinstance(kind, tuple) and bool in kind):
        raise ConfigError(file, key, f"expected {_type_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(file, key, f"expected {_type_name(kind)}, got {type(value).__name__}")
    return value


def check_keys(table: dict[str, Any], allowed: set[str], file: str, prefix: str) -> None:
    for key in table:
        if key not in allowed:
            allowed_list = ", ".join(sorted(allowed))
            raise ConfigError(file, prefix + key, f"unknown key (allowed: {allowed_list})")


def strings(value: Any, file: str, key: str) -> tuple[str, ...]:
    items = want(value, list, file, key)
    for i, item in enumerate(items):
        want(item, str, file, f"{key}[{i}]")
    return tuple(items)


def check_fs_name(name: str, file: str, key: str) -> str:
    if not _FS_NAME.match(name):
        raise ConfigError(file, key, f"{name!r} is not a filesystem type name")
    return name


def union(*groups: tuple[Any, ...]) -> tuple[Any, ...]:
    """The items of every group, in order, each once (how profile lists merge)."""
    seen: dict[Any, None] = {}
    for group in groups:
        for item in group:
            seen.setdefault(item, None)
    return tuple(seen)


# --- LXD's value types ------------------------------------------------------------------


def parse_bool(value: str, file: str, key: str) -> bool:
    """LXD's booleans: true/1/yes/on and false/0/no/off, any case."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(file, key, f"{value!r} is not a boolean (true/false, 1/0, yes/no, on/off)")


def parse_fs_list(value: str, file: str, key: str) -> tuple[str, ...]:
    names = [part.strip() for part in value.split(",") if part.strip()]
    return tuple(check_fs_name(name, file, key) for name in names)


def parse_fuse_map(value: str, file: str, key: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for part in (p.strip() for p in value.split(",") if p.strip()):
        fs, sep, program = part.partition("=")
        if not sep or not program.strip():
            raise ConfigError(file, key, f"{part!r} is not fs=fuse-program")
        pairs.append((check_fs_name(fs.strip(), file, key), program.strip()))
    return tuple(pairs)
