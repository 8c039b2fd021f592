"""daemon.toml: every key checked, every error naming file, key and reason; the CLI's options."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from lxc_notify_plugin import cli
from lxc_notify_plugin.errors import ConfigError
from lxc_notify_plugin.service import config
from lxc_notify_plugin.service.config_reload import ConfigReload
from lxc_notify_plugin.service.metrics import Metrics

FULL = """
[daemon]
socket = "/run/x/seccomp.sock"
agent_socket = "/run/x/agent.sock"
state_dir = "/srv/state"
profile_dir = "/srv/profiles"
lxc_path = "/srv/lxc"
udev_control = "/run/udev/control"
log_level = "warning"
[audit]
path = "/srv/log/audit.log"
max_bytes = 65536
backups = 3
queue = 10
[metrics]
path = ""
interval = 2
[limits]
connections = 8
"""


def test_every_key_is_read() -> None:
    parsed = config.parse(FULL, "daemon.toml")
    assert parsed.paths.socket == Path("/run/x/seccomp.sock")
    assert parsed.paths.agent_socket == Path("/run/x/agent.sock")
    assert parsed.paths.state_dir == Path("/srv/state")
    assert parsed.paths.admin_profiles == Path("/srv/profiles")
    assert parsed.paths.lxc_path == "/srv/lxc"
    assert parsed.log_level == "warning"
    assert parsed.audit == config.AuditSettings(Path("/srv/log/audit.log"), 65536, 3, 10)
    assert parsed.metrics == config.MetricsSettings(None, 2.0)
    assert parsed.connections == 8


def test_defaults_without_a_file(tmp_path: Path) -> None:
    defaults = config.DaemonConfig()
    assert defaults.audit.path == Path("/var/log/lxc-notify/audit.log")
    assert defaults.audit.max_bytes > 0  # on by default, bounded
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "missing.toml")


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("[daemon]\nsocket = 'relative.sock'", "daemon.socket", "not an absolute path"),
    ("[daemon]\nsocket = '/" + "s" * 120 + "'", "daemon.socket", "longer than a unix socket"),
    ("[daemon]\nlog_level = 'loud'", "daemon.log_level", "not a log level"),
    ("[daemon]\nsockett = '/x'", "daemon.sockett", "unknown key"),
    ("[deamon]\nsocket = '/x'", "deamon", "unknown section"),
    ("daemon = 1", "daemon", "must be a table"),
    ("[audit]\nmax_bytes = 10", "audit.max_bytes", "between 4096 bytes"),
    ("[audit]\nmax_bytes = '10M'", "audit.max_bytes", "not an integer"),
    ("[audit]\nbackups = true", "audit.backups", "not an integer"),
    ("[audit]\nqueue = 0", "audit.queue", "at least one line"),
    ("[metrics]\ninterval = 0", "metrics.interval", "between 0.1 and 3600"),
    ("[limits]\nconnections = 0", "limits.connections", "at least one connection"),
])
def test_bad_values_name_file_key_and_reason(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.parse(text, "/etc/lxc-notify/daemon.toml")
    assert caught.value.file == "/etc/lxc-notify/daemon.toml"
    assert caught.value.key == key
    assert reason in caught.value.reason
    assert str(caught.value).count("\n") == 0  # one line


def test_invalid_toml_is_one_error() -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        config.parse("[daemon\n", "f.toml")


def test_restart_needed_names_what_cannot_change_live() -> None:
    old = config.parse(FULL, "a")
    new = config.parse(FULL.replace("backups = 3", "backups = 4")
                       .replace("/srv/state", "/srv/other"), "a")
    assert old.restart_needed(new) == ["daemon.state_dir"]


@pytest.mark.parametrize("argv", [
    ["-v", "--socket", "/run/a.sock", "status"],
    ["status", "-v", "--socket", "/run/a.sock"],
    ["--socket", "/run/a.sock", "status", "-v"],
])
def test_common_options_before_or_after_the_command(argv: list[str]) -> None:
    args = cli.build_parser().parse_args(argv)
    settings = cli._settings(args)
    assert settings.paths.socket == Path("/run/a.sock")
    assert settings.log_level == "debug"


def test_command_line_wins_over_the_file(tmp_path: Path) -> None:
    file = tmp_path / "daemon.toml"
    file.write_text(FULL)
    args = cli.build_parser().parse_args(
        ["config", "show", "x", "--config", str(file), "--state-dir", "/elsewhere",
         "--log-level", "error"])
    settings = cli._settings(args)
    assert settings.paths.state_dir == Path("/elsewhere")
    assert settings.paths.socket == Path("/run/x/seccomp.sock")  # from the file
    assert settings.log_level == "error"


def test_a_bad_file_fails_every_command_in_one_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "daemon.toml"
    file.write_text("[audit]\nbackups = -1\n")
    assert cli.main(["status", "--config", str(file)]) == 1
    err = capsys.readouterr().err
    assert err == f"lxc-notify: {file}: audit.backups: -1 is not between 0 and 1000000\n"


def test_a_reload_applies_the_live_keys_and_names_the_rest(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """service/config_reload.py: the metrics' interval changes live, a path waits for
    the next start (said, and kept), and a file that no longer parses is refused whole."""
    file = tmp_path / "daemon.toml"
    text = FULL.replace('path = "/srv/log/audit.log"', 'path = ""')
    file.write_text(text)
    running = config.load(file)
    reload = ConfigReload(running)
    metrics = SimpleNamespace(interval=running.metrics.interval)
    root, level = logging.getLogger(), logging.getLogger().level
    try:
        file.write_text(text.replace("interval = 2", "interval = 5")
                        .replace("/srv/state", "/srv/other"))
        new, refused = reload.apply(running, None, cast(Metrics, metrics))
        assert refused == [] and new.metrics.interval == 5.0 and metrics.interval == 5.0
        assert new.paths.state_dir == Path("/srv/state")
        assert "daemon.state_dir changed; it applies at the next start" in caplog.text
        file.write_text("[daemon]\nlog_level = 3\n")
        assert reload.apply(new, None, cast(Metrics, metrics)) == (new, [str(file)])
    finally:
        root.setLevel(level)  # the reload set the process's level from the file
