"""Shipped profiles, LXD keys and reloads, in real containers under a real daemon."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxc_notify_plugin.paths import PACKAGE_PROFILES
from lxc_notify_plugin.policy.catalog import built
from lxc_notify_plugin.policy.families import LXD_FAMILIES
from tests.conftest import require_tools
from tests.lxc.conftest import Container, Daemon, supervised_container

MKNOD_KEY = "security.syscalls.intercept.mknod"
# A family LXD names that this build has no handler for (derived, never listed):
# none since bpf, so the key's refusal is the unit tier's (its `unbuilt` fixture).
UNBUILT = next((family for family in LXD_FAMILIES if family not in built()), None)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def profiled(daemon: Daemon, nodeprobe: Path, request: pytest.FixtureRequest
             ) -> Iterator[Container]:
    container = supervised_container(daemon, nodeprobe, profile=request.param)
    try:
        yield container
    finally:
        container.destroy()


@pytest.mark.parametrize("profiled", ["docker"], indirect=True)
def test_docker_profile(profiled: Container) -> None:
    box = profiled
    # Whiteouts, and an overlay mount in which one hides a lower file.
    out = box.sh("cd /tmp && mkdir -p lo up wk mg && echo x > lo/gone && echo y > lo/kept && "
                 "mknod up/gone c 0 0 && mount -t overlay overlay -o lowerdir=/tmp/lo,"
                 "upperdir=/tmp/up,workdir=/tmp/wk,userxattr /tmp/mg && ls /tmp/mg")
    assert out.split() == ["kept"]
    assert box.probe("mknod", "/dev/fuse", "c", "10", "229") == "ok"
    assert box.probe("open", "/dev/fuse") == "ok"
    assert box.probe("mknod", "/tmp/fuse", "c", "10", "229") == "EPERM"  # path pattern
    box.sh("mkdir -p /dev/net")
    assert box.probe("mknod", "/dev/net/tun", "c", "10", "200") == "ok"
    assert "tap0" in box.sh("tunctl -t tap0 >/dev/null && ip link show tap0")


@pytest.mark.parametrize("profiled", ["fuse"], indirect=True)
def test_fuse_profile_mounts_a_fuse_filesystem(profiled: Container) -> None:
    require_tools("fuse2fs", "mkfs.ext4")
    box = profiled
    # fuse2fs from the host runs inside: the busybox container binds /usr/lib.
    box.install(shutil.which("fuse2fs") or "", "/bin/fuse2fs")
    image = box.rootfs / "tmp" / "disk.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image), "8M"], check=True)
    shutil.chown(image, 100000, 100000)
    assert box.probe("mknod", "/tmp/fuse", "c", "10", "229") == "EPERM"  # only at /dev/fuse
    assert box.probe("mknod", "/dev/fuse", "c", "10", "229", "0666", "0") == "ok"
    assert box.probe("stat", "/dev/fuse") == "mode 20666 uid 0 gid 0 major 10 minor 229"
    out = box.sh("mkdir -p /mnt/disk && fuse2fs /tmp/disk.img /mnt/disk && "
                 "echo hello > /mnt/disk/file && cat /mnt/disk/file && "
                 "grep -c fuse.ext4 /proc/mounts")
    try:
        assert out.split() == ["hello", "1"]
        # A FUSE mount refuses the daemon (it is outside the mount's user
        # namespace): there the caller gets the kernel's own answer, EPERM.
        box.sh("mkdir /mnt/disk/sub")
        for path in ("/mnt/disk/null", "/mnt/disk/sub/null"):
            assert box.probe("mknod", path, "c", "1", "3") == "EPERM"
            assert box.probe("stat", path) == "ENOENT"
    finally:
        box.sh("umount /mnt/disk")


@pytest.mark.parametrize("profiled", ["tun"], indirect=True)
def test_tun_profile(profiled: Container) -> None:
    box = profiled
    box.sh("mkdir -p /dev/net")
    assert box.probe("mknod", "/tmp/tun", "c", "10", "200") == "EPERM"
    assert box.probe("mknod", "/dev/net/tun", "c", "10", "200", "0777", "0") == "ok"
    assert box.probe("stat", "/dev/net/tun").startswith("mode 20666")  # capped at 0666
    assert "tap0" in box.sh("tunctl -t tap0 >/dev/null && ip link show tap0")
    assert box.probe("mknod", "/dev/fuse", "c", "10", "229") == "EPERM"  # not this profile


@pytest.mark.parametrize("name", sorted(p.stem for p in PACKAGE_PROFILES.glob("*.toml")))
def test_compiled_profile_is_accepted_by_lxc(name: str, daemon: Daemon, nodeprobe: Path,
                                             tmp_path: Path) -> None:
    policy = tmp_path / f"{name}.seccomp"
    policy.write_text(daemon.cli("profile", "compile", name).stdout)
    with Container() as box:
        box.create()
        box.start({"lxc.seccomp.profile": str(policy)})  # raises if LXC refuses the policy
        status = Path(f"/proc/{box.init_pid()}/status").read_text()
        assert "Seccomp:\t2" in status  # init runs under the compiled filter
        log = (Path(box.lxc_path) / box.name / "start.log").read_text()
        # Both conditions reach libseccomp: device nodes, but never dev 0 (whiteouts).
        line = "mknodat notify [2,8192,SCMP_CMP_MASKED_EQ,61440] [3,0,SCMP_CMP_NE]"
        assert f'Processing "{line}"' in log
        assert "Failed" not in log.split(f'Processing "{line}"', 1)[1].split("Processing", 1)[0]


def test_config_set_changes_decisions_without_restart(container: Container,
                                                      daemon: Daemon) -> None:
    assert container.probe("mknod", f"/tmp/{unique('a')}", "c", "1", "3") == "ok"
    out = daemon.cli("config", "set", container.name, MKNOD_KEY, "off").stdout
    assert "next start" in out and "already follows it" in out
    try:
        assert daemon.cli("config", "get", container.name, MKNOD_KEY).stdout.strip() == "false"
        assert container.probe("mknod", f"/tmp/{unique('b')}", "c", "1", "3") == "EPERM"
        daemon.cli("config", "set", container.name, MKNOD_KEY, "yes")
        assert container.probe("mknod", f"/tmp/{unique('c')}", "c", "1", "3") == "ok"
        shown = daemon.cli("config", "show", container.name, "--effective").stdout
        assert f"intercept.mknod: true    [key {MKNOD_KEY}]" in shown
        assert "devices: c 1:3  # /dev/null    [" in shown
    finally:
        daemon.cli("config", "unset", container.name, MKNOD_KEY)
    assert daemon.cli("config", "show", container.name).stdout == ""


def test_bad_input_is_one_line_and_changes_nothing(container: Container, daemon: Daemon,
                                                   tmp_path: Path) -> None:
    record = daemon.paths.containers_dir / f"{container.name}.json"
    before = record.read_bytes()
    cases = [
        (["config", "set", container.name, MKNOD_KEY, "perhaps"], [str(record), MKNOD_KEY,
                                                                  "not a boolean"]),
        (["config", "set", container.name, "security.syscalls.nope", "1"], ["unknown key"]),
    ]
    if UNBUILT is not None:
        cases.append((["config", "set", container.name, f"security.syscalls.intercept.{UNBUILT}",
                       "true"], [f"security.syscalls.intercept.{UNBUILT}",
                                 f"no {UNBUILT} handler yet"]))
    bad = tmp_path / "bad.toml"
    bad.write_text('[[devices]]\ntype = "c"\nmajor = 5000\nminor = 1\n')
    cases.append((["profile", "check", str(bad)], [str(bad), "devices[0].major", "outside"]))
    broken = tmp_path / "broken.toml"
    broken.write_text('name = "x"\n[intercept\n')
    cases.append((["profile", "check", str(broken)], [str(broken), "invalid TOML", "line 2"]))
    cycle = tmp_path / "loop.toml"
    cycle.write_text('extends = ["loop"]\n')
    cases.append((["profile", "check", str(cycle)], ["extends[0]", "cycle"]))
    for argv, words in cases:
        result = daemon.cli(*argv, check=False)
        assert result.returncode != 0, argv
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        for word in words:
            assert word in lines[0], (word, lines[0])
    assert record.read_bytes() == before
    good = daemon.cli("profile", "check", str(PACKAGE_PROFILES / "docker.toml"))
    assert "ok (docker" in good.stdout


def test_reload_applies_edits_and_a_broken_profile_keeps_the_old_policy(
        daemon: Daemon, nodeprobe: Path) -> None:
    name = unique("lab")
    admin = daemon.paths.admin_profiles
    admin.mkdir(parents=True, exist_ok=True)
    lab = admin / f"{name}.toml"
    container: Container | None = None
    try:
        lab.write_text('extends = ["default"]\n[[devices]]\ntype = "c"\nmajor = 10\n'
                       'minor = 200\n')
        container = supervised_container(daemon, nodeprobe, profile=name)
        assert container.probe("mknod", "/tmp/t1", "c", "10", "200") == "ok"
        assert container.probe("mknod", "/tmp/f1", "c", "10", "229") == "EPERM"
        lab.write_text(lab.read_text() + '[[devices]]\ntype = "c"\nmajor = 10\nminor = 229\n')
        assert daemon.cli("reload").stdout.strip() == "reloaded"
        assert container.probe("mknod", "/tmp/f2", "c", "10", "229") == "ok"

        lab.write_text('extends = ["default"]\n[[devices]]\ntype = "c"\nmajor = 10\n')
        result = daemon.cli("reload", check=False)
        assert result.returncode == 1 and container.name in result.stderr
        assert f"{lab}: devices[0].minor: missing" in daemon.log()
        # The old policy still answers, devices from before the breakage included.
        assert container.probe("mknod", "/tmp/t3", "c", "10", "200") == "ok"
        assert container.probe("mknod", "/tmp/f3", "c", "10", "229") == "ok"
        # And config set refuses to write on top of a profile that fails.
        refused = daemon.cli("config", "set", container.name, MKNOD_KEY, "true", check=False)
        assert refused.returncode == 1 and "devices[0].minor" in refused.stderr
        state = json.loads((daemon.paths.containers_dir / f"{container.name}.json").read_text())
        assert state["config"] == {}
    finally:
        if container is not None:
            container.destroy()
        lab.unlink(missing_ok=True)
