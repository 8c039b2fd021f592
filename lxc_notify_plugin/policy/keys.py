"""LXD's ``security.syscalls.intercept.*`` keys, with LXD's types, defaults and checks.

Host admins who know LXD set the same keys here (``lxc-notify config set NAME
KEY VALUE``); they are stored per container and layered over its profile.
A key for a syscall family this build cannot handle yet is refused, with a
message saying so, rather than silently accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .families import built
from .profile import check_fs_name

PREFIX = "security.syscalls.intercept."
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


@dataclass(frozen=True)
class KeySpec:
    name: str
    kind: str  # "bool", "fs-list" or "fuse-map"
    family: str  # the handler it needs
    live: bool  # takes effect for a running container (else: at next start)
    doc: str
    default: str = ""


KEYS: dict[str, KeySpec] = {spec.name: spec for spec in (
    KeySpec(PREFIX + "mknod", "bool", "mknod", False,
            "Emulate mknod/mknodat for the profile's devices", "false"),
    KeySpec(PREFIX + "setxattr", "bool", "setxattr", False,
            "Emulate setxattr for the profile's xattr names", "false"),
    KeySpec(PREFIX + "mount", "bool", "mount", False, "Emulate mount", "false"),
    KeySpec(PREFIX + "mount.allowed", "fs-list", "mount", True,
            "Comma-separated filesystems the container may mount"),
    KeySpec(PREFIX + "mount.shift", "bool", "mount", True,
            "Idmap-shift the mounts the supervisor makes", "false"),
    KeySpec(PREFIX + "mount.fuse", "fuse-map", "mount", True,
            "Comma-separated fs=fuse-program redirects, e.g. ext4=fuse2fs"),
    KeySpec(PREFIX + "sysinfo", "bool", "sysinfo", False,
            "Answer sysinfo with the container's own limits", "false"),
    KeySpec(PREFIX + "sched_setscheduler", "bool", "sched_setscheduler", False,
            "Emulate sched_setscheduler", "false"),
    KeySpec(PREFIX + "bpf", "bool", "bpf", False, "Emulate bpf", "false"),
    KeySpec(PREFIX + "bpf.devices", "bool", "bpf", True,
            "Allow device cgroup BPF programs", "false"),
)}


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


def spec(key: str, file: str) -> KeySpec:
    try:
        return KEYS[key]
    except KeyError:
        known = ", ".join(sorted(KEYS))
        raise ConfigError(file, key, f"unknown key (known: {known})") from None


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


def check_together(config: dict[str, str], file: str) -> None:
    """Checks across keys, as LXD makes them."""
    allowed = set(parse_fs_list(config.get(PREFIX + "mount.allowed", ""), file,
                                PREFIX + "mount.allowed"))
    fuse = {fs for fs, _ in parse_fuse_map(config.get(PREFIX + "mount.fuse", ""), file,
                                           PREFIX + "mount.fuse")}
    both = allowed & fuse
    if both:
        raise ConfigError(file, PREFIX + "mount.fuse",
                          f"{', '.join(sorted(both))} cannot be both in mount.allowed and "
                          "mount.fuse")
    if config.get(PREFIX + "bpf.devices") == "true" and config.get(PREFIX + "bpf") != "true":
        raise ConfigError(file, PREFIX + "bpf.devices", "needs security.syscalls.intercept.bpf")
