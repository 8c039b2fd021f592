"""The setxattr family: which extended attributes the supervisor sets for a container.

Declares the family (``setxattr``, ``lsetxattr``, ``fsetxattr``), its filter
rules and the decision for one attribute name.  The names a profile allows
(``[xattr] allowed``, globs: ``trusted.overlay.*``) are set for a caller
holding CAP_SYS_ADMIN in the container's user namespace; every other name,
and every other caller, goes back to the kernel unchanged (CONTINUE), which
answers as it would without us (``user.*`` works, ``trusted.*`` is EPERM).

A seccomp filter cannot compare strings, so it cannot tell names apart:
with the family on, every setxattr of the container is trapped and the
unlisted ones pay the round trip (``bench/setxattr_cost.py``).  So nothing
is trapped unless the profile allows at least one name.

Some names carry values the kernel interprets in the *caller's* user
namespace: POSIX ACLs (their uids and gids) and ``security.capability``
(its v3 root id).  Set by us, from the host's namespace, they would mean
host ids.  They are never emulated, whatever a profile says: the kernel
already handles them for a container's root on its own files.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..errors import ConfigError
from .families import Described, Family, Setting, Settings
from .filter import Rule
from .schema import check_keys, strings, union, want

XATTR_CREATE = 0x1
XATTR_REPLACE = 0x2
XATTR_NAME_MAX = 255  # include/uapi/linux/limits.h
XATTR_SIZE_MAX = 65536

# Values the kernel translates through the caller's user namespace.
NAMESPACED_VALUES = frozenset({"system.posix_acl_access", "system.posix_acl_default",
                               "security.capability"})

SYSCALLS = ("setxattr", "lsetxattr", "fsetxattr")
_XATTR_PATTERN = re.compile(r"^(trusted|user|security|system)\.[A-Za-z0-9._*-]+$")


@dataclass(frozen=True)
class XattrPolicy:
    """The family's settings: ``[xattr] allowed`` of a profile."""

    allowed: tuple[str, ...] = ()  # names and globs


@lru_cache(maxsize=1024)
def name_allowed(patterns: tuple[str, ...], name: bytes) -> bool:
    """Whether ``name`` (as the caller passed it) is one the profile lets us set.

    Matched byte for byte (``fnmatchcase``): a name that is not UTF-8 can
    never match a profile's pattern, which are plain ASCII.
    """
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        return False
    if text in NAMESPACED_VALUES:
        return False
    return any(fnmatch.fnmatchcase(text, pattern) for pattern in patterns)


def filter_rules(policy: XattrPolicy) -> tuple[Rule, ...]:
    """All three entry points, but only where some name is allowed at all."""
    if not policy.allowed:
        return ()
    return tuple(Rule(syscall, None) for syscall in SYSCALLS)


def parse(data: Mapping[str, Any], file: str) -> XattrPolicy:
    xattr_table = want(data.get("xattr", {}), dict, file, "xattr")
    check_keys(xattr_table, {"allowed"}, file, "xattr.")
    xattrs = strings(xattr_table.get("allowed", []), file, "xattr.allowed")
    for pattern in xattrs:
        if not _XATTR_PATTERN.match(pattern):
            raise ConfigError(file, "xattr.allowed", f"{pattern!r} is not an xattr name or "
                                                     "pattern (namespace.name, * allowed)")
    return XattrPolicy(xattrs)


def merge(layers: Sequence[tuple[XattrPolicy, str]]) -> tuple[XattrPolicy, dict[str, str]]:
    return XattrPolicy(union(*(layer.allowed for layer, _ in layers))), {}


def describe(policy: XattrPolicy, given: Described) -> list[Setting]:
    return [Setting("xattr.allowed", pattern, given.profile_source)
            for pattern in policy.allowed]


FAMILY: Family[XattrPolicy] = Family(
    "setxattr", SYSCALLS, filter_rules,
    doc="Emulate setxattr for the profile's xattr names",
    settings=Settings(("xattr",), XattrPolicy(), parse, merge, describe),
    capabilities={"CAP_SYS_ADMIN": "trusted.* xattrs",
                  "CAP_FOWNER": "lent to a caller owning the inode's namespace (xattrs)"})
