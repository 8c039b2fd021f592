"""The policy one container runs under: its profile with its LXD keys laid over it.

Built once per container (and again on reload), never per request.  Every
setting remembers where it came from, for ``config show --effective``.  Each
family's settings are data keyed by the family (``ContainerPolicy.of``),
laid over by the family's own keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from .catalog import built
from .families import DEFAULT_SOURCE, KEY_PREFIX, LXD_FAMILIES, Described, Family, Setting
from .filter import Rule
from .profile import KERNEL, Profile

__all__ = ["DEFAULT_SOURCE", "ContainerPolicy", "Setting", "notify_rules"]

S = TypeVar("S")


@dataclass(frozen=True)
class ContainerPolicy:
    profile: Profile
    intercept: frozenset[str]
    settings: tuple[Setting, ...]
    # family -> its settings, keys laid over the profile's (see ``of``)
    sections: dict[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def from_profile(cls, profile: Profile, config: dict[str, str] | None = None,
                     config_file: str = "<config>") -> ContainerPolicy:
        config = config or {}
        sources = dict(profile.sources)
        settings: list[Setting] = []
        intercept = set(profile.intercept)
        for family_name in LXD_FAMILIES:
            key = KEY_PREFIX + family_name
            if key in config:
                on = config[key] == "true"
                source = f"key {key}"
            else:
                on = family_name in profile.intercept
                source = sources.get(f"intercept.{family_name}", DEFAULT_SOURCE)
            (intercept.add if on else intercept.discard)(family_name)
            settings.append(Setting(f"intercept.{family_name}", str(on).lower(), source))

        sections: dict[str, Any] = {}
        for name, family in built().items():
            if family.settings is None:
                continue
            section = profile.of(family)
            if family.settings.lay_keys is not None:
                section = family.settings.lay_keys(section, config, config_file,
                                                   profile.source)
            sections[name] = section
            settings += family.settings.describe(
                section, Described(name in intercept, profile.source, sources, config))
        for family_name, answer in profile.deny:
            settings.append(Setting(f"deny.{family_name}", answer,
                                    sources.get(f"deny.{family_name}", profile.source)))
        return cls(profile, frozenset(intercept), tuple(settings), sections)

    def of(self, family: Family[S]) -> S:
        """``family``'s settings for this container."""
        return cast(S, self.sections.get(family.name, family.default))

    def intercepts(self, family: str) -> bool:
        return family in self.intercept

    def deny_answer(self, family: str) -> str:
        """KERNEL, or the errno name the profile answers refused calls with."""
        return self.profile.deny_answer(family) if family in self.intercept else KERNEL


def notify_rules(policy: ContainerPolicy) -> list[Rule]:
    """Every rule the families intercepted by ``policy`` ask of the filter, in
    family order: what LXC's policy text and an OCI profile both render."""
    found: list[Rule] = []
    for family in built().values():
        if policy.intercepts(family.name):
            found += family.filter_rules(policy.of(family))
    return found
