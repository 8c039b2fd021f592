"""Handlers: the effect of each syscall family, one module each.

A handler module has the name of its family's policy module
(``policy/mknod.py`` -> ``handlers/mknod.py``) and defines
``handle(call: Call) -> Answer``, with ``Call`` and the types it carries
from ``handlers/call.py`` (never from the dispatcher).  It raises OSError with the errno the
kernel would give; the dispatcher turns that into the answer.  The registry
here pairs every family declared in ``policy/`` with its handler, so nothing
else lists them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from ..policy.catalog import built
from ..policy.families import Family
from ..request import Answer

if TYPE_CHECKING:  # the registry itself needs no handler's types
    from .call import Call

Handle = Callable[["Call"], Answer]


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
