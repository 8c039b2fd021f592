"""A family is one unit: everything the daemon knows of it comes from its declaration.

The filter, the LXD keys, the profile schema, the unit's capabilities and the
host views are derived here from the ``FAMILY`` of each policy module, and a
declaration that nothing else uses fails: a syscall outside the dispatch
table, a rule for a syscall the family does not own, a key that changes no
setting, a table the profile parser does not hand to the family, a
capability missing from the unit, a host view no handler reads.  A family
defined only in this file then shows up in all of them with no other edit.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lxc_notify_plugin import handlers, kernel, policy
from lxc_notify_plugin.dispatch import Dispatcher
from lxc_notify_plugin.errors import ConfigError
from lxc_notify_plugin.handlers import registry
from lxc_notify_plugin.handlers.call import HostViews
from lxc_notify_plugin.policy import catalog, keys
from lxc_notify_plugin.policy.effective import ContainerPolicy, notify_rules
from lxc_notify_plugin.policy.families import Family
from lxc_notify_plugin.policy.profile import parse_profile, schema
from lxc_notify_plugin.service import unit
from tests.unit.conftest import clear_family_caches

SAMPLE = {"bool": "true", "fs-list": "ext4", "fuse-map": "ext4=fuse2fs"}


def families() -> list[Family[Any]]:
    return list(catalog.built().values())


def granted() -> list[str]:
    lines = [line for line in unit.render().splitlines()
             if line.startswith("CapabilityBoundingSet=")]
    return lines[0].split("=", 1)[1].split()


def everything_on() -> ContainerPolicy:
    text = "[intercept]\n" + "".join(f"{f.name} = true\n" for f in families())
    return ContainerPolicy.from_profile(parse_profile(text, "all.toml"))


def test_the_filter_and_the_dispatch_table_come_from_the_syscalls_declared() -> None:
    table = {name for name, _ in Dispatcher().syscalls.values()}
    rules = notify_rules(everything_on())
    for family in families():
        assert family.syscalls and set(family.syscalls) <= table, family.name
        own = family.filter_rules(family.default)
        assert {rule.syscall for rule in own} <= set(family.syscalls), family.name
        assert all(rule in rules for rule in own), family.name


def test_every_key_declared_is_known_and_changes_its_familys_settings() -> None:
    for family in families():
        assert keys.known()[keys.PREFIX + family.name].doc == family.doc
        for spec in family.settings.keys if family.settings else ():
            assert keys.known()[spec.name] is spec and spec.family == family.name
            plain = ContainerPolicy.from_profile(parse_profile("", "p.toml"))
            value = keys.normalize(spec.name, SAMPLE[spec.kind], "keys")
            keyed = ContainerPolicy.from_profile(parse_profile("", "p.toml"),
                                                 {spec.name: value}, "keys")
            assert keyed.of(family) != plain.of(family), spec.name
            assert any(s.source == f"key {spec.name}" for s in keyed.settings), spec.name


def test_every_table_declared_is_in_the_schema_and_checked_by_its_family() -> None:
    tables = schema()
    for family in families():
        for table in family.settings.tables if family.settings else ():
            assert tables[table] == family.name
            with pytest.raises(ConfigError) as raised:
                parse_profile(f"{table} = 1\n", "p.toml")
            assert raised.value.key == table
    assert set(tables) - {t for f in families() if f.settings for t in f.settings.tables} == {
        "name", "description", "extends", "intercept", "deny"}


def test_the_units_bounding_set_is_the_core_and_every_familys_capabilities() -> None:
    caps = unit.capabilities()
    assert granted() == list(caps)
    assert set(caps) == set(unit.CORE).union(*(f.capabilities for f in families()))
    for family in families():
        for name, why in family.capabilities.items():
            assert isinstance(getattr(kernel, name), int)
            assert f"{family.name}: {why}" in caps[name]


def test_every_host_view_is_declared_by_a_family_whose_handler_reads_it() -> None:
    fields = {f.name for f in dataclasses.fields(HostViews)}
    declared = {view for family in families() for view in family.host_views}
    assert declared == fields
    for family in families():
        source = inspect.getsource(sys.modules[registry()[family.name].handle.__module__])
        for view in family.host_views:
            assert f"host.{view}" in source, (family.name, view)


def test_every_actor_step_a_kernel_module_declares_is_run_by_a_handler() -> None:
    """A family's kernel bindings bring the steps its handler has an actor run
    (``ACTOR_STEPS``): the actor has one operation for all of them, and a step
    no handler asks for is a declaration nothing uses."""
    handlers_source = "".join(inspect.getsource(sys.modules[entry.handle.__module__])
                              for entry in registry().values())
    declared = 0
    for info in pkgutil.iter_modules(kernel.__path__):
        module = importlib.import_module(f"{kernel.__name__}.{info.name}")
        steps = getattr(module, "ACTOR_STEPS", None)
        if steps is None:
            continue
        assert f'.step("{info.name}",' in handlers_source, info.name
        for name, step in steps.items():
            declared += 1
            assert callable(step) and f'"{name}"' in handlers_source, (info.name, name)
    assert declared


# --- a family defined only here ----------------------------------------------------------

DUMMY_POLICY = '''
from dataclasses import dataclass

from lxc_notify_plugin.policy.families import Described, Family, KeySpec, Setting, Settings
from lxc_notify_plugin.policy.filter import Rule
from lxc_notify_plugin.policy.schema import union, want


@dataclass(frozen=True)
class Programs:
    kinds: tuple[str, ...] = ()


def parse(data, file):
    return Programs(tuple(want(data.get("bpf_programs", []), list, file, "bpf_programs")))


def merge(layers):
    return Programs(union(*(layer.kinds for layer, _ in layers))), {}


def describe(settings, given):
    return [Setting("bpf_programs", ",".join(settings.kinds), given.profile_source)]


def lay_keys(settings, config, config_file, profile_source):
    if config.get("security.syscalls.intercept.bpf.devices") == "true":
        return Programs((*settings.kinds, "cgroup_device"))
    return settings


FAMILY = Family(
    "bpf", ("bpf",), lambda settings: (Rule("bpf", None),), doc="Emulate bpf (test)",
    settings=Settings(("bpf_programs",), Programs(), parse, merge, describe,
                      keys=(KeySpec("security.syscalls.intercept.bpf.devices", "bool", "bpf",
                                    True, "Allow device cgroup programs (test)", "false"),),
                      lay_keys=lay_keys),
    capabilities={"CAP_BPF": "loading device programs (test)"})
'''

DUMMY_HANDLER = '''
from lxc_notify_plugin.request import KERNEL_DECIDES


def handle(call):
    return KERNEL_DECIDES
'''


_STAND_IN = ("lxc_notify_plugin.policy.bpf", "lxc_notify_plugin.handlers.bpf")


@pytest.fixture
def dummy_family(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The family above in place of the real bpf family (every LXD name is built):
    its two modules come first on the packages' paths, and the real ones leave
    sys.modules (and their packages) until the test ends."""
    (tmp_path / "policy").mkdir()
    (tmp_path / "handlers").mkdir()
    (tmp_path / "policy" / "bpf.py").write_text(textwrap.dedent(DUMMY_POLICY))
    (tmp_path / "handlers" / "bpf.py").write_text(textwrap.dedent(DUMMY_HANDLER))
    monkeypatch.setattr(policy, "__path__", [str(tmp_path / "policy"), *policy.__path__])
    monkeypatch.setattr(handlers, "__path__", [str(tmp_path / "handlers"), *handlers.__path__])
    for package, name in ((policy, _STAND_IN[0]), (handlers, _STAND_IN[1])):
        monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.delattr(package, "bpf", raising=False)
    clear_family_caches()
    try:
        yield
    finally:
        monkeypatch.undo()
        clear_family_caches()


@pytest.mark.usefixtures("dummy_family")
def test_a_new_family_shows_up_everywhere_from_its_two_modules_alone() -> None:
    assert "bpf" in catalog.built() and "bpf" in registry()
    # keys: its switch and its own key are buildable now
    keys.check_buildable(keys.PREFIX + "bpf", "true", "keys")
    keys.check_buildable(keys.PREFIX + "bpf.devices", "true", "keys")
    assert keys.known()[keys.PREFIX + "bpf"].doc == "Emulate bpf (test)"
    # the profile schema: its table parses, and merges into the profile
    profile = parse_profile('bpf_programs = ["x"]\n[intercept]\nbpf = true\n', "p.toml")
    bpf = catalog.built()["bpf"]
    assert schema()["bpf_programs"] == "bpf"
    assert profile.of(bpf).kinds == ("x",)
    # its key lays over the profile, and the effective settings show it
    effective = ContainerPolicy.from_profile(profile, {keys.PREFIX + "bpf.devices": "true"})
    assert effective.of(bpf).kinds == ("x", "cgroup_device")
    assert ("bpf_programs", "x,cgroup_device") in {(s.name, s.value) for s in effective.settings}
    # the filter and the dispatch table
    assert any(rule.syscall == "bpf" for rule in notify_rules(effective))
    assert "bpf" in {name for name, _ in Dispatcher().syscalls.values()}
    # the unit's bounding set
    assert "CAP_BPF" in granted()
    assert "bpf: loading device programs (test)" in unit.capabilities()["CAP_BPF"]


def test_the_dummy_family_is_gone_again() -> None:
    assert catalog.built()["bpf"].doc != "Emulate bpf (test)"
    assert sys.modules[_STAND_IN[0]].FAMILY is catalog.built()["bpf"]
    assert registry()["bpf"].handle is sys.modules[_STAND_IN[1]].handle
    assert "bpf: loading device programs (test)" not in unit.capabilities().get("CAP_BPF", "")
