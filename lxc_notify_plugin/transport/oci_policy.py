"""Which policy an OCI container runs under: its state's profile, and its admin's keys.

The agent (``oci_agent.py``) asks this once per container, at its first
listener, and again at every reload; LXC containers get theirs from the
record their cookie names (``container_registry.py``).
"""

from __future__ import annotations

import logging
from typing import Final

from ..dispatch import SupervisedContainer
from ..errors import ConfigError
from ..paths import Paths
from ..policy.effective import ContainerPolicy
from ..policy.profile import Profile, load_profile
from ..state import ContainerRecord, StateStore, check_container_name
from .oci_state import ProcessState, profile_name_ok

log = logging.getLogger(__name__)


class StatePolicies:
    """An OCI container's policy: the profile its state names, with the LXD keys
    of ``STATE/containers/ID.json`` laid over it when an admin wrote that record
    (the same file, checks and key names as an LXC container of that name).

    A profile or key that cannot be used does not refuse the listener: the
    container is served with nothing intercepted, so every call goes back to
    the kernel (its own answer, as without us), and the log says why."""

    PREFIX: Final = "oci:"

    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.store = StateStore(paths)

    def __call__(self, state: ProcessState) -> tuple[SupervisedContainer, str | None]:
        policy, problem = self.policy(state.container_id, state.profile)
        record = ContainerRecord(self.PREFIX + state.container_id, "", state.profile)
        return SupervisedContainer(record, policy), problem

    def rebuild(self, container: SupervisedContainer) -> None:
        """Reload: the new policy, or the old one kept when the new one fails."""
        container_id = container.record.name.removeprefix(self.PREFIX)
        policy, problem = self.policy(container_id, container.record.profile)
        if problem is not None:
            log.error("%s: reload refused, old policy kept: %s", container.name, problem)
            return
        container.policy = policy

    def policy(self, container_id: str, profile: str) -> tuple[ContainerPolicy, str | None]:
        try:
            if not profile_name_ok(profile):
                raise ConfigError("<state>", "profile", f"{profile!r} is not a profile name")
            try:
                check_container_name(container_id)
            except ConfigError:  # no record can have that name: no keys
                return ContainerPolicy.from_profile(
                    load_profile(profile, self.paths.profile_search_path)), None
            record = self.store.get(container_id)
            config = record.config if record is not None else {}
            return self.store.policy(ContainerRecord(container_id, "", profile, None,
                                                     config)), None
        except (ConfigError, OSError) as err:
            nothing = Profile(profile, "", "<unusable>", frozenset())
            return ContainerPolicy.from_profile(nothing), str(err)
