"""The policy one container runs under, built once from its profile."""

from __future__ import annotations

from dataclasses import dataclass

from .devices import DevicePolicy
from .profile import Profile


@dataclass(frozen=True)
class ContainerPolicy:
    profile: Profile
    devices: DevicePolicy

    @classmethod
    def from_profile(cls, profile: Profile) -> ContainerPolicy:
        return cls(profile, DevicePolicy.from_profile(profile))

    def intercepts(self, syscall: str) -> bool:
        return syscall in self.profile.intercept
