"""Fixtures of the unit tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lxc_notify_plugin.handlers import registry
from lxc_notify_plugin.policy import catalog, keys
from lxc_notify_plugin.policy.families import LXD_FAMILIES


def clear_family_caches() -> None:
    """Forget what was derived from the family modules (discovery, keys, handlers)."""
    catalog.built.cache_clear()
    keys.known.cache_clear()
    registry.cache_clear()


@pytest.fixture
def unbuilt(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A build without one of LXD's families, for the tests of what such a build
    says (this one has them all): the family's name.  Its module is taken for
    policy machinery, so discovery passes over it."""
    name = LXD_FAMILIES[-1]
    monkeypatch.setattr(catalog, "_MACHINERY", catalog._MACHINERY | {name})
    clear_family_caches()
    try:
        assert name not in catalog.built()
        yield name
    finally:
        monkeypatch.undo()
        clear_family_caches()
