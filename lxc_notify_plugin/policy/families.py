"""Syscall families: what each intercepted call declares, in one place.

A family is what a profile's ``intercept.NAME`` and LXD's
``security.syscalls.intercept.NAME`` switch on: a set of syscalls handled
alike (``mknod`` owns ``mknod`` and ``mknodat``).  Its policy module in this
package declares it as ``FAMILY``, and everything the rest of the daemon
knows about it is read from that declaration (``policy/catalog.py`` finds
them):

* the syscalls it owns (by name; numbers for every arch come from
  libseccomp): the dispatch table;
* the seccomp filter rules that send those calls to us, with the argument
  conditions that leave in the kernel what we would hand back anyway: LXC's
  policy text and an OCI runtime's seccomp JSON;
* its ``Settings``: the profile tables it owns and their validation, how a
  file's tables merge with its parents', the LXD keys beyond its switch and
  how each lays over the profile, and how ``config show --effective`` shows
  the result;
* the capabilities its handler needs, each with its reason: the systemd
  unit's bounding set (``service/unit.py``);
* the host views its handler reads (fields of ``handlers/call.py:
  HostViews``).

Its effect lives in ``handlers/`` under the same module name.  Adding a
family is one policy module, one handler module, its kernel bindings if any,
and their tests.

This module holds only the types: a family module imports it, and nothing
here imports a family module (no cycle through the discovery).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .filter import Rule

# The names LXD gives its ``security.syscalls.intercept.*`` switches: the words a
# profile or a key may use.  A name here without a policy module is known but
# not built: switching it on is refused with a message, never ignored.
LXD_FAMILIES = ("mknod", "setxattr", "mount", "sysinfo", "sched_setscheduler", "bpf")

KEY_PREFIX = "security.syscalls.intercept."
DEFAULT_SOURCE = "default"  # where a setting nobody gave comes from

S = TypeVar("S")  # a family's settings: its profile tables with the keys laid over them


@dataclass(frozen=True)
class Setting:
    """One line of ``config show --effective``."""

    name: str
    value: str
    source: str  # a profile file, "key NAME", or "default"


@dataclass(frozen=True)
class KeySpec:
    """An LXD key, with LXD's type and default."""

    name: str  # the whole key, KEY_PREFIX included
    kind: str  # "bool", "fs-list" or "fuse-map"
    family: str  # the handler it needs
    live: bool  # takes effect for a running container (else: at next start)
    doc: str
    default: str = ""


@dataclass(frozen=True)
class Described:
    """What a family's ``describe`` may need to say where each value came from."""

    intercepted: bool
    profile_source: str  # the profile's own file
    sources: Mapping[str, str]  # setting -> the profile file that decided it
    config: Mapping[str, str]  # the container's keys


@dataclass(frozen=True)
class Settings(Generic[S]):
    """A family's part of a profile, and the LXD keys laid over it."""

    tables: tuple[str, ...]  # the top-level profile tables it owns
    default: S  # what a profile saying nothing gives
    # One file's tables (the whole parsed file is given; only ``tables`` are
    # read) -> that file's layer.  Errors name the file and the key.
    parse: Callable[[Mapping[str, Any], str], S]
    # Layers, parents first, each with its file -> the merged settings and,
    # per setting name, the file that decided it.
    merge: Callable[[Sequence[tuple[S, str]]], tuple[S, dict[str, str]]]
    describe: Callable[[S, Described], list[Setting]]
    keys: tuple[KeySpec, ...] = ()  # beyond the family's switch
    # (merged settings, the container's keys, their file, the profile's file) -> settings
    lay_keys: Callable[[S, Mapping[str, str], str, str], S] | None = None
    # Checks across its keys alone, as LXD makes them: (keys, their file).
    check_keys: Callable[[Mapping[str, str], str], None] | None = None


@dataclass(frozen=True)
class Family(Generic[S]):
    name: str  # as in LXD_FAMILIES
    syscalls: tuple[str, ...]  # every entry point, by name
    # The notify rules (and in-kernel answers) for a container whose policy
    # intercepts this family, from its settings; built at enable/start, never
    # per request.
    filter_rules: Callable[[S], tuple[Rule, ...]]
    doc: str  # what its switch does, for the key's description
    settings: Settings[S] | None = None  # None: nothing to configure beyond the switch
    # Capability -> why the handler needs it: the unit's bounding set.
    capabilities: Mapping[str, str] = field(default_factory=dict)
    host_views: tuple[str, ...] = ()  # HostViews fields its handler reads

    @property
    def default(self) -> S | None:
        return None if self.settings is None else self.settings.default
