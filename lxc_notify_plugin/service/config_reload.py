"""daemon.toml read again at a reload (SIGHUP): what can change live changes,
the rest is said to wait for the next start.

Compared with the file as it was at start, not with the running configuration
(which has the command line's overrides): a key that waits for a restart is
said at every reload until a restart applies it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ..errors import ConfigError
from . import config as daemon_config
from .audit import AuditLog
from .config import DaemonConfig
from .metrics import Metrics

log = logging.getLogger(__name__)


class ConfigReload:
    def __init__(self, config: DaemonConfig, log_level_given: bool = False) -> None:
        self.log_level_given = log_level_given  # on the command line: a reload keeps it
        self.started_file = self._file_as_started(config)

    @staticmethod
    def _file_as_started(config: DaemonConfig) -> DaemonConfig:
        """daemon.toml as it is now, without the command line's overrides."""
        if config.file is None:
            return DaemonConfig()
        try:
            return daemon_config.load(Path(config.file))
        except (ConfigError, RecursionError):
            return config

    def apply(self, config: DaemonConfig, audit: AuditLog | None, metrics: Metrics
              ) -> tuple[DaemonConfig, list[str]]:
        """The running configuration with daemon.toml's live keys applied to it (the log
        level, the audit log's rotation, the metrics' interval), and the files refused."""
        if config.file is None and not daemon_config.DEFAULT_FILE.exists():
            return config, []
        file = Path(config.file) if config.file else None
        try:
            new = daemon_config.load(file)
        except (ConfigError, RecursionError) as err:
            log.error("daemon configuration refused, the old one is kept: %s", err)
            return config, [str(file or daemon_config.DEFAULT_FILE)]
        waiting = self.started_file.restart_needed(new)
        audit_on = new.audit.path is not None and new.audit.max_bytes > 0
        if audit_on != (audit is not None):
            waiting.append("audit.max_bytes/path (the audit log on or off)")
        for key in waiting:
            log.warning("daemon configuration: %s changed; it applies at the next start", key)
        level = config.log_level if self.log_level_given else new.log_level
        logging.getLogger().setLevel(daemon_config.LOG_LEVELS[level])
        audit_config = config.audit
        if audit is not None and audit_on:
            audit_config = replace(audit_config, max_bytes=new.audit.max_bytes,
                                   backups=new.audit.backups)
            audit.max_bytes, audit.backups = audit_config.max_bytes, audit_config.backups
        metrics.interval = new.metrics.interval
        return replace(config, log_level=level, audit=audit_config,
                       metrics=replace(config.metrics, interval=new.metrics.interval)), []
