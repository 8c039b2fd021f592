"""Handlers: the effect of each syscall family, one module each.

A handler module has the name of its family's policy module
(``policy/mknod.py`` -> ``handlers/mknod.py``) and defines
``handle(call: Call) -> Answer``.  It raises OSError with the errno the
kernel would give; the dispatcher turns that into the answer.  The registry
here pairs every family declared in ``policy/`` with its handler, so nothing
else lists them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from ..policy.catalog import built
from ..policy.families import Family
from ..request import Answer

# A handler takes a dispatch.Call; typed loosely here so that this module stays
# importable from policy-level code without the dispatcher.
Handle = Callable[..., Answer]


@dataclass(frozen=True)
class Registered:
    family: Family[Any]
    handle: Handle


@cache
def registry() -> dict[str, Registered]:
    """family name -> its declaration and its handler, for every built family."""
    found = {}
    for name, family in built().items():
        module = importlib.import_module(f"{__name__}.{name}")
        handle = getattr(module, "handle", None)
        if not callable(handle):
            raise RuntimeError(f"{module.__name__} has no handle(call) for family {name!r}")
        found[name] = Registered(family, handle)
    return found
