"""Mount emulation in real unprivileged containers: real loop devices, ext4 made by mkfs.

One image holds files owned by 0 and by 1000; its loop device is given to
the containers as a node in their rootfs (owned by the container's root, as
an admin would hand a device over).  The main container turns mount on with
LXD's keys (``security.syscalls.intercept.mount``, ``.mount.allowed ext4``,
``.mount.shift true``); others check the device cgroup and the FUSE redirect.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lxc_notify_plugin.tools.sandbox import APPARMOR_PROFILE
from tests.conftest import require, require_tools
from tests.lxc.conftest import DEVICES, Container, Daemon

KEY = "security.syscalls.intercept."
CONTAINER_ROOT = 100000  # lxc.idmap u 0 100000 65536


def unique(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Image:
    path: Path
    loop: str  # /dev/loopN on the host
    rdev: int


@pytest.fixture(scope="module")
def image(lxc_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    require_tools("mkfs.ext4", "losetup")
    work = tmp_path_factory.mktemp("image")
    content = work / "content"
    content.mkdir()
    (content / "root_file").write_text("root's\n")
    (content / "user_file").write_text("user's\n")
    os.chown(content / "user_file", 1000, 1000)
    path = work / "ext4.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(path), "16M"], check=True)
    with loop_device(path) as made:
        yield made


@contextlib.contextmanager
def loop_device(path: Path) -> Iterator[Image]:
    """The image file ``path`` on a loop device of its own, detached afterwards."""
    loop = subprocess.run(["losetup", "-f", "--show", str(path)], check=True,
                          capture_output=True, text=True).stdout.strip()
    try:
        yield Image(path, loop, os.stat(loop).st_rdev)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)


def give_device(box: Container, image: Image, name: str = "disk") -> str:
    """The loop device as a node in the container's rootfs, owned by its root."""
    node = box.rootfs / "blk" / name
    node.parent.mkdir(exist_ok=True)
    os.mknod(node, 0o660 | 0o060000, image.rdev)
    os.chown(node, CONTAINER_ROOT, CONTAINER_ROOT)
    return f"/blk/{name}"


def mount_container(daemon: Daemon, nodeprobe: Path, mountprobe: Path, image: Image, *,
                    profile: str = "default", keys: dict[str, str], extra_config: str = ""
                    ) -> Container:
    box = Container()
    box.daemon = daemon
    try:
        box.create(extra_config)
        box.install(nodeprobe, "/bin/nodeprobe")
        box.install(mountprobe, "/bin/mountprobe")
        give_device(box, image)
        daemon.cli("enable", box.name, "--profile", profile)
        for key, value in keys.items():
            daemon.cli("config", "set", box.name, KEY + key, value)
        box.start()
    except BaseException:
        box.destroy()
        raise
    return box


SHIFTED = {"mount": "true", "mount.allowed": "ext4", "mount.shift": "true"}


@pytest.fixture(scope="module")
def box(daemon: Daemon, nodeprobe: Path, mountprobe: Path, image: Image) -> Iterator[Container]:
    """The module's container: no test changes its keys (one that does has its own)."""
    container = mount_container(daemon, nodeprobe, mountprobe, image, keys=SHIFTED)
    try:
        yield container
    finally:
        container.destroy()


def mp(box: Container, *args: str, uid: int = 0) -> str:
    # mountprobe, like nodeprobe, exits 0 whatever its calls answer and changes
    # nothing when they fail: an unsupervised run of LXC's making is retried.
    return box.attach("/bin/mountprobe", *args, uid=uid, gid=uid,
                      idempotent_unsupervised=True).strip()


def target(box: Container) -> str:
    path = f"/mnt/{unique()}"
    box.sh(f"mkdir -p {path}")
    return path


def owners(box: Container, path: str) -> dict[str, tuple[int, int]]:
    found = {}
    for line in box.sh(f"ls -ln {path}").splitlines():
        parts = line.split()
        if len(parts) >= 9:
            found[parts[-1]] = (int(parts[2]), int(parts[3]))
    return found


def mount_options(box: Container, path: str) -> set[str]:
    for line in box.sh("cat /proc/self/mountinfo").splitlines():
        fields = line.split()
        if fields[4] == path:
            return set(fields[5].split(","))
    raise AssertionError(f"{path} is not a mount point in {box.name}")


def umount(box: Container, path: str) -> None:
    assert mp(box, "umount", path) == "ok"


def test_shifted_mount_shows_the_images_owners(box: Container) -> None:
    where = target(box)
    box.sh(f"mount -t ext4 /blk/disk {where}")  # busybox mount(8): mount(2)
    try:
        seen = owners(box, where)
        assert seen["root_file"] == (0, 0)
        assert seen["user_file"] == (1000, 1000)
        # Container root writes as root: the host sees the container's root.
        box.sh(f"echo new > {where}/written")
        host_view = Path(f"/proc/{box.init_pid()}/root{where}/written")
        assert host_view.stat().st_uid == CONTAINER_ROOT
        assert {"nosuid", "nodev"} <= mount_options(box, where)
    finally:
        umount(box, where)
    assert "root_file" not in box.sh(f"ls {where}")


def test_raw_mount_with_rdonly_and_the_ebusy_of_a_second_flavour(box: Container) -> None:
    first, second = target(box), target(box)
    assert mp(box, "mount", "/blk/disk", first, "ext4", "0", "-") == "ok"
    try:
        # The same superblock read-only while it is mounted read-write: the kernel's EBUSY.
        assert mp(box, "mount", "/blk/disk", second, "ext4", str(1), "-") == "EBUSY"
    finally:
        umount(box, first)
    assert mp(box, "mount", "/blk/disk", second, "ext4", "1", "-") == "ok"  # MS_RDONLY
    try:
        assert "ro" in mount_options(box, second)
        assert box.attach("/bin/nodeprobe", "open", f"{second}/root_file").strip() != ""
        out = box.sh(f"touch {second}/x 2>&1; echo $?")
        assert "Read-only file system" in out
    finally:
        umount(box, second)


def test_sources_that_are_refused(box: Container) -> None:
    where = target(box)
    box.sh("echo x > /tmp/plain; ln -sf /dev/loop0 /tmp/host-loop; "
           "ln -sf /../../../../dev/loop0 /tmp/climbing-loop")
    assert mp(box, "mount", "/tmp/plain", where, "ext4", "0", "-") == "ENOTBLK"
    # Symlinks resolve in the container's root: the host's /dev/loop0 is not there.
    assert mp(box, "mount", "/tmp/host-loop", where, "ext4", "0", "-") == "ENOENT"
    assert mp(box, "mount", "/tmp/climbing-loop", where, "ext4", "0", "-") == "ENOENT"
    assert mp(box, "mount", "/nonexistent", where, "ext4", "0", "-") == "ENOENT"
    # Options naming host devices or paths are ours to refuse.
    assert mp(box, "mount", "/blk/disk", where, "ext4", "0", "journal_path=/dev/sda") == "EPERM"
    assert mp(box, "mount", "/blk/disk", where, "ext4", "0", "errors=panic") == "EPERM"
    # A bad option is the filesystem's own EINVAL.
    assert mp(box, "mount", "/blk/disk", where, "ext4", "0", "no_such_option") == "EINVAL"


def test_a_target_through_a_symlink_lands_inside(box: Container) -> None:
    name = unique("t")
    host_twin = Path("/tmp") / name  # same name on the host: must stay empty
    host_twin.mkdir()
    try:
        box.sh(f"mkdir /tmp/{name}; ln -s /../../../../tmp/{name} /tmp/{name}-link")
        assert mp(box, "mount", "/blk/disk", f"/tmp/{name}-link", "ext4", "0", "-") == "ok"
        try:
            assert "root_file" in box.sh(f"ls /tmp/{name}")
            assert list(host_twin.iterdir()) == []
        finally:
            umount(box, f"/tmp/{name}")
    finally:
        host_twin.rmdir()


def test_a_nested_mount_namespace_gets_the_mount(box: Container) -> None:
    where = target(box)
    assert mp(box, "nested", "/blk/disk", where, "ext4", "0", "root_file") == \
        "ok seen-here absent-there"
    assert "root_file" not in box.sh(f"ls {where}")


def test_what_stays_with_the_kernel(box: Container) -> None:
    where = target(box)
    assert mp(box, "mount", "none", where, "tmpfs", "0", "size=1m") == "ok"
    umount(box, where)
    # LXC 6.0's AppArmor profile refuses proc anywhere but /proc: the kernel's answer.
    proc = mp(box, "mount", "proc", where, "proc", "0", "-")
    assert proc == "ok" or (APPARMOR_PROFILE != "unconfined" and proc == "EACCES"), proc
    if proc == "ok":
        umount(box, where)
    box.sh("mkdir -p /tmp/bind-src")
    assert mp(box, "mount", "/tmp/bind-src", where, "-", str(4096), "-") == "ok"  # MS_BIND
    umount(box, where)
    assert mp(box, "fsopen", "tmpfs") == "ok"
    assert mp(box, "openat2", "/etc/passwd") == "ok"
    # The filesystems we emulate answer ENOSYS in fsopen: mount(8) falls back to mount(2).
    assert mp(box, "fsopen", "ext4") == "ENOSYS"
    # A filesystem the policy does not list gets the kernel's answer: EPERM from
    # the container's AppArmor profile, or for a filesystem that cannot be
    # mounted in a user namespace (the kernel may load xfs's module on the call);
    # ENODEV where xfs is not in this kernel at all.
    answer = mp(box, "mount", "/blk/disk", where, "xfs", "0", "-")
    if APPARMOR_PROFILE != "unconfined":  # its hook answers first (LXC 6.0: EACCES)
        assert answer in ("EPERM", "EACCES"), answer
    else:
        known = "xfs" in Path("/proc/filesystems").read_text()
        assert answer == ("EPERM" if known else "ENODEV")


def test_a_user_without_cap_sys_admin_is_refused(box: Container) -> None:
    where = target(box)
    box.sh(f"chmod 777 {where}")
    # Handed back to the kernel, whose AppArmor hook (LXC 6.0's profile) may answer first.
    refused = {"EPERM", "EACCES"} if APPARMOR_PROFILE != "unconfined" else {"EPERM"}
    assert mp(box, "mount", "/blk/disk", where, "ext4", "0", "-", uid=1000) in refused
    assert mp(box, "fsopen", "ext4", uid=1000) in refused
    # Root of a user namespace nested in the container holds nothing in the container's.
    nested = box.sh(f"unshare -U -r /bin/mountprobe mount /blk/disk {where} ext4 0 -")
    assert nested.strip() in refused


def test_without_shift_the_policy_is_honoured(daemon: Daemon, nodeprobe: Path,
                                              mountprobe: Path, image: Image) -> None:
    """A live key, turned off on a running container of the test's own: the module's
    box, left unshifted by a failure here, would have failed the tests after it."""
    box = mount_container(daemon, nodeprobe, mountprobe, image, keys=SHIFTED)
    try:
        said = daemon.cli("config", "set", box.name, KEY + "mount.shift", "false").stdout
        assert "applied to the running supervisor" in said, said
        where = target(box)
        assert mp(box, "mount", "/blk/disk", where, "ext4", str(1), "-") == "ok"
        try:
            assert owners(box, where)["root_file"] == (65534, 65534)
        finally:
            umount(box, where)
    finally:
        box.destroy()


def test_the_device_cgroup_decides(daemon: Daemon, nodeprobe: Path, mountprobe: Path,
                                   image: Image) -> None:
    allowed = ("c 1:3", "c 1:5", "c 1:7", "c 1:8", "c 1:9", "c 5:0", "c 5:1", "c 5:2",
               "c 136:*")
    config = f"{DEVICES}.deny = a\n" + "".join(
        f"{DEVICES}.allow = {device} rwm\n" for device in allowed)
    denied = mount_container(daemon, nodeprobe, mountprobe, image, extra_config=config,
                             keys={"mount": "true", "mount.allowed": "ext4"})
    try:
        denied.sh("mkdir -p /mnt/t")
        assert mp(denied, "mount", "/blk/disk", "/mnt/t", "ext4", "1", "-") == "EPERM"
    finally:
        denied.destroy()


def install_with_libraries(box: Container, program: str) -> None:
    """A host program and the shared libraries it links, into the container's rootfs."""
    path = shutil.which(program)
    require(path is not None, f"{program} on the host")
    assert path is not None
    box.install(path, f"/usr/sbin/{program}")
    out = subprocess.run(["ldd", path], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        library = next((part for part in line.split() if part.startswith("/")), None)
        if library is not None:
            box.install(library, library, 0o755)


def test_fuse_redirect_runs_fuse2fs_in_the_container(daemon: Daemon, nodeprobe: Path,
                                                     mountprobe: Path, image: Image) -> None:
    require_tools("fuse2fs")
    box = mount_container(daemon, nodeprobe, mountprobe, image, profile="fuse",
                          keys={"mount": "true"})
    try:
        box.sh("mkdir -p /dev/fuse-dir /mnt/f; mknod /dev/fuse c 10 229")
        # Without the program in the container: ENODEV, and the log says which.
        assert mp(box, "mount", "/blk/disk", "/mnt/f", "ext4", "1", "-") == "ENODEV", \
            daemon.log()[-3000:]
        assert "fuse2fs" in daemon.log()
        install_with_libraries(box, "fuse2fs")
        assert mp(box, "mount", "/blk/disk", "/mnt/f", "ext4", "1", "-") == "ok"
        try:
            assert "root_file" in box.sh("ls /mnt/f")
            assert "fuse" in box.sh("grep ' /mnt/f ' /proc/self/mountinfo")
            # It runs in the container: its pid namespace and cgroups, as its root.
            assert "fuse2fs" in box.sh("ps")
            init = box.init_pid()
            program = next(pid for pid in os.listdir("/proc") if pid.isdigit()
                           and Path(f"/proc/{pid}/comm").read_text().strip() == "fuse2fs"
                           and os.readlink(f"/proc/{pid}/ns/pid")
                           == os.readlink(f"/proc/{init}/ns/pid"))
            # The caller's cgroups (lxc-attach's ".lxc" below the container's).
            theirs = Path(f"/proc/{program}/cgroup").read_text().splitlines()
            containers = Path(f"/proc/{init}/cgroup").read_text().splitlines()
            assert len(theirs) == len(containers)
            assert all(t.startswith(c) for t, c in zip(theirs, containers, strict=True))
            assert os.stat(f"/proc/{program}").st_uid == CONTAINER_ROOT
        finally:
            box.sh("umount /mnt/f")
    finally:
        box.destroy()
