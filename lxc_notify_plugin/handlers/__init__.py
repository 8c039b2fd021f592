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
    from ..policy.effective import ContainerPolicy
    from .call import Call, HostViews

Handle = Callable[["Call"], Answer]


# judge(syscall, args, policy, host): the answer from the notification and the
# policy alone, or None when the handler must look at the caller (handle).
Judge = Callable[[str, tuple[int, ...], "ContainerPolicy", "HostViews"], "Answer | None"]
# describe(syscall, args): a judged call's arguments for its audit line.
Describe = Callable[[str, tuple[int, ...]], dict[str, object]]


@dataclass(frozen=True)
class Registered:
    """A family and its handler module's entry points.

    ``judge`` (optional) answers what the notification and the policy decide
    alone, before the dispatcher reads anything of the caller or makes a
    request: a refused call then costs what the decision costs.  ``handle``
    must give the same answer for those calls (it is what other callers use).
    ``describe`` gives such a call's audit arguments from the notification
    alone, after the caller was answered: nothing of the caller's is read for
    them (a path read then cost the caller more than before its answer, as it
    runs again meanwhile: see handlers/mknod.py)."""

    family: Family[Any]
    handle: Handle
    judge: Judge | None = None
    describe: Describe | None = None


@cache
def registry() -> dict[str, Registered]:
    """family name -> its declaration and its handler, for every built family."""
    found = {}
    for name, family in built().items():
        module = importlib.import_module(f"{__name__}.{name}")
        handle = getattr(module, "handle", None)
        if not callable(handle):
            raise RuntimeError(f"{module.__name__} has no handle(call) for family {name!r}")
        found[name] = Registered(family, handle, getattr(module, "judge", None),
                                 getattr(module, "describe", None))
    return found
