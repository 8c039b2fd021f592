"""Which families this build has: the ``FAMILY`` of each family module here.

Discovery imports the modules of this package that are not the policy
machinery itself (``_MACHINERY``); each of them must declare a family.  The
machinery imports this module, never the other way round, and a family
module imports only ``families``, ``filter`` and ``schema``: the graph has
no cycle.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Any

from .families import LXD_FAMILIES, Family

# The modules of this package that are not families.
_MACHINERY = frozenset({"catalog", "effective", "families", "filter", "keys", "lxc_policy",
                        "oci_profile", "profile", "schema"})


@cache
def built() -> dict[str, Family[Any]]:
    """Every family this build handles, by name, sorted."""
    package = importlib.import_module(__package__ or "lxc_notify_plugin.policy")
    found: dict[str, Family[Any]] = {}
    for module_info in pkgutil.iter_modules(package.__path__):
        if module_info.name in _MACHINERY:
            continue
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        family = getattr(module, "FAMILY", None)
        if not isinstance(family, Family):
            raise RuntimeError(f"{module.__name__} declares no FAMILY: a module of "
                               "policy/ is a family, or one of catalog._MACHINERY")
        if family.name not in LXD_FAMILIES:
            raise RuntimeError(f"{module.__name__}: family {family.name!r} is not one of "
                               f"LXD's names {LXD_FAMILIES}")
        if family.name != module_info.name:
            raise RuntimeError(f"{module.__name__} declares family {family.name!r}: a "
                               "family's module has its name")
        found[family.name] = family
    return dict(sorted(found.items()))


def family_of_syscalls() -> dict[str, str]:
    """syscall name -> the family that owns it."""
    return {syscall: family.name for family in built().values() for syscall in family.syscalls}
