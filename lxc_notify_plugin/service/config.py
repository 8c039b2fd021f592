"""``/etc/lxc-notify/daemon.toml``: where the daemon's things live and how much it keeps.

Validated as profiles are: one bad key is an error naming the file, the key
and the reason, and nothing of the file is used.  Every key is optional; a
missing default file means every default.  Options given on the command
line win over the file (an admin's one-off run, the tests).

::

    [daemon]
    socket = "/run/lxc-notify/seccomp.sock"       # LXC's lxc.seccomp.notify.proxy
    agent_socket = "/run/lxc-notify/oci-agent.sock"  # OCI linux.seccomp.listenerPath
    state_dir = "/var/lib/lxc-notify"
    profile_dir = "/etc/lxc-notify/profiles"
    lxc_path = "/var/lib/lxc"
    udev_control = "/run/udev/control"
    log_level = "info"                            # debug, info, warning, error

    [audit]
    path = "/var/log/lxc-notify/audit.log"        # "" turns the audit log off
    max_bytes = 10485760                          # rotated past this size ...
    backups = 5                                   # ... keeping audit.log.1 .. .5
    queue = 4096                                  # lines waiting for the disk; more are dropped

    [metrics]
    path = "/var/lib/prometheus/node-exporter/lxc-notify.prom"  # "": off (the default
                                                  # where that directory is missing)
    interval = 5.0                                # seconds between writes

    [limits]
    connections = 1024                            # LXC monitors and OCI listeners served at once

SIGHUP re-reads the file with the profiles: log level, audit rotation and
metrics interval apply at once; paths and limits need a restart, and the
daemon says so.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final

from ..errors import ConfigError
from ..paths import Paths, read_regular_text

if sys.version_info >= (3, 11):  # noqa: UP036 - tomli where tomllib is missing
    import tomllib
else:  # pragma: no cover - Debian 12's interpreter has tomllib
    import tomli as tomllib

DEFAULT_FILE: Final = Path("/etc/lxc-notify/daemon.toml")
# Debian's prometheus-node-exporter reads *.prom files here (--collector.textfile.directory).
NODE_EXPORTER_TEXTFILES: Final = Path("/var/lib/prometheus/node-exporter")
LOG_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO,
                     "warning": logging.WARNING, "error": logging.ERROR}
# Longest unix socket path: sun_path is 108 bytes with its NUL.
_SUN_PATH_MAX: Final = 107


def default_metrics_path() -> Path | None:
    """node_exporter's textfile directory where it exists; else no file (the numbers
    stay in memory for `lxc-notify status`), rather than one no collector reads."""
    if NODE_EXPORTER_TEXTFILES.is_dir():
        return NODE_EXPORTER_TEXTFILES / "lxc-notify.prom"
    return None


@dataclass(frozen=True)
class AuditSettings:
    path: Path | None = Path("/var/log/lxc-notify/audit.log")  # None: off
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5
    queue: int = 4096


@dataclass(frozen=True)
class MetricsSettings:
    path: Path | None = field(default_factory=default_metrics_path)  # None: off
    interval: float = 5.0


@dataclass(frozen=True)
class DaemonConfig:
    paths: Paths = field(default_factory=Paths)
    log_level: str = "info"
    audit: AuditSettings = field(default_factory=AuditSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    connections: int = 1024
    file: str | None = None  # where it was read from, None for defaults

    def restart_needed(self, new: DaemonConfig) -> list[str]:
        """The keys whose change a running daemon cannot apply (it keeps the old)."""
        changed = [f"daemon.{f.name}" for f in fields(Paths)
                   if getattr(self.paths, f.name) != getattr(new.paths, f.name)]
        if self.audit.path != new.audit.path or self.audit.queue != new.audit.queue:
            changed.append("audit.path/queue")
        if self.metrics.path != new.metrics.path:
            changed.append("metrics.path")
        if self.connections != new.connections:
            changed.append("limits.connections")
        return changed


# [daemon] key (and the command line option of the same name) -> its Paths field.
PATH_FIELDS: Final = {"socket": "socket", "agent_socket": "oci_agent", "state_dir": "state_dir",
                      "profile_dir": "admin_profiles", "lxc_path": "lxc_path",
                      "udev_control": "udev_control"}


def with_paths(paths: Paths, given: dict[str, Any]) -> Paths:
    """``paths`` with the given [daemon] keys (or options) set; lxc_path stays text."""
    fields: dict[str, Any] = {PATH_FIELDS[key]: str(value) if key == "lxc_path" else Path(value)
                              for key, value in given.items()}
    return replace(paths, **fields)


# section -> key -> kind: what each key may hold.
_PATH, _OPTIONAL_PATH, _SOCKET, _LEVEL = "path", "optional path", "socket", "level"
_SCHEMA: Final[dict[str, dict[str, str]]] = {
    "daemon": {"socket": _SOCKET, "agent_socket": _SOCKET, "state_dir": _PATH,
               "profile_dir": _PATH, "lxc_path": _PATH, "udev_control": _PATH,
               "log_level": _LEVEL},
    "audit": {"path": _OPTIONAL_PATH, "max_bytes": "size", "backups": "count",
              "queue": "count"},
    "metrics": {"path": _OPTIONAL_PATH, "interval": "seconds"},
    "limits": {"connections": "count"},
}


def load(file: Path | None) -> DaemonConfig:
    """The configuration in ``file``; ``None`` reads the default file if there is one."""
    path = file or DEFAULT_FILE
    try:
        text = read_regular_text(path)
    except FileNotFoundError:
        if file is None:
            return DaemonConfig()
        raise ConfigError(str(path), None, "no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), None, f"unreadable: {err}") from err
    return parse(text, str(path))


def parse(text: str, file: str) -> DaemonConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(file, None, f"invalid TOML: {err}") from err
    except RecursionError:  # tomllib recurses per nesting level
        raise ConfigError(file, None, "invalid TOML: nested too deeply") from None
    values: dict[str, dict[str, Any]] = {}
    for section, table in data.items():
        if section not in _SCHEMA:
            raise ConfigError(file, section, f"unknown section (known: {', '.join(_SCHEMA)})")
        if not isinstance(table, dict):
            raise ConfigError(file, section, "must be a table ([section])")
        for key, value in table.items():
            kind = _SCHEMA[section].get(key)
            if kind is None:
                raise ConfigError(file, f"{section}.{key}", "unknown key (known: "
                                  f"{', '.join(_SCHEMA[section])})")
            values.setdefault(section, {})[key] = _checked(file, f"{section}.{key}", kind, value)
    daemon, audit, metrics = values.get("daemon", {}), values.get("audit", {}), \
        values.get("metrics", {})
    paths = with_paths(Paths(), {key: daemon[key] for key in PATH_FIELDS if key in daemon})
    return DaemonConfig(
        paths=paths, log_level=daemon.get("log_level", "info"),
        audit=replace(AuditSettings(), **audit), metrics=replace(MetricsSettings(), **metrics),
        connections=values.get("limits", {}).get("connections", 1024), file=file)


def _checked(file: str, key: str, kind: str, value: Any) -> Any:
    def bad(reason: str) -> ConfigError:
        return ConfigError(file, key, f"{value!r} {reason}")

    if kind in (_PATH, _OPTIONAL_PATH, _SOCKET, _LEVEL):
        if not isinstance(value, str):
            raise bad("is not a string")
        if kind == _LEVEL:
            if value not in LOG_LEVELS:
                raise bad(f"is not a log level ({', '.join(LOG_LEVELS)})")
            return value
        if kind == _OPTIONAL_PATH and value == "":
            return None  # off
        if not value.startswith("/"):
            raise bad("is not an absolute path")
        if "\0" in value:
            raise bad("contains a NUL byte")
        if kind == _SOCKET and len(value.encode()) > _SUN_PATH_MAX:
            raise bad(f"is longer than a unix socket path may be ({_SUN_PATH_MAX} bytes)")
        return Path(value)
    if kind == "seconds":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("is not a number of seconds")
        if not 0.1 <= value <= 3600:
            raise bad("is not between 0.1 and 3600 seconds")
        return float(value)
    # size, count: integers
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad("is not an integer")
    if kind == "size" and not (value == 0 or 4096 <= value <= 1 << 40):
        raise bad("is not 0 (off) or between 4096 bytes and 1 TiB")
    if kind == "count" and not 0 <= value <= 1_000_000:
        raise bad("is not between 0 and 1000000")
    if key == "limits.connections" and value < 1:
        raise bad("must allow at least one connection")
    if key == "audit.queue" and value < 1:
        raise bad("must hold at least one line")
    return value
