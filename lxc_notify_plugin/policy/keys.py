"""LXD's ``security.syscalls.intercept.*`` keys, with LXD's types, defaults and checks.

Host admins who know LXD set the same keys here (``lxc-notify config set NAME
KEY VALUE``); they are stored per container and layered over its profile.
Every LXD family has its switch (``PREFIX + name``); a built family declares
its other keys, how each lays over the profile and the checks across them
(``Settings`` in its module).  A key for a syscall family this build cannot
handle yet is refused, with a message saying so, rather than silently
accepted: ``NOT_BUILT`` knows LXD's keys of such families.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

from ..errors import ConfigError
from .catalog import built
from .families import KEY_PREFIX, LXD_FAMILIES, KeySpec
from .schema import parse_bool, parse_fs_list, parse_fuse_map

PREFIX = KEY_PREFIX
__all__ = ["PREFIX", "KeySpec", "check_buildable", "check_together", "known", "normalize",
           "parse_bool", "spec"]

# LXD's keys (beyond the switch) of families this build may lack: known so
# that setting one is refused with the reason.  A family's own declaration
# replaces its entries here once its module exists.
NOT_BUILT: tuple[KeySpec, ...] = (
    KeySpec(PREFIX + "bpf.devices", "bool", "bpf", True, "Allow device cgroup BPF programs",
            "false"),
)


@cache
def known() -> dict[str, KeySpec]:
    """Every key this build knows, by name: each LXD family's switch, then its other keys."""
    found: dict[str, KeySpec] = {}
    families = built()
    for name in LXD_FAMILIES:
        family = families.get(name)
        doc = family.doc if family is not None else f"Emulate {name}"
        found[PREFIX + name] = KeySpec(PREFIX + name, "bool", name, False, doc, "false")
        if family is None:
            found.update((key.name, key) for key in NOT_BUILT if key.family == name)
        elif family.settings is not None:
            found.update((key.name, key) for key in family.settings.keys)
    return found


def spec(key: str, file: str) -> KeySpec:
    try:
        return known()[key]
    except KeyError:
        names = ", ".join(sorted(known()))
        raise ConfigError(file, key, f"unknown key (known: {names})") from None


def normalize(key: str, value: str, file: str) -> str:
    """Check one value's type; return it as stored (booleans as "true"/"false")."""
    kind = spec(key, file).kind
    if kind == "bool":
        return "true" if parse_bool(value, file, key) else "false"
    if kind == "fs-list":
        return ",".join(parse_fs_list(value, file, key))
    return ",".join(f"{fs}={program}" for fs, program in parse_fuse_map(value, file, key))


def check_buildable(key: str, value: str, file: str) -> None:
    """Refuse a key whose handler this build lacks (unless it turns that off)."""
    key_spec = spec(key, file)
    if key_spec.family in built():
        return
    if key_spec.kind == "bool" and value == "false":
        return
    raise ConfigError(file, key, f"this build has no {key_spec.family} handler yet; "
                                 "the key is refused rather than silently ignored")


def check_together(config: Mapping[str, str], file: str) -> None:
    """Checks across keys, as LXD makes them: each family's own, and LXD's rule
    for a sub-key of a family this build lacks (it needs the switch on)."""
    for family in built().values():
        if family.settings is not None and family.settings.check_keys is not None:
            family.settings.check_keys(config, file)
    for key in NOT_BUILT:
        if (key.family not in built() and config.get(key.name) == "true"
                and config.get(PREFIX + key.family) != "true"):
            raise ConfigError(file, key.name, f"needs {PREFIX}{key.family}")
