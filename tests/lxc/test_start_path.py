"""enable/disable/start: how a container comes to be supervised."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxc_notify_plugin.admin.daemon import daemon_running
from lxc_notify_plugin.admin.lxc_config import BEGIN
from lxc_notify_plugin.paths import Paths
from lxc_notify_plugin.tools.sandbox import _BASE_CONFIG, Sandbox
from tests.lxc.conftest import Container, Daemon


@pytest.fixture
def stopped_container(lxc_ready: None, nodeprobe: Path) -> Iterator[Container]:
    container = Container()
    try:
        container.create()
        container.install(nodeprobe, "/bin/nodeprobe")
        yield container
    finally:
        container.destroy()


def test_disable_restores_the_config_byte_for_byte(stopped_container: Container,
                                                   daemon: Daemon) -> None:
    original = stopped_container.config_file.read_bytes()
    daemon.cli("enable", stopped_container.name)
    enabled = stopped_container.config_file.read_text()
    assert BEGIN in enabled
    assert f"lxc.seccomp.notify.proxy = unix:{daemon.paths.socket}" in enabled
    assert stopped_container.config_file.stat().st_mode & 0o007 == 0  # the cookie is secret
    cookie_line = next(x for x in enabled.splitlines() if "notify.cookie" in x)
    assert stopped_container.name not in cookie_line  # a random secret, not the name
    daemon.cli("enable", stopped_container.name)  # again: idempotent, same cookie
    assert stopped_container.config_file.read_text() == enabled
    daemon.cli("disable", stopped_container.name)
    assert stopped_container.config_file.read_bytes() == original
    assert not (daemon.paths.containers_dir / f"{stopped_container.name}.json").exists()


def test_enable_refuses_bad_input_and_changes_nothing(stopped_container: Container,
                                                      daemon: Daemon) -> None:
    original = stopped_container.config_file.read_bytes()
    result = daemon.cli("enable", stopped_container.name, "--profile", "no-such-profile",
                        check=False)
    assert result.returncode == 1
    assert "no-such-profile" in result.stderr and "no such profile" in result.stderr
    assert stopped_container.config_file.read_bytes() == original
    missing = daemon.cli("enable", "no-such-container-xyz", check=False)
    assert missing.returncode == 1 and "no such container" in missing.stderr
    with stopped_container.config_file.open("a") as config:
        config.write("lxc.seccomp.notify.proxy = unix:/elsewhere.sock\n")
    edited = stopped_container.config_file.read_bytes()
    clash = daemon.cli("enable", stopped_container.name, check=False)
    assert clash.returncode == 1 and "lxc.seccomp.notify.proxy" in clash.stderr
    assert stopped_container.config_file.read_bytes() == edited


def test_plain_lxc_start_is_supervised_after_enable(stopped_container: Container,
                                                    daemon: Daemon) -> None:
    daemon.cli("enable", stopped_container.name)
    stopped_container.start()
    assert stopped_container.probe("mknod", "/tmp/enabled", "c", "1", "3") == "ok"
    stopped_container.stop()
    daemon.cli("disable", stopped_container.name)
    stopped_container.start()
    assert stopped_container.probe("mknod", "/tmp/disabled", "c", "1", "3") == "EPERM"


def test_start_supervises_one_start_and_starts_the_daemon(stopped_container: Container,
                                                          tmp_path: Path) -> None:
    paths = Paths(socket=tmp_path / "own.sock", state_dir=tmp_path / "state",
                  admin_profiles=tmp_path / "profiles")
    original = stopped_container.config_file.read_bytes()
    assert not daemon_running(paths)
    config = tmp_path / "daemon.toml"  # the started daemon's audit log and metrics stay here
    config.write_text(f'[audit]\npath = "{tmp_path}/audit.log"\n'
                      f'[metrics]\npath = "{tmp_path}/metrics.prom"\n')
    args = ["--socket", str(paths.socket), "--state-dir", str(paths.state_dir),
            "--profile-dir", str(paths.admin_profiles), "--config", str(config)]
    log = tmp_path / "daemon.log"
    try:
        subprocess.run([sys.executable, "-m", "lxc_notify_plugin", *args, "start",
                        stopped_container.name, "--log-file", str(log)], check=True,
                       capture_output=True, text=True, timeout=60)
        assert daemon_running(paths)
        assert stopped_container.probe("mknod", "/tmp/started", "c", "1", "3") == "ok"
        assert stopped_container.config_file.read_bytes() == original
    finally:
        stopped_container.stop()
        pids = subprocess.run(["pgrep", "-f", "--", f"--socket {paths.socket}"],
                              capture_output=True, text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-TERM", pid])
        deadline = time.monotonic() + 10
        while daemon_running(paths) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "Traceback" not in log.read_text()
    assert (tmp_path / "audit.log").exists()


def _tree(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry under ROOT: its mode, owner, group and symlink target (or size)."""
    found = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        what = os.readlink(path) if path.is_symlink() else str(st.st_size if path.is_file() else "")
        found[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, what)
    return found


def test_a_sandbox_is_what_lxc_create_makes(lxc_ready: None, tmp_path: Path) -> None:
    # Sandbox.create copies one real run of the busybox template: the copy must be
    # what lxc-create itself makes for the same name and -f file (in LXC paths of one
    # length, so that the two configs are of one size too).
    extra = "# the test's own lines\nlxc.cgroup2.devices.allow = c 1:3 rwm\n\nlxc.tty.max = 2\n"
    copy = Sandbox(lxc_path=str(tmp_path / "copy"))
    made = Sandbox(lxc_path=str(tmp_path / "made"))
    made.name = copy.name
    Path(copy.lxc_path).mkdir()
    Path(made.lxc_path).mkdir()
    try:
        copy.create(extra)
        conf = tmp_path / "made.conf"
        conf.write_text(_BASE_CONFIG + extra)
        subprocess.run(["lxc-create", "-n", made.name, "-P", made.lxc_path, "-t", "busybox",
                        "-f", str(conf)], check=True, capture_output=True)
        made._created = True
        made_dir, copy_dir = Path(made.lxc_path, made.name), Path(copy.lxc_path, copy.name)
        assert copy.config_file.read_text() == made.config_file.read_text().replace(
            made.lxc_path, copy.lxc_path)
        assert _tree(copy_dir) == _tree(made_dir)
    finally:
        copy.destroy()
        made.destroy()
