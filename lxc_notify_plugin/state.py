"""Per-container state: the cookie that identifies it to the daemon, and its profile.

One root-only JSON file per container under ``STATE/containers/``.  The cookie
is a random secret made when interception is enabled; the daemon never trusts
a container's name, only this secret, which LXC's monitor sends with every
notification.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .paths import Paths, atomic_write, read_regular_text
from .policy import keys as lxd
from .policy.effective import ContainerPolicy
from .policy.profile import load_profile

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_container_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError("<command line>", "NAME", f"{name!r} is not a valid container name")
    return name


@dataclass(frozen=True)
class ContainerRecord:
    """A container's persisted record, ``STATE/containers/NAME.json``: what `lxc-notify
    enable` (or `config`) wrote for it, read by the daemon to build its policy.

    An OCI container is named by one too (``transport/oci_policy.py``), never
    written: the runtime's id and the profile its state names, with no cookie."""

    name: str
    cookie: str
    profile: str
    lxc_path: str | None = None
    config: dict[str, str] = field(default_factory=dict)  # LXD keys set on this container

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "cookie": self.cookie, "profile": self.profile,
                           "lxc_path": self.lxc_path, "config": self.config},
                          indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, file: str) -> ContainerRecord:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(file, None, f"invalid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(file, None, "not a JSON object")
        for key in ("name", "cookie", "profile"):
            if not isinstance(data.get(key), str):
                raise ConfigError(file, key, "missing or not a string")
        config = data.get("config", {})
        if not isinstance(config, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in config.items()):
            raise ConfigError(file, "config", "not a table of strings")
        return cls(data["name"], data["cookie"], data["profile"], data.get("lxc_path"), config)


class StateStore:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def record_path(self, name: str) -> Path:
        return self.paths.containers_dir / f"{check_container_name(name)}.json"

    def policy_path(self, name: str) -> Path:
        return self.paths.containers_dir / f"{check_container_name(name)}.seccomp"

    def get(self, name: str) -> ContainerRecord | None:
        return self._read(self.record_path(name))

    @staticmethod
    def _read(path: Path) -> ContainerRecord | None:
        try:
            return ContainerRecord.from_json(read_regular_text(path), str(path))
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as err:
            raise ConfigError(str(path), None, "not UTF-8 text") from err
        except OSError as err:
            raise ConfigError(str(path), None, f"unreadable: {err.strerror or err}") from err

    def put(self, record: ContainerRecord) -> None:
        atomic_write(self.record_path(record.name), record.to_json())

    def remove(self, name: str) -> None:
        for path in (self.record_path(name), self.policy_path(name)):
            path.unlink(missing_ok=True)

    def all(self) -> tuple[list[ContainerRecord], list[ConfigError]]:
        """Every readable record, and an error for each file that is not one:
        one bad file must not hide the others."""
        records, errors = [], []
        for path in sorted(self.paths.containers_dir.glob("*.json")):
            try:
                record = self._read(path)
            except ConfigError as err:
                errors.append(err)
                continue
            if record is not None:
                records.append(record)
        return records, errors

    def policy(self, record: ContainerRecord) -> ContainerPolicy:
        """The record's profile with its keys laid over it, every check made."""
        file = str(self.record_path(record.name))
        for key, value in record.config.items():
            if lxd.normalize(key, value, file) != value:
                raise ConfigError(file, key, f"{value!r} is not in stored form")
        lxd.check_together(record.config, file)
        profile = load_profile(record.profile, self.paths.profile_search_path)
        return ContainerPolicy.from_profile(profile, record.config, file)

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_hex(32)
