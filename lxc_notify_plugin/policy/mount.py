"""The mount family: which filesystems a container may have the supervisor mount.

Declares the family (``mount`` and ``fsopen``), its filter rules, its
profile table (``[mount]``) and keys (``mount.allowed``, ``mount.shift``,
``mount.fuse``), and the decisions that need no kernel: which filesystem a call asks for and what we
do with it, the flags to force, the options to refuse, and the translation
of ``mount(2)``'s ``MS_*`` flags into the new mount API's superblock flags
and ``MOUNT_ATTR_*`` mount attributes.

Only ``mount(2)`` calls that make a new superblock reach us: a bind mount,
a remount, a move or a propagation change never leaves the kernel (the
filter tests the flags).  Of those, a filesystem the policy neither allows
nor redirects to FUSE (tmpfs, proc, sysfs, overlay, fuse itself) is handed
back untouched.  ``fsopen`` is trapped so that a filesystem we emulate
answers ENOSYS there, which makes util-linux's mount(8) fall back to
``mount(2)``; every other ``fsopen``, and ``fsconfig``, ``fsmount``,
``open_tree``, ``move_mount`` and ``openat2``, stay the kernel's.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .. import kernel
from ..errors import ConfigError
from .families import DEFAULT_SOURCE, KEY_PREFIX, Described, Family, KeySpec, Setting, Settings
from .filter import ArgMatch, Rule
from .schema import check_fs_name, check_keys, parse_fs_list, parse_fuse_map, strings, union, want


@dataclass(frozen=True)
class MountPolicy:
    """The family's settings: ``[mount]`` of a profile, keys laid over it."""

    allowed: tuple[str, ...] = ()
    shift: bool | None = None
    fuse: tuple[tuple[str, str], ...] = ()  # (filesystem, FUSE program)
    force_flags: tuple[str, ...] = ()
    # With shift on and no backend able to shift a filesystem: mount it
    # unshifted (files show as nobody) rather than refuse.
    unshifted_fallback: bool | None = None


# Flags that make mount(2) something other than a new superblock.
NOT_NEW: Final = (kernel.MS_BIND | kernel.MS_REMOUNT | kernel.MS_MOVE | kernel.MS_SHARED
                  | kernel.MS_PRIVATE | kernel.MS_SLAVE | kernel.MS_UNBINDABLE)

# Always forced, whatever the profile says: a device node on an image would
# reach the host's devices (with shifting, as an owner the container maps).
ALWAYS_FORCED: Final = ("nodev",)
DEFAULT_FORCED: Final = ("nosuid", "nodev")

# Options whose value names a host path or a device number, or that act on
# the whole host: the kernel would resolve them in the supervisor's context,
# not the caller's.  Refused (EPERM) for every filesystem.
FORBIDDEN_OPTIONS: Final = frozenset({
    "journal_path", "journal_dev",  # ext3/ext4: an external journal on a host device
    "logdev", "rtdev",  # xfs: log and realtime devices by host path
    "device",  # btrfs: extra devices by host path
    "dax",  # direct access to host persistent memory
})
FORBIDDEN_VALUES: Final = frozenset({("errors", "panic")})  # a bad image would panic the host

_FORCED_FLAG_BITS: Final = {
    "nosuid": kernel.MS_NOSUID, "nodev": kernel.MS_NODEV, "noexec": kernel.MS_NOEXEC,
    "noatime": kernel.MS_NOATIME, "nodiratime": kernel.MS_NODIRATIME,
    "relatime": kernel.MS_RELATIME, "ro": kernel.MS_RDONLY,
}

# MS_* -> the superblock flag fsconfig(FSCONFIG_SET_FLAG) names (vfs_parse_sb_flag).
_SB_FLAGS: Final = ((kernel.MS_RDONLY, b"ro"), (kernel.MS_SYNCHRONOUS, b"sync"),
                    (kernel.MS_DIRSYNC, b"dirsync"), (kernel.MS_LAZYTIME, b"lazytime"))
# MS_* -> MOUNT_ATTR_* of the mount itself (fsmount's attr_flags).
_MOUNT_ATTRS: Final = ((kernel.MS_RDONLY, kernel.MOUNT_ATTR_RDONLY),
                       (kernel.MS_NOSUID, kernel.MOUNT_ATTR_NOSUID),
                       (kernel.MS_NODEV, kernel.MOUNT_ATTR_NODEV),
                       (kernel.MS_NOEXEC, kernel.MOUNT_ATTR_NOEXEC),
                       (kernel.MS_NODIRATIME, kernel.MOUNT_ATTR_NODIRATIME),
                       (kernel.MS_NOSYMFOLLOW, kernel.MOUNT_ATTR_NOSYMFOLLOW))
# Flags do_mount() accepts and we translate; others (MS_POSIXACL, MS_KERNMOUNT...)
# are the kernel's own and are dropped by it for mount(2) too.
_KNOWN: Final = (kernel.MS_RDONLY | kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC
                 | kernel.MS_SYNCHRONOUS | kernel.MS_MANDLOCK | kernel.MS_DIRSYNC
                 | kernel.MS_NOSYMFOLLOW | kernel.MS_NOATIME | kernel.MS_NODIRATIME
                 | kernel.MS_REC | kernel.MS_SILENT | kernel.MS_RELATIME
                 | kernel.MS_I_VERSION | kernel.MS_STRICTATIME | kernel.MS_LAZYTIME)

EMULATE = "emulate"  # mount it ourselves
REDIRECT = "fuse"  # run the policy's FUSE program in the container instead


def mount_flags(raw: int) -> int:
    """The flags as path_mount() sees them: where bits 16..31 are exactly the old
    magic 0xC0ED, every bit from 16 up (the upper 32 included) is dropped.  A
    compat caller's arguments arrive already cut to 32 bits (the request)."""
    flags = raw & _ULONG
    if flags & kernel.MS_MGC_MSK == kernel.MS_MGC_VAL:
        flags &= 0xFFFF
    return flags


# MS_NOUSER is the int 1 << 31: tested against the unsigned long flags it is
# sign-extended, so path_mount() answers EINVAL for any bit from 31 up.
_NOUSER_EXTENDED: Final = 0xFFFF_FFFF_8000_0000
_ULONG: Final = 0xFFFF_FFFF_FFFF_FFFF


def flags_error(flags: int) -> int | None:
    """path_mount()'s answer to the flags alone (after the target's walk), or None."""
    if flags & _NOUSER_EXTENDED:
        return errno.EINVAL
    return None


def choice(policy: MountPolicy, fs_type: str) -> tuple[str, str] | None:
    """(EMULATE, "") or (REDIRECT, program) for ``fs_type``; None: the kernel's."""
    if fs_type in policy.allowed:
        return EMULATE, ""
    program = dict(policy.fuse).get(fs_type)
    if program is not None:
        return REDIRECT, program
    return None


def forced_flags(policy: MountPolicy) -> int:
    names = set(policy.force_flags or DEFAULT_FORCED) | set(ALWAYS_FORCED)
    bits = 0
    for name in names:
        bits |= _FORCED_FLAG_BITS[name]
    return bits


@dataclass(frozen=True)
class Option:
    key: bytes
    value: bytes | None  # None: a flag option (no "=")


def parse_options(data: bytes) -> tuple[Option, ...]:
    """A mount(2) data string as vfs_parse_monolithic_sep() splits it: on commas,
    each ``key[=value]``; empty pieces and pieces with an empty key ("=x") skipped."""
    options = []
    for piece in data.split(b","):
        if not piece or piece.startswith(b"="):
            continue
        key, sep, value = piece.partition(b"=")
        options.append(Option(key, value if sep else None))
    return tuple(options)


def refused_option(options: tuple[Option, ...]) -> str | None:
    """The first option the policy forbids, as text for the log; None if none."""
    for option in options:
        key = option.key.decode(errors="replace")
        value = None if option.value is None else option.value.decode(errors="replace")
        if key in FORBIDDEN_OPTIONS or (key, value) in FORBIDDEN_VALUES:
            return key if value is None else f"{key}={value}"
    return None


@dataclass(frozen=True)
class Translated:
    """A mount(2) call's flags for the new API."""

    sb_flags: tuple[bytes, ...]  # fsconfig(FSCONFIG_SET_FLAG) names
    attrs: int  # fsmount's MOUNT_ATTR_* flags
    flags: int  # the MS_* flags, forced ones included (for logs and the FUSE program)


def translate(flags: int, forced: int) -> Translated:
    """MS_* (with the policy's forced flags) as superblock flags and mount attributes.

    The atime setting is one of three (relatime, the default; noatime;
    strictatime), as path_mount() picks it: MS_STRICTATIME wins over MS_NOATIME
    (it clears the atime bits, then sets strictatime last).
    """
    flags = (flags & _KNOWN) | forced
    sb_flags = tuple(name for bit, name in _SB_FLAGS if flags & bit)
    attrs = 0
    for bit, attr in _MOUNT_ATTRS:
        if flags & bit:
            attrs |= attr
    if flags & kernel.MS_STRICTATIME:
        attrs |= kernel.MOUNT_ATTR_STRICTATIME
    elif flags & kernel.MS_NOATIME:
        attrs |= kernel.MOUNT_ATTR_NOATIME
    return Translated(sb_flags, attrs, flags)


def mount_attrs(flags: int, forced: int) -> int:
    """The new mount's MOUNT_ATTR_* flags: the caller's MS_* and the forced ones."""
    return translate(flags, forced).attrs


# Stored defaults a superblock carries that would act on the host: ext2/3/4
# keep an "errors" behaviour in the superblock (tune2fs -e panic) and a
# mount-options string (tune2fs -E mount_opts=errors=panic), both applied
# unless the mount says otherwise.  The container's root writes its own
# image, so every mount says otherwise: after the caller's options, unless
# the caller itself chose a behaviour that stays inside (errors=panic is
# refused outright, FORBIDDEN_VALUES).
SUPERBLOCK_OVERRIDES: Final = {
    "ext2": ((b"errors", b"remount-ro"),),
    "ext3": ((b"errors", b"remount-ro"),),
    "ext4": ((b"errors", b"remount-ro"),),
}
_CONTAINED_VALUES: Final = {b"errors": frozenset({b"continue", b"remount-ro"})}

Step = tuple[str, bytes, "bytes | None"]  # ("flag", key, None) or ("string", key, value)


def config_steps(fs_type: str, flags: int, options: tuple[Option, ...],
                 forced: int) -> list[Step]:
    """The fsconfig steps of a new superblock, in the kernel's order for mount(2),
    with the policy's own last so the caller's data cannot undo them.

    do_new_mount() makes the context with the superblock flags of ``MS_*``
    (``ro`` for MS_RDONLY), then parses the data string, where ``rw`` clears
    ``ro`` and ``ro`` sets it: the superblock's access, and so the access the
    kernel opens the device with, is the kernel's own result.  Then the
    forced superblock flags (a forced ``ro`` wins over the caller's ``rw``)
    and the overrides of stored defaults.
    """
    steps: list[Step] = [("flag", name, None) for bit, name in _SB_FLAGS if flags & bit]
    for option in options:
        if option.value is None:
            steps.append(("flag", option.key, None))
        else:
            steps.append(("string", option.key, option.value))
    steps += [("flag", name, None) for bit, name in _SB_FLAGS if forced & bit]
    for key, value in SUPERBLOCK_OVERRIDES.get(fs_type, ()):
        chosen = [o.value for o in options if o.key == key]
        if chosen and chosen[-1] in _CONTAINED_VALUES.get(key, frozenset()):
            continue  # the caller's own choice stays inside the container
        steps.append(("string", key, value))
    return steps


def fuse_options(flags: int, options: tuple[Option, ...]) -> str:
    """The ``-o`` list for a FUSE program: the mount flags as option words, then
    the caller's own options as it gave them."""
    words = [name for name, bit in (("ro", kernel.MS_RDONLY), ("nosuid", kernel.MS_NOSUID),
                                    ("nodev", kernel.MS_NODEV), ("noexec", kernel.MS_NOEXEC),
                                    ("noatime", kernel.MS_NOATIME), ("sync", kernel.MS_SYNCHRONOUS),
                                    ("dirsync", kernel.MS_DIRSYNC))
             if flags & bit]
    for option in options:
        key = option.key.decode(errors="replace")
        words.append(key if option.value is None
                     else f"{key}={option.value.decode(errors='replace')}")
    return ",".join(words)


def filter_rules(policy: MountPolicy) -> tuple[Rule, ...]:
    """mount(2) only when it makes a new superblock; every fsopen (its
    filesystem name is a string, which a filter cannot read)."""
    return (Rule("mount", None, (ArgMatch(3, 0, mask=NOT_NEW),)),
            # The old magic 0xC0ED0000 carries the MS_PRIVATE and MS_SLAVE bits, so
            # the rule above never sees a call with it: trapped, and judged after
            # path_mount()'s own dropping of the magic.
            Rule("mount", None, (ArgMatch(3, kernel.MS_MGC_VAL, mask=kernel.MS_MGC_MSK),)),
            Rule("fsopen", None))


# --- the profile's table and the keys -------------------------------------------------


def parse(data: Mapping[str, Any], file: str) -> MountPolicy:
    table = want(data.get("mount", {}), dict, file, "mount")
    check_keys(table, {"allowed", "shift", "fuse", "force_flags", "unshifted_fallback"}, file,
               "mount.")
    allowed = tuple(check_fs_name(fs, file, "mount.allowed")
                    for fs in strings(table.get("allowed", []), file, "mount.allowed"))
    shift = table.get("shift")
    if shift is not None:
        shift = want(shift, bool, file, "mount.shift")
    fuse_table = want(table.get("fuse", {}), dict, file, "mount.fuse")
    fuse = tuple((check_fs_name(fs, file, f"mount.fuse.{fs}"),
                  want(program, str, file, f"mount.fuse.{fs}"))
                 for fs, program in fuse_table.items())
    for fs, program in fuse:
        if not program or "/" in program and not program.startswith("/"):
            raise ConfigError(file, f"mount.fuse.{fs}", f"{program!r} is not a program name")
    flags = strings(table.get("force_flags", []), file, "mount.force_flags")
    for flag in flags:
        if flag not in _FORCED_FLAG_BITS:
            raise ConfigError(file, "mount.force_flags",
                              f"{flag!r} is not one of {', '.join(_FORCED_FLAG_BITS)}")
    fallback = table.get("unshifted_fallback")
    if fallback is not None:
        fallback = want(fallback, bool, file, "mount.unshifted_fallback")
    return MountPolicy(allowed, shift, fuse, flags, fallback)


def merge(layers: Sequence[tuple[MountPolicy, str]]) -> tuple[MountPolicy, dict[str, str]]:
    """Switches take the last value given, lists are joined (duplicates dropped)."""
    sources: dict[str, str] = {}
    fuse: dict[str, str] = {}
    shift: bool | None = None
    fallback: bool | None = None
    for layer, source in layers:
        for fs, program in layer.fuse:
            fuse[fs] = program
            sources[f"mount.fuse.{fs}"] = source
        if layer.shift is not None:
            shift = layer.shift
            sources["mount.shift"] = source
        if layer.unshifted_fallback is not None:
            fallback = layer.unshifted_fallback
            sources["mount.unshifted_fallback"] = source
    merged = MountPolicy(
        allowed=union(*(layer.allowed for layer, _ in layers)),
        shift=shift,
        fuse=tuple(fuse.items()),
        force_flags=union(*(layer.force_flags for layer, _ in layers)),
        unshifted_fallback=fallback,
    )
    both = set(merged.allowed) & set(fuse)
    if both:
        raise ConfigError(layers[-1][1], "mount.fuse", f"{', '.join(sorted(both))} cannot be "
                                                       "both in mount.allowed and mount.fuse")
    return merged, sources


_ALLOWED, _SHIFT, _FUSE = (KEY_PREFIX + name for name in ("mount.allowed", "mount.shift",
                                                          "mount.fuse"))


def lay_keys(mount: MountPolicy, config: Mapping[str, str], config_file: str,
             profile_source: str) -> MountPolicy:
    allowed, fuse, shift = mount.allowed, mount.fuse, mount.shift
    if _ALLOWED in config:
        allowed = parse_fs_list(config[_ALLOWED], config_file, _ALLOWED)
    if _FUSE in config:
        fuse = parse_fuse_map(config[_FUSE], config_file, _FUSE)
    if _SHIFT in config:
        shift = config[_SHIFT] == "true"
    # The profile and the keys are each checked alone; laid over each other
    # they can still name one filesystem in both (profile allowed + key fuse).
    both = set(allowed) & {fs for fs, _ in fuse}
    if both:
        # Name the key that brought the conflict in (fuse first, as check_keys).
        file, key = profile_source, "mount.fuse"
        for name in (_FUSE, _ALLOWED):
            if name in config:
                file, key = config_file, name
                break
        raise ConfigError(file, key, f"{', '.join(sorted(both))} cannot be both in "
                                     "mount.allowed and mount.fuse (profile and keys "
                                     "together)")
    return MountPolicy(allowed, shift, fuse, mount.force_flags, mount.unshifted_fallback)


def check_together(config: Mapping[str, str], file: str) -> None:
    allowed = set(parse_fs_list(config.get(_ALLOWED, ""), file, _ALLOWED))
    fuse = {fs for fs, _ in parse_fuse_map(config.get(_FUSE, ""), file, _FUSE)}
    both = allowed & fuse
    if both:
        raise ConfigError(file, _FUSE, f"{', '.join(sorted(both))} cannot be both in "
                                       "mount.allowed and mount.fuse")


def describe(mount: MountPolicy, given: Described) -> list[Setting]:
    settings = []
    for name, value in (("mount.allowed", ",".join(mount.allowed)),
                        ("mount.shift", str(bool(mount.shift)).lower()),
                        ("mount.fuse", ",".join(f"{f}={p}" for f, p in mount.fuse))):
        source = (f"key {KEY_PREFIX}{name}" if KEY_PREFIX + name in given.config
                  else given.sources.get(name, given.profile_source if value
                                         else DEFAULT_SOURCE))
        settings.append(Setting(name, value, source))
    if given.intercepted:
        forced = sorted(set(mount.force_flags or DEFAULT_FORCED) | set(ALWAYS_FORCED))
        settings.append(Setting("mount.force_flags", ",".join(forced),
                                given.profile_source if mount.force_flags else DEFAULT_SOURCE))
        settings.append(Setting("mount.unshifted_fallback",
                                str(bool(mount.unshifted_fallback)).lower(),
                                given.sources.get("mount.unshifted_fallback", DEFAULT_SOURCE)))
    return settings


FAMILY: Family[MountPolicy] = Family(
    "mount", ("mount", "fsopen"), filter_rules,
    doc="Emulate mount",
    settings=Settings(
        ("mount",), MountPolicy(), parse, merge, describe,
        keys=(KeySpec(_ALLOWED, "fs-list", "mount", True,
                      "Comma-separated filesystems the container may mount"),
              KeySpec(_SHIFT, "bool", "mount", True,
                      "Idmap-shift the mounts the supervisor makes", "false"),
              KeySpec(_FUSE, "fuse-map", "mount", True,
                      "Comma-separated fs=fuse-program redirects, e.g. ext4=fuse2fs")),
        lay_keys=lay_keys, check_keys=check_together),
    capabilities={"CAP_SYS_ADMIN": "mounts and idmapped mounts",
                  "CAP_SYS_NICE": "a FUSE program's nice value, scheduling policy and "
                                  "timer slack, as the caller's"},
    host_views=("shifter", "flag_locks"))
