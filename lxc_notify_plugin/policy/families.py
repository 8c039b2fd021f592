"""Syscall families: what each intercepted call declares, in one place.

A family is what a profile's ``intercept.NAME`` and LXD's
``security.syscalls.intercept.NAME`` switch on: a set of syscalls handled
alike (``mknod`` owns ``mknod`` and ``mknodat``).  Its policy module in this
package declares it as ``FAMILY``: the syscalls it owns (by name; numbers for
every arch come from libseccomp), and the seccomp filter rules that send
those calls to us, with the argument conditions that leave in the kernel what
we would hand back anyway.  Its effect lives in ``handlers/`` under the same
module name.  Everything else (the trap table, the filter, which keys and
profile switches this build accepts) is derived from the families found
here, so adding a family is one policy module, one handler module and their
tests.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from .filter import Rule

if TYPE_CHECKING:
    from .effective import ContainerPolicy

# The names LXD gives its ``security.syscalls.intercept.*`` switches: the words a
# profile or a key may use.  A name here without a policy module is known but
# not built: switching it on is refused with a message, never ignored.
LXD_FAMILIES = ("mknod", "setxattr", "mount", "sysinfo", "sched_setscheduler", "bpf")


@dataclass(frozen=True)
class Family:
    name: str  # as in LXD_FAMILIES
    syscalls: tuple[str, ...]  # every entry point, by name
    # The notify rules (and in-kernel answers) for a container whose policy
    # intercepts this family; built at enable/start, never per request.
    filter_rules: Callable[[ContainerPolicy], tuple[Rule, ...]]


@cache
def built() -> dict[str, Family]:
    """Every family this build handles: the ``FAMILY`` of each module of this package."""
    package = importlib.import_module(__package__ or "lxc_notify_plugin.policy")
    found: dict[str, Family] = {}
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        family = getattr(module, "FAMILY", None)
        if isinstance(family, Family):
            if family.name not in LXD_FAMILIES:
                raise RuntimeError(f"{module.__name__}: family {family.name!r} is not one of "
                                   f"LXD's names {LXD_FAMILIES}")
            found[family.name] = family
    return dict(sorted(found.items()))


def family_of_syscalls() -> dict[str, str]:
    """syscall name -> the family that owns it."""
    return {syscall: family.name for family in built().values() for syscall in family.syscalls}


def notify_rules(policy: ContainerPolicy) -> list[Rule]:
    """Every rule the families intercepted by ``policy`` ask of the filter, in
    family order: what LXC's policy text and an OCI profile both render."""
    found: list[Rule] = []
    for family in built().values():
        if policy.intercepts(family.name):
            found += family.filter_rules(policy)
    return found
