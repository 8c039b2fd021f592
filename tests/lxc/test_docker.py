"""Docker inside a supervised unprivileged container, on device nodes the supervisor made.

Debian's docker.io runs in an unprivileged Debian bookworm container under the
``docker`` profile.  The container makes /dev/fuse and /dev/net/tun itself,
with mknod, through us; dockerd then stores its layers with fuse-overlayfs on
that /dev/fuse, builds an image whose last layer deletes a file (a whiteout),
and passes both nodes into its own containers with ``--device``, which runc
does by bind-mounting them: that works only because the usable twin we bind
over each node keeps its name in the daemon's store (handlers/nodes.py).

The root filesystem comes from debootstrap once, then from a tar cached in
/var/cache/lxc-notify-tests/, its owners already shifted into the container's
idmap; each run extracts it into a container of its own, destroyed at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxc_notify_plugin.tools.sandbox import SandboxError, ensure_subordinate_ids
from tests.conftest import require, require_tools
from tests.lxc.conftest import PURE_V2, Container, Daemon

SUITE = "bookworm"
PACKAGES = ("docker.io", "containerd", "runc", "fuse-overlayfs", "fuse3", "iproute2", "tini")
CACHE = Path("/var/cache/lxc-notify-tests")
SHIFT = 100000  # the idmap below, as in tools/sandbox.py: 0 inside is 100000 outside
IDS = 65536
# Left out of the cache: the container mounts its own /dev, /proc, /sys and
# /run, and apt's downloads and lists are a quarter of the tree, never used here.
EMPTIED = {"dev", "proc", "sys", "run", "var/cache/apt/archives", "var/lib/apt/lists"}

CONFIG = """\
lxc.include = /usr/share/lxc/config/common.conf
lxc.include = /usr/share/lxc/config/userns.conf
lxc.include = /usr/share/lxc/config/nesting.conf
# After nesting.conf, which asks for an AppArmor profile this host may not load.
lxc.apparmor.profile = unconfined
lxc.net.0.type = empty
lxc.idmap = u 0 {shift} {ids}
lxc.idmap = g 0 {shift} {ids}
# "force": without it LXC mounts no cgroup hierarchy for an unprivileged
# container here, and dockerd's cgroupfs driver needs writable v1 hierarchies.
lxc.mount.auto = cgroup:rw:force
lxc.mount.entry = tmpfs run tmpfs rw,nosuid,nodev,mode=0755,create=dir 0 0
lxc.init.cmd = /usr/bin/tini -- sleep infinity
"""

# fuse-overlayfs is named: left to choose, Docker 20.10 takes overlay2 with
# "userxattr" on this kernel, which needs no /dev/fuse.  No networking (the
# container has none); the cgroupfs driver, as there is no systemd inside.
DOCKERD = ("dockerd --storage-driver fuse-overlayfs --bridge none --iptables=false "
           "--ip6tables=false --exec-opt native.cgroupdriver=cgroupfs")
DOCKERD_LOG = "/var/log/dockerd.log"
# On a cgroup v2 host (Debian 12 and 13), the container's cgroup is a domain whose
# processes keep its controllers from being enabled for children (the "no internal
# processes" rule); as docker's own dind script does, they move to a leaf first, so
# dockerd's /docker/<id> cgroups get memory, pids and the rest.  LXC then attaches
# into a leaf of its own (.lxc) as it does for any container whose cgroup has children.
CGROUP2_LEAF = (
    "cd /sys/fs/cgroup && mkdir -p init && "
    "for pid in $(cat cgroup.procs); do echo $pid > init/cgroup.procs 2>/dev/null; done; "
    "sed -e 's/ / +/g' -e 's/^/+/' cgroup.controllers > cgroup.subtree_control && "
    "cat cgroup.subtree_control")
BASE_IMAGE, IMAGE = "lxcn-busybox", "lxcn-whiteout"
DOCKERFILE = f"""\
FROM {BASE_IMAGE}
RUN mkdir /data && echo lower > /data/gone && echo kept > /data/kept
RUN rm /data/gone
"""


def apt_mirror() -> str | None:
    """The first apt source serving SUITE's main archive (not -security or -updates)."""
    sources = Path("/etc/apt/sources.list.d")
    files = [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list")),
             *sorted(sources.glob("*.sources"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix == ".sources":
            # deb822: blank-line separated stanzas of "Key: value".
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = dict(
                    re.findall(r"^([\w-]+):\s*(.*)$", stanza, re.MULTILINE))
                if ("deb" in fields.get("Types", "").split()
                        and SUITE in fields.get("Suites", "").split()
                        and "main" in fields.get("Components", "").split()):
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 4 and words[0] == "deb" and words[2] == SUITE \
                        and "main" in words[3:]:
                    return words[1]
    return None


def rootfs_tar() -> Path:
    """The cached, shifted root filesystem; made on first use, by one process at a time."""
    key = hashlib.sha256(f"{SUITE} {sorted(PACKAGES)} {SHIFT} {sorted(EMPTIED)}".encode())
    tar = CACHE / f"docker-{SUITE}-{key.hexdigest()[:12]}.tar"
    if tar.exists():
        return tar
    require_tools("debootstrap", "tar")
    mirror = apt_mirror()
    require(mirror is not None, f"an apt source for Debian {SUITE} main (debootstrap's mirror)")
    assert mirror is not None
    CACHE.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be making it right now
        if not tar.exists():
            for left in CACHE.glob("debootstrap-*"):
                # A build killed halfway, perhaps with debootstrap's mounts still on.
                _unmount_under(left)
                shutil.rmtree(left, ignore_errors=True)
            for left in CACHE.glob("*.tmp"):
                left.unlink()
            _build(tar, mirror)
    return tar


def _build(tar: Path, mirror: str) -> None:
    tree = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE))
    partial = tar.with_name(f"{tar.name}.{os.getpid()}.tmp")
    try:
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
             str(tree / "rootfs"), mirror],
            capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
        require(result.returncode == 0, f"debootstrap {SUITE} from {mirror} (exit "
                f"{result.returncode}): {(result.stdout + result.stderr)[-1500:]}")
        with tarfile.open(partial, "w") as out:
            out.add(tree / "rootfs", arcname=".", filter=_shifted)
        os.rename(partial, tar)  # whole or absent, for a run killed halfway
        for stale in CACHE.glob(f"docker-{SUITE}-*.tar"):
            if stale != tar:
                stale.unlink()  # made for other packages or filters: never used again
    finally:
        _unmount_under(tree)  # debootstrap mounts /proc and /sys, and may die holding them
        shutil.rmtree(tree, ignore_errors=True)
        partial.unlink(missing_ok=True)


def _shifted(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Owners as the container's idmap shows them (setuid bits and all kept), by number."""
    name = info.name.removeprefix("./")
    if os.path.dirname(name) in EMPTIED:
        return None
    assert info.uid < IDS and info.gid < IDS, f"{name}: owner outside the idmap"
    info.uid += SHIFT
    info.gid += SHIFT
    info.uname = info.gname = ""
    return info


def _unmount_under(tree: Path) -> None:
    prefix = str(tree.resolve()) + "/"
    with open("/proc/self/mountinfo") as mounts:
        # Field 5 is the mount point, with spaces and the like octal-escaped.
        points = [line.split()[4].encode().decode("unicode_escape") for line in mounts]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


class DockerHost(Container):
    """A bookworm container with Docker installed, from the cached root filesystem."""

    def create(self, extra_config: str = "") -> DockerHost:
        ensure_subordinate_ids()
        config = CONFIG.format(rootfs=self.rootfs, shift=SHIFT, ids=IDS) + extra_config
        with tempfile.NamedTemporaryFile("w", suffix=".conf") as conf:
            conf.write(config)
            conf.flush()
            result = subprocess.run(
                ["lxc-create", "-n", self.name, "-P", self.lxc_path, "-t", "none", "-f",
                 conf.name], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        self._created = True
        if result.returncode != 0:
            raise SandboxError(f"lxc-create {self.name} failed: {result.stderr.strip()}")
        # Given to lxc-create, the path would have to exist before the directory
        # lxc-create makes for it.
        with self.config_file.open("a") as config_file:
            config_file.write(f"lxc.rootfs.path = dir:{self.rootfs}\n")
        return self

    def destroy(self) -> None:
        super().destroy()
        # A failed lxc-create leaves a directory without a config, which
        # lxc-destroy refuses ("not defined").
        directory = self.config_file.parent
        if directory.is_dir() and not self.config_file.exists():
            shutil.rmtree(directory)

    def extract(self, tar: Path) -> None:
        self.rootfs.mkdir(exist_ok=True)
        # A few seconds here; the limit is for a guest under TCG on a slow host, where
        # 400 MB took over 300 s.
        subprocess.run(["tar", "--numeric-owner", "-xpf", str(tar), "-C", str(self.rootfs)],
                       check=True, timeout=1200)

    def put(self, path: str, data: bytes) -> None:
        """A file owned by the container's root, written from the host."""
        target = self.rootfs / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.chown(target.parent, SHIFT, SHIFT)
        os.chown(target, SHIFT, SHIFT)

    def docker(self, script: str, timeout: float = 300) -> str:
        # lxc-attach --clear-env leaves no HOME, where the docker client keeps its
        # config; the classic builder is named, as BuildKit would want a network.
        return self.attach("/bin/sh", "-c", f"export HOME=/root DOCKER_BUILDKIT=0; {script}",
                           timeout=timeout)

    def mknod(self, path: str, major: int, minor: int) -> None:
        """mknod(1) inside; a run LXC left unsupervised (ENOSYS, nothing made) is retried."""
        script = (f"mkdir -p {os.path.dirname(path)} && "
                  f"mknod {path} c {major} {minor} 2>/tmp/mknod.err || "
                  "{ grep -q 'Function not implemented' /tmp/mknod.err && echo ENOSYS; "
                  "cat /tmp/mknod.err; exit 1; }")
        self.attach("/bin/sh", "-c", script, idempotent_unsupervised=True)

    def mount_root(self, mount_point: str) -> str | None:
        """The root field of the container's mount on ``mount_point`` (mountinfo), if any."""
        for line in self.sh("cat /proc/self/mountinfo").splitlines():
            fields = line.split()
            if fields[4] == mount_point:
                return fields[3]
        return None


@pytest.fixture
def docker_host(daemon: Daemon) -> Iterator[DockerHost]:
    require(Path("/sys/class/misc/fuse").exists(), "FUSE in the host's kernel (/dev/fuse)")
    # Stock Debian builds tun as a module that nothing has loaded yet: load it, as an
    # admin would for Docker's networking.
    if not Path("/sys/class/misc/tun").exists() and shutil.which("modprobe"):
        subprocess.run(["modprobe", "tun"], capture_output=True, check=False)
    require(Path("/sys/class/misc/tun").exists(), "tun in the host's kernel (/dev/net/tun)")
    require(shutil.which("busybox") is not None, "busybox (busybox-static)")
    tar = rootfs_tar()
    host = DockerHost(prefix="lxcnotify-docker")
    host.daemon = daemon
    try:
        host.create()
        host.extract(tar)
        daemon.cli("enable", host.name, "--profile", "docker")
        host.start()
        yield host
    finally:
        # lxc-stop -k takes dockerd, fuse-overlayfs and their mounts with the
        # container's namespaces; lxc-destroy then removes the tree.
        host.destroy()
    assert not (Path(host.lxc_path) / host.name).exists(), f"{host.name} was left behind"


def busybox_rootfs() -> bytes:
    """A tar of a busybox root filesystem, its applets linked to a relative ``busybox``."""
    busybox = shutil.which("busybox")
    assert busybox is not None
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as out:
        for directory in ("bin", "dev", "etc", "proc", "sys", "tmp"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            out.addfile(info)
        out.add(busybox, "bin/busybox", filter=_root_owned)
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                out.addfile(info)
    return raw.getvalue()


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def requests_of(daemon: Daemon, name: str, log_from: int) -> list[str]:
    return [line for line in daemon.log()[log_from:].splitlines() if f"{name}: pid" in line]


def test_docker_builds_with_fuse_overlayfs_and_passes_our_nodes(
        docker_host: DockerHost, daemon: Daemon) -> None:
    host, log_from = docker_host, len(daemon.log())

    # The container makes its nodes itself; we make them usable twins, bound over.
    host.mknod("/dev/fuse", 10, 229)
    host.mknod("/dev/net/tun", 10, 200)
    made = daemon.log()[log_from:]
    assert "made c 10:229 at /dev/fuse" in made and "made c 10:200 at /dev/net/tun" in made
    for node in ("/dev/fuse", "/dev/net/tun"):
        root = host.mount_root(node)
        # A twin unlinked from the store shows as "//deleted" and cannot be bound again.
        assert root is not None and not root.endswith("//deleted"), (node, root)

    if PURE_V2:
        enabled = host.docker(CGROUP2_LEAF).split()
        assert "+memory" in enabled or "memory" in enabled, enabled
    host.docker(f"setsid {DOCKERD} >{DOCKERD_LOG} 2>&1 </dev/null &")
    try:
        driver = host.docker(
            "for i in $(seq 600); do "
            "d=$(docker info --format '{{.Driver}}' 2>/dev/null) && echo $d && exit 0; "
            "sleep 0.1; done; exit 1", timeout=120).strip()
        assert driver == "fuse-overlayfs"

        host.put("/root/busybox.tar", busybox_rootfs())
        host.put("/root/build/Dockerfile", DOCKERFILE.encode())
        host.docker(f"docker import /root/busybox.tar {BASE_IMAGE} && "
                    f"docker build -q --network none -t {IMAGE} /root/build")
        # The deletion is a whiteout in the top layer (fuse-overlayfs writes ".wh.NAME"
        # files; a c 0:0 node, which overlayfs uses, would do as well).
        upper = host.docker(
            f"docker image inspect {IMAGE} --format '{{{{.GraphDriver.Data.UpperDir}}}}'")
        data = host.rootfs / upper.strip().lstrip("/") / "data"
        gone = data / "gone"
        assert (data / ".wh.gone").is_file() or (
            gone.is_char_device() and gone.lstat().st_rdev == 0), sorted(os.listdir(data))
        listing, *mounts = host.docker(
            f"docker run --rm --network none {IMAGE} sh -c 'ls /data && cat /proc/mounts'"
        ).splitlines()
        assert listing == "kept"
        types = [fields[2] for fields in map(str.split, mounts) if fields[1] == "/"]
        assert types == ["fuse.fuse-overlayfs"], mounts

        # --device binds our nodes (twins mounted over the container's) into Docker's.
        for node, numbers in (("/dev/fuse", "a:e5"), ("/dev/net/tun", "a:c8")):
            out = host.docker(f"docker run --rm --network none --device {node} {IMAGE} "
                              f"sh -c 'stat -c %t:%T {node} && exec 3<>{node} && echo opened'")
            assert out.split() == [numbers, "opened"], (node, out)
    except BaseException as err:
        with contextlib.suppress(OSError):
            err.add_note("dockerd's log:\n" + (host.rootfs / DOCKERD_LOG.lstrip("/"))
                         .read_text()[-4000:])
        raise

    # Docker's own mknods (whiteouts, FIFOs; devices it binds) never reached us:
    # the two above are all this container asked of the mknod handler.
    mknods = [r for r in requests_of(daemon, host.name, log_from)
              if re.search(r" mknod(at)? -> ", r)]
    assert len(mknods) == 2 and all(r.endswith(" -> done") for r in mknods), mknods
    row = next(line for line in daemon.cli("status").stdout.splitlines()
               if line.startswith(host.name)).split()
    assert row[1:3] == ["running", "docker"] and "mknod" in row[3].split(","), row
    done = re.search(r"\bdone (\d+)", " ".join(row))
    assert done is not None and int(done.group(1)) >= 2, row
