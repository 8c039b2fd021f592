"""Issue 18 in real containers: privileged steps are taken in the caller's context.

Each expectation about the kernel's answer is taken from the kernel in the
same run: a host root process placed in the container's cgroups (every
cgroup.procs of the init's cgroups, v1 and v2) makes the same node or opens
the same device, and its errno is the one the container must get; a host
mount in a private namespace shows what an image's superblock asks for; a
mount container root made itself shows that a remount is otherwise allowed.

1. the FUSE program runs entirely as the caller: all eight namespaces, its
   cgroups, bounding set, seccomp filter mode and no_new_privs;
2. a v1 device cgroup's deny exception (default allow) holds for mknod;
3. a read-only device rule holds for a mount whose data says "rw";
4. an ext4 image's stored errors=panic (-e and -E mount_opts=) is overridden;
5. a cgroup v2 device program refusing a device holds for mknod and mount;
6. the forced nosuid/nodev of an emulated mount cannot be cleared.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxc_notify_plugin import kernel
from lxc_notify_plugin.host.cgroups import procs_files
from lxc_notify_plugin.tools.sandbox import APPARMOR_PROFILE, lxc_attach_error
from tests.conftest import require, require_tools
from tests.lxc import bpfdev
from tests.lxc.conftest import DEVICES, Container, Daemon
from tests.lxc.test_mount import (
    CONTAINER_ROOT,
    KEY,
    Image,
    give_device,
    install_with_libraries,
    loop_device,
    mount_options,
    mp,
    target,
)

NAMESPACES = ("user", "mnt", "pid", "net", "uts", "ipc", "cgroup", "time")
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND = 1, 2, 4, 32, 4096
MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x2, 0x4
# What an LXC container needs to run (lxc-attach, a shell): LXC's usual list.
DEFAULT_CHARS = ("c 1:3", "c 1:5", "c 1:7", "c 1:8", "c 1:9", "c 5:0", "c 5:1", "c 5:2",
                 "c 136:*")
MOUNT_KEYS = {"mount": "true", "mount.allowed": "ext4"}


def unique(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- fixtures -------------------------------------------------------------------------


@contextlib.contextmanager
def made_image(work: Path, *, node: bool = False, tune: tuple[str, ...] = ()) -> Iterator[Image]:
    """An ext4 image of its own on a loop device of its own, detached afterwards.
    ``node``: a c 1:3 node "null", mode 0666, owned by 0; ``tune``: tune2fs arguments."""
    require_tools("mkfs.ext4", "losetup", "tune2fs")
    work.mkdir(parents=True, exist_ok=True)
    content = Path(tempfile.mkdtemp(prefix="content-", dir=work))
    (content / "root_file").write_text("root's\n")
    if node:
        os.mknod(content / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.chmod(content / "null", 0o666)
    path = content.with_suffix(".img")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(path), "16M"], check=True)
    if tune:
        subprocess.run(["tune2fs", *tune, str(path)], check=True, capture_output=True)
    with loop_device(path) as made:
        yield made


@pytest.fixture(scope="module")
def image(lxc_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    with made_image(tmp_path_factory.mktemp("ctx-image")) as made:
        yield made


@contextlib.contextmanager
def box_for(daemon: Daemon, nodeprobe: Path, mountprobe: Path, image: Image | None = None, *,
            profile: str = "default", keys: dict[str, str] | None = None,
            extra_config: str = "") -> Iterator[Container]:
    """A supervised container of its own (unique name), destroyed whatever happens."""
    box = Container()
    box.daemon = daemon
    try:
        box.create(extra_config)
        box.install(nodeprobe, "/bin/nodeprobe")
        box.install(mountprobe, "/bin/mountprobe")
        if image is not None:
            give_device(box, image)
        daemon.cli("enable", box.name, "--profile", profile)
        for key, value in (keys or {}).items():
            daemon.cli("config", "set", box.name, KEY + key, value)
        box.start()
        yield box
    finally:
        box.destroy()


# --- the kernel's own answer ------------------------------------------------------------

# Runs as host root: joins every cgroup given, then makes the node or opens the
# device, and prints "ok" or the errno's name.
_IN_CGROUPS = """
import errno, json, os, stat, sys
for path in json.loads(sys.argv[1]):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
op, path = sys.argv[2], sys.argv[3]
try:
    if op == "mknod":
        kind = stat.S_IFCHR if sys.argv[4] == "c" else stat.S_IFBLK
        os.mknod(path, kind | 0o600, os.makedev(int(sys.argv[5]), int(sys.argv[6])))
        os.unlink(path)
    else:
        os.close(os.open(path, {"read": os.O_RDONLY, "readwrite": os.O_RDWR}[op]))
    print("ok")
except OSError as err:
    print(errno.errorcode[err.errno])
"""


def cgroup_procs_of(pid: int) -> list[str]:
    proc_cgroup = Path(f"/proc/{pid}/cgroup").read_bytes()
    files = procs_files(proc_cgroup, Path("/proc/self/mountinfo").read_text())
    assert len(files) == len(proc_cgroup.splitlines()), (files, proc_cgroup)
    return files


def kernel_answer(init_pid: int, op: str, *args: str) -> str:
    """What the kernel answers a host root process in the container's cgroups."""
    result = subprocess.run([sys.executable, "-c", _IN_CGROUPS, json.dumps(cgroup_procs_of(
        init_pid)), op, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def kernel_mknod(init_pid: int, work: Path, kind: str, major: int, minor: int) -> str:
    return kernel_answer(init_pid, "mknod", str(work / unique("node")), kind, str(major),
                         str(minor))


def unified_dir(pid: int) -> Path:
    """The v2 cgroup of ``pid`` on the host's cgroup2 mount."""
    mount_point = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        dash = fields.index("-")
        if fields[dash + 1] == "cgroup2" and fields[3] == "/":
            mount_point = fields[4]
            break
    require(mount_point is not None, "a cgroup2 hierarchy mounted on the host")
    assert mount_point is not None
    line = next(entry for entry in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                if entry.startswith("0::"))
    return Path(mount_point) / line[3:].lstrip("/")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- 1. the FUSE program ------------------------------------------------------------------


def status_fields(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def host_pid_of(init_pid: int, inner_pid: int) -> int:
    """The host pid of the container's process ``inner_pid``."""
    pid_ns = os.readlink(f"/proc/{init_pid}/ns/pid")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (os.readlink(f"/proc/{entry}/ns/pid") == pid_ns
                    and status_fields(int(entry))["NSpid"].split()[-1] == str(inner_pid)):
                return int(entry)
    raise AssertionError(f"no process {inner_pid} in the container")


@contextlib.contextmanager
def held_shell(box: Container, commands: str) -> Iterator[tuple[int, str]]:
    """An attached shell that runs ``commands`` then stays (exec sleep): yields its
    host pid (the callers of the commands were its children: its context) and the
    commands' output.  Killed on the way out."""
    what = f"a shell in {box.name}"
    for attempt in range(1, 4):
        with tempfile.TemporaryFile() as stderr:
            process = subprocess.Popen(
                ["lxc-attach", "-n", box.name, "-P", box.lxc_path, "--clear-env", "--",
                 "/bin/sh", "-c", f"echo started $$; {commands}; echo finished; exec sleep 600"],
                stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL)
            assert process.stdout is not None
            out = b""
            deadline = time.monotonic() + 60
            while b"finished\n" not in out and time.monotonic() < deadline:
                ready, _, _ = select.select([process.stdout], [], [], 1)
                if ready:
                    chunk = os.read(process.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    out += chunk
            text = out.decode(errors="replace")
            stderr.seek(0)
            logged = stderr.read().decode(errors="replace")
            try:
                if not text.startswith("started ") and attempt < 3:
                    print(f"held_shell: {what} never started ({logged.strip()}); retrying",
                          file=sys.stderr)
                    continue
                assert "finished\n" in text, f"{what}: {text!r}; stderr: {logged}"
                assert lxc_attach_error(logged) is None, f"{what} may be unsupervised: {logged}"
                inner = int(text.split()[1])
                shell = host_pid_of(box.init_pid(), inner)
                body = text.split("\n", 1)[1].rsplit("finished\n", 1)[0]
                try:
                    yield shell, body
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(shell, 9)
                return
            finally:
                process.kill()
                process.wait()
                process.stdout.close()
    raise AssertionError(f"{what} never started")


def connect_from(net_ns: str, port: int) -> str:
    """Connect to 127.0.0.1:port from the network namespace ``net_ns`` (a path)."""
    code = ("import errno, socket, sys\ns = socket.socket()\ns.settimeout(5)\n"
            "try:\n    s.connect(('127.0.0.1', int(sys.argv[1])))\n    print('ok')\n"
            "except OSError as err:\n    print(errno.errorcode.get(err.errno, str(err)))\n")
    result = subprocess.run(["nsenter", f"--net={net_ns}", "--", sys.executable, "-c", code,
                             str(port)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_fuse_program_runs_entirely_as_the_caller(daemon: Daemon, nodeprobe: Path,
                                                  mountprobe: Path, image: Image) -> None:
    require_tools("fuse2fs", "nsenter")
    with box_for(daemon, nodeprobe, mountprobe, image, profile="fuse",
                 keys={"mount": "true"}) as box:
        box.sh("mkdir -p /mnt/f; mknod /dev/fuse c 10 229")
        install_with_libraries(box, "fuse2fs")
        init = box.init_pid()
        # What a child of the caller inherits, set away from the defaults: nice 5,
        # CPU 0 only, best-effort I/O level 6, an ambient capability and the
        # 32-bit personality (the mount is made by mountprobe, their child).
        inherits = ("renice -n 5 -p $$ >/dev/null; taskset -p 1 $$ >/dev/null; "
                    "ionice -c 2 -n 6 -p $$; setpriv --inh-caps +net_bind_service "
                    "--ambient-caps +net_bind_service linux32 ")
        with held_shell(box, inherits + "/bin/mountprobe mount /blk/disk /mnt/f ext4 1 -"
                        ) as (caller, said):
            try:
                assert said.strip() == "ok", daemon.log()[-3000:]
                pid_ns = os.readlink(f"/proc/{init}/ns/pid")
                programs = [int(p) for p in os.listdir("/proc") if p.isdigit()
                            and _comm(p) == "fuse2fs" and _pid_ns(p) == pid_ns]
                assert len(programs) == 1, programs
                program = programs[0]
                for ns in NAMESPACES:
                    assert os.readlink(f"/proc/{program}/ns/{ns}") == \
                        os.readlink(f"/proc/{caller}/ns/{ns}"), ns
                # Every line, v1 and v2 (the attached caller's v2 cgroup is ".lxc").
                assert Path(f"/proc/{program}/cgroup").read_text() == \
                    Path(f"/proc/{caller}/cgroup").read_text()
                theirs, callers = status_fields(program), status_fields(caller)
                assert theirs["CapBnd"] == callers["CapBnd"]
                assert theirs["Seccomp"] == "2"  # SECCOMP_MODE_FILTER
                assert theirs["NoNewPrivs"] == callers["NoNewPrivs"]
                assert theirs["Uid"].split() == [str(CONTAINER_ROOT)] * 4
                assert theirs["Cpus_allowed_list"] == "0"
                assert int(theirs["CapAmb"], 16) == 1 << 10  # CAP_NET_BIND_SERVICE
                stat_fields = Path(f"/proc/{program}/stat").read_text().rsplit(")", 1)[1].split()
                assert int(stat_fields[16]) == 5  # nice (field 19 of stat)
                assert kernel.ioprio_get(program) == 2 << 13 | 6
                assert Path(f"/proc/{program}/personality").read_text().strip() == "00000008"
                # It reaches nothing of the host's network: a host listener on
                # 127.0.0.1 that the host itself reaches.
                with socket.socket() as listener:
                    listener.bind(("127.0.0.1", 0))
                    listener.listen(4)
                    port = listener.getsockname()[1]
                    assert connect_from(f"/proc/{os.getpid()}/ns/net", port) == "ok"
                    assert connect_from(f"/proc/{program}/ns/net", port) != "ok"
            finally:
                box.sh("umount /mnt/f 2>/dev/null; true")


def _comm(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _pid_ns(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


# --- 2. a v1 deny exception, for mknod ------------------------------------------------------


def test_a_deny_exception_of_the_device_cgroup_holds_for_mknod(
        daemon: Daemon, nodeprobe: Path, mountprobe: Path, tmp_path: Path) -> None:
    config = f"{DEVICES}.allow = a\n{DEVICES}.deny = c 1:5 rwm\n"
    with box_for(daemon, nodeprobe, mountprobe, extra_config=config) as box:
        init = box.init_pid()
        # The kernel's answer for a task in the container's cgroups.
        assert kernel_mknod(init, tmp_path, "c", 1, 5) == "EPERM"
        assert kernel_mknod(init, tmp_path, "c", 1, 3) == "ok"
        zero, null = f"/tmp/{unique('z')}", f"/tmp/{unique('n')}"
        assert box.probe("mknod", zero, "c", "1", "5") == "EPERM", daemon.log()[-3000:]
        assert box.probe("stat", zero) == "ENOENT"
        assert box.probe("mknod", null, "c", "1", "3") == "ok"
        assert box.probe("stat", null).endswith("major 1 minor 3")


def test_a_deny_exception_of_the_device_cgroup_holds_for_mount(
        daemon: Daemon, nodeprobe: Path, mountprobe: Path, image: Image) -> None:
    major, minor = os.major(image.rdev), os.minor(image.rdev)
    config = f"{DEVICES}.allow = a\n{DEVICES}.deny = b {major}:{minor} rwm\n"
    with box_for(daemon, nodeprobe, mountprobe, image, keys=MOUNT_KEYS,
                 extra_config=config) as box:
        assert kernel_answer(box.init_pid(), "read", image.loop) == "EPERM"
        where = target(box)
        assert mp(box, "mount", "/blk/disk", where, "ext4", str(MS_RDONLY), "-") == "EPERM", \
            daemon.log()[-3000:]
        assert "root_file" not in box.sh(f"ls {where}")


# --- 3. a read-only device rule, for mount ----------------------------------------------------


def test_a_read_only_device_rule_holds_for_a_mount_that_says_rw(
        daemon: Daemon, nodeprobe: Path, mountprobe: Path, image: Image) -> None:
    major, minor = os.major(image.rdev), os.minor(image.rdev)
    config = f"{DEVICES}.deny = a\n" + "".join(
        f"{DEVICES}.allow = {device} rwm\n" for device in DEFAULT_CHARS)
    config += f"{DEVICES}.allow = b {major}:{minor} r\n"
    before = digest(image.path)
    with box_for(daemon, nodeprobe, mountprobe, image, keys=MOUNT_KEYS,
                 extra_config=config) as box:
        init = box.init_pid()
        assert kernel_answer(init, "readwrite", image.loop) == "EPERM"
        assert kernel_answer(init, "read", image.loop) == "ok"
        where = target(box)
        # MS_RDONLY, then "rw" in the data: the superblock would be read-write.
        assert mp(box, "mount", "/blk/disk", where, "ext4", str(MS_RDONLY), "rw") == "EPERM", \
            daemon.log()[-3000:]
        assert "root_file" not in box.sh(f"ls {where}")
        assert mp(box, "mount", "/blk/disk", where, "ext4", str(MS_RDONLY), "-") == "ok"
        try:
            assert "ro" in mount_options(box, where)
            assert "root_file" in box.sh(f"ls {where}")
            # Attempts to write anyway: a remount read-write, then a file.
            mp(box, "mount", "-", where, "-", str(MS_REMOUNT), "-")
            box.sh(f"echo x > {where}/written 2>/dev/null; true")
        finally:
            mp(box, "umount", where)
    assert digest(image.path) == before, "the host saw a write to a read-only device"


# --- 4. stored errors=panic ------------------------------------------------------------------


def _options_file(loop: str) -> Path:
    return Path("/proc/fs/ext4") / Path(loop).name / "options"


def option_words(text: str) -> list[str]:
    """/proc/fs/ext4/*/options has one option a line."""
    return text.replace(",", "\n").split()


def host_mount_options(loop: str) -> str:
    """The options a plain host mount of ``loop`` gets (in a private mount namespace)."""
    where = tempfile.mkdtemp(prefix="ctx-host-")
    try:
        return subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             'mount -t ext4 -o ro "$0" "$1" && cat "$2"; status=$?; umount "$1"; exit $status',
             loop, where, str(_options_file(loop))],
            check=True, capture_output=True, text=True, timeout=60).stdout
    finally:
        os.rmdir(where)


@pytest.mark.parametrize("tune", [("-e", "panic"), ("-E", "mount_opts=errors=panic")],
                         ids=["errors-behaviour", "mount-opts"])
def test_stored_errors_panic_is_overridden(daemon: Daemon, nodeprobe: Path, mountprobe: Path,
                                           tmp_path: Path, tune: tuple[str, ...]) -> None:
    with made_image(tmp_path, tune=tune) as panicky:
        # The kernel applies what the superblock stores to a plain mount.
        assert "errors=panic" in option_words(host_mount_options(panicky.loop))
        with box_for(daemon, nodeprobe, mountprobe, panicky, keys=MOUNT_KEYS) as box:
            where = target(box)
            assert mp(box, "mount", "/blk/disk", where, "ext4", "0", "-") == "ok", \
                daemon.log()[-3000:]
            try:
                options = option_words(_options_file(panicky.loop).read_text())
                assert "errors=remount-ro" in options, options
                assert "errors=panic" not in options, options
            finally:
                mp(box, "umount", where)


# --- 5. a cgroup v2 device program -------------------------------------------------------------


def test_a_cgroup_v2_device_program_holds_for_mknod_and_mount(
        daemon: Daemon, nodeprobe: Path, mountprobe: Path, image: Image, tmp_path: Path) -> None:
    major, minor = os.major(image.rdev), os.minor(image.rdev)
    with box_for(daemon, nodeprobe, mountprobe, image, keys=MOUNT_KEYS) as box:
        init = box.init_pid()
        cgroup = unified_dir(init)
        require(cgroup.is_dir(), f"the container's v2 cgroup {cgroup}")
        # Without the program the kernel allows both.
        assert kernel_mknod(init, tmp_path, "c", 1, 5) == "ok"
        assert kernel_answer(init, "read", image.loop) == "ok"
        with bpfdev.attached(str(cgroup), [(bpfdev.DEVCG_DEV_CHAR, 1, 5),
                                           (bpfdev.DEVCG_DEV_BLOCK, major, minor)]):
            assert kernel_mknod(init, tmp_path, "c", 1, 5) == "EPERM"
            assert kernel_mknod(init, tmp_path, "c", 1, 3) == "ok"
            assert kernel_answer(init, "read", image.loop) == "EPERM"
            zero = f"/tmp/{unique('z')}"
            assert box.probe("mknod", zero, "c", "1", "5") == "EPERM", daemon.log()[-3000:]
            assert box.probe("stat", zero) == "ENOENT"
            assert box.probe("mknod", f"/tmp/{unique('n')}", "c", "1", "3") == "ok"
            where = target(box)
            assert mp(box, "mount", "/blk/disk", where, "ext4", str(MS_RDONLY), "-") == "EPERM"
            assert "root_file" not in box.sh(f"ls {where}")
        # Detached: both work again (the program was the reason).
        assert box.probe("mknod", zero, "c", "1", "5") == "ok"
        assert mp(box, "mount", "/blk/disk", where, "ext4", str(MS_RDONLY), "-") == "ok"
        mp(box, "umount", where)


# --- 6. locked flags --------------------------------------------------------------------------


def test_forced_flags_stay_and_the_mount_can_still_be_unmounted(
        daemon: Daemon, nodeprobe: Path, mountprobe: Path, tmp_path: Path) -> None:
    dropping_nodev = str(MS_REMOUNT | MS_BIND | MS_NOSUID)
    dropping_both = str(MS_REMOUNT | MS_BIND)
    with made_image(tmp_path, node=True) as noded, \
            box_for(daemon, nodeprobe, mountprobe, noded,
                    keys={**MOUNT_KEYS, "mount.shift": "true"}) as box:
        # The kernel's answer for a mount whose flags are not locked: container
        # root's own tmpfs, mounted nodev, may drop nodev both ways.  Under LXC's
        # AppArmor profile (the real-hosts tier) the kernel refuses container
        # root's remounts and binds first (EACCES, before any flag is looked
        # at); mount_setattr has no AppArmor hook, so there it alone shows the lock.
        confined = APPARMOR_PROFILE != "unconfined"
        refused = {"EPERM", "EACCES"} if confined else {"EPERM"}
        own = target(box)
        assert mp(box, "mount", "none", own, "tmpfs", str(MS_NODEV | MS_NOSUID), "-") == "ok"
        if confined:
            assert mp(box, "mount", "-", own, "-", dropping_nodev, "-") == "EACCES"
        else:
            assert mp(box, "mount", "-", own, "-", dropping_nodev, "-") == "ok"
            assert "nodev" not in mount_options(box, own)
        assert mp(box, "setattr", own, str(MOUNT_ATTR_NODEV), "0") == "ok"
        assert mp(box, "setattr", own, "0", str(MOUNT_ATTR_NODEV)) == "ok"
        assert mp(box, "umount", own) == "ok"

        where, bind = target(box), target(box)
        assert mp(box, "mount", "/blk/disk", where, "ext4", "0", "-") == "ok", \
            daemon.log()[-3000:]
        try:
            assert {"nosuid", "nodev"} <= mount_options(box, where)
            assert box.probe("stat", f"{where}/null").endswith("major 1 minor 3")
            assert box.probe("open", f"{where}/null") == "EACCES"
            assert mp(box, "mount", "-", where, "-", dropping_nodev, "-") in refused
            assert mp(box, "mount", "-", where, "-", dropping_both, "-") in refused
            assert mp(box, "setattr", where, "0", str(MOUNT_ATTR_NODEV)) == "EPERM"
            assert mp(box, "setattr", where, "0", str(MOUNT_ATTR_NOSUID)) == "EPERM"
            bound = mp(box, "mount", where, bind, "-", str(MS_BIND), "-")
            assert bound == "ok" or (confined and bound == "EACCES"), bound
            paths = (where, bind) if bound == "ok" else (where,)
            if bound == "ok":
                assert mp(box, "mount", "-", bind, "-", dropping_nodev, "-") in refused
                assert mp(box, "setattr", bind, "0", str(MOUNT_ATTR_NODEV)) == "EPERM"
            for path in paths:
                assert {"nosuid", "nodev"} <= mount_options(box, path), path
                assert box.probe("open", f"{path}/null") == "EACCES", path
            if bound == "ok":
                assert mp(box, "umount", bind) == "ok"
        finally:
            unmounted = mp(box, "umount", where)
        assert unmounted == "ok"
        assert "root_file" not in box.sh(f"ls {where}")
