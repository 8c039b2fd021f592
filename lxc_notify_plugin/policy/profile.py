"""TOML profiles: what a container may ask the supervisor to do for it.

A profile file is parsed into a ``ProfileLayer`` (only what that file says),
its ``extends`` parents are loaded and merged in order, and the result is one
frozen ``Profile``.  This happens at ``enable``/``start``/``profile check``,
when the daemon first sees a container and on reload, never per request.
Unknown keys and wrong types are errors that name the file and the key.
The tables a profile may have beyond the common ones are the families'
(``Settings.tables`` in each family's module), parsed and merged by them.

Merging (parents first, in the order listed, then the file itself):
scalars and tables of switches (``intercept``, ``deny``, ``mount.shift``,
``mount.fuse``) take the last value given; lists (``devices``,
``mount.allowed``, ``mount.force_flags``, ``xattr.allowed``) are joined,
duplicates dropped.  See profiles/README.md.
"""

from __future__ import annotations

import errno
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

if sys.version_info >= (3, 11):  # noqa: UP036 - tomli where tomllib is missing
    import tomllib
else:  # pragma: no cover - Debian 12's interpreter has tomllib
    import tomli as tomllib

from ..errors import ConfigError
from .catalog import built
from .families import LXD_FAMILIES, Family
from .schema import check_keys, strings, want

KERNEL = "kernel"  # the deny answer that lets the kernel decide
# The tables every profile has; each family adds its own (``Settings.tables``).
COMMON_TABLES = ("name", "description", "extends", "intercept", "deny")

S = TypeVar("S")


@dataclass(frozen=True)
class ProfileLayer:
    """What one profile file says, before its parents are merged in."""

    name: str
    source: str
    description: str | None = None
    extends: tuple[str, ...] = ()
    intercept: tuple[tuple[str, bool], ...] = ()
    deny: tuple[tuple[str, str], ...] = ()
    # family -> its settings as this file gives them (every built family's)
    sections: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Profile:
    """A profile with its parents merged: what the supervisor enforces."""

    name: str
    description: str
    source: str  # the file it came from, for messages
    intercept: frozenset[str]
    deny: tuple[tuple[str, str], ...] = ()  # (family, KERNEL or an errno name)
    sources: tuple[tuple[str, str], ...] = ()  # (setting, file that decided it)
    # family -> its merged settings; a family missing here has its default
    sections: dict[str, Any] = field(default_factory=dict, hash=False)

    def deny_answer(self, family: str) -> str:
        return dict(self.deny).get(family, KERNEL)

    def of(self, family: Family[S]) -> S:
        """``family``'s settings in this profile."""
        return cast(S, self.sections.get(family.name, family.default))


def schema() -> dict[str, str]:
    """Every top-level table a profile may have -> who reads it ("" for the profile)."""
    tables = dict.fromkeys(COMMON_TABLES, "")
    for family in built().values():
        if family.settings is not None:
            tables.update(dict.fromkeys(family.settings.tables, family.name))
    return tables


# --- parsing one file -------------------------------------------------------------------


def _deny_answer(value: Any, file: str, key: str) -> str:
    answer = str(want(value, str, file, key))
    if answer != KERNEL and not (answer.startswith("E") and hasattr(errno, answer)):
        raise ConfigError(file, key, f"{answer!r} is neither \"kernel\" nor an errno name "
                                     "such as \"EPERM\"")
    return answer


def parse_layer(text: str, file: str) -> ProfileLayer:
    """Parse one profile file's text; ``file`` names it in every error."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(file, None, f"invalid TOML: {err}") from err
    check_keys(data, set(schema()), file, "")
    name = want(data.get("name", Path(file).stem), str, file, "name")
    description = data.get("description")
    if description is not None:
        description = want(description, str, file, "description")
    extends = strings(data.get("extends", []), file, "extends")
    intercept_table = want(data.get("intercept", {}), dict, file, "intercept")
    check_keys(intercept_table, set(LXD_FAMILIES), file, "intercept.")
    intercept = tuple((k, want(v, bool, file, f"intercept.{k}"))
                      for k, v in intercept_table.items())
    for family, on in intercept:
        if on and family not in built():
            raise ConfigError(file, f"intercept.{family}",
                              f"this build has no {family} handler yet: it cannot be intercepted")
    sections = {name: family.settings.parse(data, file) for name, family in built().items()
                if family.settings is not None}
    deny_table = want(data.get("deny", {}), dict, file, "deny")
    check_keys(deny_table, set(LXD_FAMILIES), file, "deny.")
    deny = tuple((k, _deny_answer(v, file, f"deny.{k}")) for k, v in deny_table.items())
    return ProfileLayer(name, file, description, extends, intercept, deny, sections)


# --- finding files and merging parents ---------------------------------------------------


def find_profile(name: str, search_path: tuple[Path, ...]) -> Path:
    """``NAME.toml`` in the first directory that has it, or a file path as given."""
    if is_file_name(name):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(name, None, "no such profile file")
        return path
    for directory in search_path:
        path = directory / f"{name}.toml"
        if path.is_file():
            return path
    raise ConfigError(name, None, "no such profile in " + ", ".join(map(str, search_path)))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as err:
        raise ConfigError(str(path), None, f"cannot read: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(str(path), None, "not UTF-8 text") from err


def is_file_name(name: str) -> bool:
    """A profile given as a file (``./mine.toml``) rather than by name (``mine``)."""
    return "/" in name or name.endswith(".toml")


def _parent_search(parent: str, child: Path, search_path: tuple[Path, ...]
                   ) -> tuple[str, tuple[Path, ...]]:
    """Where a parent named in ``child`` is looked for.

    A file name is relative to the child's directory.  A bare name follows
    the search path (admin profiles override shipped ones for parents too);
    a child outside the search path (``profile check ./mine.toml``) also
    finds siblings, after it.  A parent with the child's own name is the one
    it overrides: looked up only in the directories after the child's, so
    /etc/lxc-notify/profiles/default.toml can extend the shipped default.
    """
    if is_file_name(parent):
        return str(child.parent / parent), search_path
    directories = [d.resolve() for d in search_path]
    here = child.parent.resolve()
    if here not in directories:
        return parent, (*search_path, child.parent)
    if parent == child.stem:
        return parent, tuple(search_path[directories.index(here) + 1:])
    return parent, search_path


def _layers(name: str, search_path: tuple[Path, ...], chain: tuple[str, ...],
            requested_by: tuple[str, str] | None) -> list[ProfileLayer]:
    """The layers to merge for ``name``, parents first (depth first, in order)."""
    try:
        path = find_profile(name, search_path)
    except ConfigError as err:
        if requested_by is None:
            raise
        file, key = requested_by
        raise ConfigError(file, key, f"parent profile {name!r} not found") from err
    key_id = str(path.resolve())
    if key_id in chain:
        cycle = " -> ".join([*(Path(c).stem for c in chain), path.stem])
        assert requested_by is not None
        raise ConfigError(requested_by[0], requested_by[1], f"extends cycle: {cycle}")
    layer = parse_layer(_read(path), str(path))
    layers: list[ProfileLayer] = []
    for i, parent in enumerate(layer.extends):
        parent_name, parent_path = _parent_search(parent, path, search_path)
        layers += _layers(parent_name, parent_path, (*chain, key_id),
                          (str(path), f"extends[{i}]"))
    return [*layers, layer]


def _linearize(layers: list[ProfileLayer]) -> list[ProfileLayer]:
    """Each file once, where it first appears: in A extends [B, C], with B and C
    both extending D, D comes before B, and B's overrides of D stand."""
    seen: set[str] = set()
    unique = []
    for layer in layers:
        key = str(Path(layer.source).resolve())
        if key not in seen:
            seen.add(key)
            unique.append(layer)
    return unique


def merge(layers: list[ProfileLayer]) -> Profile:
    layers = _linearize(layers)
    top = layers[-1]
    sources: dict[str, str] = {}
    intercept: dict[str, bool] = {}
    deny: dict[str, str] = {}
    description = ""
    for layer in layers:
        if layer.description is not None:
            description = layer.description
        for switched, on in layer.intercept:
            intercept[switched] = on
            sources[f"intercept.{switched}"] = layer.source
        for denied, answer in layer.deny:
            deny[denied] = answer
            sources[f"deny.{denied}"] = layer.source
    sections: dict[str, Any] = {}
    for name, family in built().items():
        if family.settings is not None:
            sections[name], decided = family.settings.merge(
                [(layer.sections.get(name, family.settings.default), layer.source)
                 for layer in layers])
            sources.update(decided)
    return Profile(
        name=top.name, description=description, source=top.source,
        intercept=frozenset(k for k, v in intercept.items() if v),
        deny=tuple(deny.items()), sources=tuple(sorted(sources.items())), sections=sections,
    )


def load_profile(name: str, search_path: tuple[Path, ...]) -> Profile:
    """Load ``name`` (a profile name or a file path) with its parents merged in.

    A profile given as a file finds its parents beside it first, so a set of
    profiles being written in one directory checks as a set.
    """
    return merge(_layers(name, search_path, (), None))


def parse_profile(text: str, file: str, search_path: tuple[Path, ...] = ()) -> Profile:
    """A profile from text (tests, ``profile check`` of stdin); parents from search_path."""
    layer = parse_layer(text, file)
    layers: list[ProfileLayer] = []
    for i, parent in enumerate(layer.extends):
        parent_name, parent_path = _parent_search(parent, Path(file), search_path)
        layers += _layers(parent_name, parent_path, (file,), (file, f"extends[{i}]"))
    return merge([*layers, layer])
