"""sysinfo emulation in real unprivileged containers: limits, uptime, layouts."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxc_notify_plugin import kernel
from lxc_notify_plugin.host.memory import lxcfs_running
from tests.conftest import require, require_tools
from tests.lxc.conftest import Container, Daemon

MiB = 1 << 20
KEY = "security.syscalls.intercept.sysinfo"
# Stock Debian 12 and 13 hosts are cgroup v2 only (the real-hosts tier runs this
# module there); this host has v1 controllers beside an empty v2.  The same
# limits in each: 256 MiB of memory and 128 MiB of swap (v1 counts memory+swap).
PURE_V2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
LIMITED = ("lxc.cgroup2.memory.max = 256M\nlxc.cgroup2.memory.swap.max = 128M\n" if PURE_V2
           else "lxc.cgroup.memory.limit_in_bytes = 256M\n"
                "lxc.cgroup.memory.memsw.limit_in_bytes = 384M\n")
LXCFS_CONF = Path("/usr/share/lxc/config/common.conf.d/00-lxcfs.conf")


def fields(line: str) -> dict[str, int | str]:
    """nodeprobe's "name value name value ..." line (loads: three values)."""
    words = line.split()
    out: dict[str, int | str] = {}
    i = 0
    while i < len(words):
        name = words[i]
        if name == "loads":
            for n in range(3):
                out[f"load{n}"] = int(words[i + 1 + n])
            i += 4
            continue
        value = words[i + 1]
        out[name] = int(value) if value.lstrip("-").isdigit() else value
        i += 2
    return out


def sysinfo_container(daemon: Daemon, nodeprobe: Path, extra_config: str = "") -> Container:
    box = Container()
    box.daemon = daemon
    try:
        box.create(extra_config)
        box.install(nodeprobe, "/bin/nodeprobe")
        daemon.cli("enable", box.name, "--profile", "default")
        daemon.cli("config", "set", box.name, KEY, "true")
        box.start()
    except BaseException:
        box.destroy()
        raise
    return box


@contextlib.contextmanager
def host_swap(size_mib: int = 256) -> Iterator[None]:
    """A swap file on the host for the length of a test (this VM has none), so a
    container's memsw limit has swap to show."""
    require_tools("mkswap", "swapon", "swapoff", "fallocate")
    path = Path(f"/var/tmp/lxc-notify-test-{os.getpid()}.swap")
    try:
        subprocess.run(["fallocate", "-l", f"{size_mib}M", str(path)], check=True)
        path.chmod(0o600)
        subprocess.run(["mkswap", str(path)], check=True, capture_output=True)
        on = subprocess.run(["swapon", str(path)], capture_output=True, text=True)
        require(on.returncode == 0, f"swapon works here ({on.stderr.strip()})")
        yield
    finally:
        subprocess.run(["swapoff", str(path)], capture_output=True)
        path.unlink(missing_ok=True)


def started_seconds_ago(box: Container) -> float:
    with open(f"/proc/{box.init_pid()}/stat", "rb") as stat:
        ticks = int(stat.read().rsplit(b")", 1)[1].split()[19])
    return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")


def cgroup_dir(box: Container, controller: str) -> Path:
    """The directory of the container init's cgroup for a v1 CONTROLLER, or its v2
    cgroup where the controller is in no v1 hierarchy."""
    lines = Path(f"/proc/{box.init_pid()}/cgroup").read_text().splitlines()
    for line in lines:
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return Path("/sys/fs/cgroup", controller, path.lstrip("/"))
    unified = Path("/sys/fs/cgroup") if PURE_V2 else Path("/sys/fs/cgroup/unified")
    path = next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
    return unified / path.lstrip("/")


def pids_current(box: Container) -> int:
    path = cgroup_dir(box, "pids") / "pids.current"
    require(path.exists(), "a pids controller for LXC containers")
    return int(path.read_text())


def require_swap_accounting() -> None:
    if PURE_V2:
        require(any(Path("/sys/fs/cgroup").glob("*/memory.swap.max")),
                "cgroup v2 memory controller with swap accounting")
    else:
        require(Path("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
                "cgroup v1 memory controller with swap accounting")


@pytest.fixture(scope="module")
def limited(daemon: Daemon, nodeprobe: Path) -> Iterator[Container]:
    require_swap_accounting()
    box = sysinfo_container(daemon, nodeprobe, LIMITED)
    try:
        yield box
    finally:
        box.destroy()


def test_a_256_mib_container_sees_256_mib_and_its_own_uptime(limited: Container) -> None:
    info = fields(limited.probe("sysinfo"))
    assert info["totalram"] == 256 * MiB and info["mem_unit"] == 1
    assert 0 < int(info["freeram"]) < 256 * MiB
    assert int(info["sharedram"]) <= 256 * MiB and info["bufferram"] == 0
    assert info["padding"] == 0 and info["pad"] == 0
    assert info["totalhigh"] == 0 and info["freehigh"] == 0
    age = started_seconds_ago(limited)
    host_uptime = kernel.host_sysinfo().uptime
    assert age - 2 <= int(info["uptime"]) <= age + 2 < host_uptime
    # The pids cgroup counts threads, as procs does; nodeprobe and lxc-attach's
    # shell come and go around the read.
    assert abs(int(info["procs"]) - pids_current(limited)) <= 3 and int(info["procs"]) >= 1


def test_free_and_uptime_commands_show_the_containers_view(limited: Container) -> None:
    # busybox free prints "Mem:   " and 12-character columns; its "used" and
    # "buff/cache" take Cached from /proc/meminfo, which is the host's (only a
    # /proc overlay such as LXCFS changes that), so only the sysinfo columns count.
    mem = limited.sh("free").splitlines()[1]
    assert mem.startswith("Mem:") and int(mem[7:19]) == 256 * 1024  # KiB
    uptime = limited.sh("uptime")
    assert " up 0 min," in uptime or " up 1 min," in uptime, uptime


def test_free_shows_the_limit_with_lxcfs_and_says_why_not_without(
        daemon: Daemon, nodeprobe: Path) -> None:
    """busybox free takes its totals from sysinfo(2) and cached memory from
    /proc/meminfo, procps free all from /proc/meminfo: with lxcfs's meminfo (LXC's
    00-lxcfs.conf) they agree;
    without lxcfs the admin is told, when the key is set and in status."""
    if not lxcfs_running():
        box = Container()
        box.daemon = daemon
        try:
            box.create(LIMITED)
            daemon.cli("enable", box.name, "--profile", "default")
            said = daemon.cli("config", "set", box.name, KEY, "true")
            assert "lxcfs is not running here" in said.stderr
            status = daemon.cli("status").stdout
            assert "lxcfs: not running here" in status and "/proc/meminfo" in status
        finally:
            box.destroy()
        return
    require(LXCFS_CONF.exists(), f"LXC's lxcfs hook config {LXCFS_CONF}")
    box = sysinfo_container(daemon, nodeprobe, LIMITED + f"lxc.include = {LXCFS_CONF}\n")
    try:
        header, mem = box.sh("free -m").splitlines()[:2]
        columns = dict(zip(header.split(), (int(v) for v in mem.split()[1:]), strict=False))
        assert columns["total"] == 256, mem
        assert all(0 <= value <= 256 for value in columns.values()), (header, mem)
        assert columns["used"] + columns["free"] <= 256, (header, mem)
        meminfo = box.sh("cat /proc/meminfo").splitlines()[0].split()
        assert meminfo[:3] == ["MemTotal:", str(256 * 1024), "kB"], meminfo
        # procps free reads /proc/meminfo alone (no sysinfo): lxcfs's view, the same limit.
        free = install_with_libraries(box, "free")
        header, mem = box.sh(f"{free} -m").splitlines()[:2]
        columns = dict(zip(header.split(), (int(v) for v in mem.split()[1:]), strict=False))
        assert columns["total"] == 256, (header, mem)
        assert columns["used"] + columns["free"] <= 256, (header, mem)
        assert 0 < columns["available"] <= 256, (header, mem)
    finally:
        box.destroy()


def install_with_libraries(box: Container, program: str) -> str:
    """The host's dynamically linked PROGRAM and every library ``ldd`` names for it,
    copied into BOX at the same paths (the busybox container has no libc)."""
    path = shutil.which(program)
    require(path is not None, f"{program} on the host")
    assert path is not None
    listing = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux... (0x...)"
    for name in [path, *re.findall(r"(/\S+) \(0x", listing)]:
        box.install(os.path.realpath(name), name)
    return path


def test_swap_follows_the_swap_limit(daemon: Daemon, nodeprobe: Path) -> None:
    require_swap_accounting()
    with host_swap(256):
        box = sysinfo_container(daemon, nodeprobe, LIMITED)
        try:
            info = fields(box.probe("sysinfo"))
            # v1: memory+swap 384 MiB less memory 256 MiB; v2: swap.max; 128 MiB of
            # swap either way, none used yet.
            assert info["totalswap"] == 128 * MiB
            assert 0 < int(info["freeswap"]) <= 128 * MiB
            info32 = fields(box.probe("sysinfo32"))
            assert int(info32["totalswap"]) * int(info32["mem_unit"]) == 128 * MiB
        finally:
            box.destroy()


def test_without_swap_on_the_host_a_memsw_limit_shows_none(limited: Container) -> None:
    require(not Path("/proc/swaps").read_text().splitlines()[1:], "a host without swap")
    info = fields(limited.probe("sysinfo"))
    assert info["totalswap"] == 0 and info["freeswap"] == 0


def test_an_i386_caller_gets_the_i386_layout(limited: Container) -> None:
    native = fields(limited.probe("sysinfo"))
    info = fields(limited.probe("sysinfo32"))
    assert info["guard"] == "intact", "wrote past the 64-byte i386 struct"
    assert info["padding"] == 0 and info["pad"] == 0
    # 256 MiB fits 32 bits: bytes, as the kernel would answer.
    assert info["mem_unit"] == 1 and info["totalram"] == 256 * MiB
    assert 0 < int(info["freeram"]) <= 256 * MiB
    assert abs(int(info["uptime"]) - int(native["uptime"])) <= 2
    assert abs(int(info["procs"]) - int(native["procs"])) <= 3


def test_without_a_limit_the_hosts_totals(daemon: Daemon, nodeprobe: Path) -> None:
    box = sysinfo_container(daemon, nodeprobe)
    try:
        host = kernel.host_sysinfo()
        info = fields(box.probe("sysinfo"))
        assert info["totalram"] == host.totalram * host.mem_unit
        assert info["totalswap"] == host.totalswap * host.mem_unit
        assert int(info["uptime"]) <= started_seconds_ago(box) + 2 < host.uptime
        # The i386 answer is the kernel's own scaling of the host's values.
        own = fields(subprocess.run([str(nodeprobe), "sysinfo32"], capture_output=True,
                                    text=True, check=True).stdout)
        info32 = fields(box.probe("sysinfo32"))
        assert info32["mem_unit"] == own["mem_unit"]
        assert info32["totalram"] == own["totalram"]
        assert info32["guard"] == "intact"
    finally:
        box.destroy()


def test_a_null_buffer_is_efault(limited: Container) -> None:
    assert limited.probe("sysinfo-null") == "EFAULT"


def test_the_family_off_leaves_sysinfo_to_the_kernel(daemon: Daemon, nodeprobe: Path) -> None:
    box = Container()
    box.daemon = daemon
    try:
        box.create(LIMITED)
        box.install(nodeprobe, "/bin/nodeprobe")
        daemon.cli("enable", box.name, "--profile", "default")
        box.start()
        info = fields(box.probe("sysinfo"))
        assert info["totalram"] == kernel.host_sysinfo().totalram  # the problem, untouched
    finally:
        box.destroy()
