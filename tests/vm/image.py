"""Debian images for the real-hosts tier, built from Debian's archive and cached.

An image is what a new admin gets from a stock install: the distribution's
kernel (linux-image-amd64), systemd as PID 1, udev, dbus, AppArmor, LXC and
lxcfs, plus the packages ``scripts/setup.sh`` installs and those the project's
Debian package depends on, so that neither setup.sh nor ``apt install`` of the
package has anything to fetch inside a guest that has no network.  debootstrap fills a
directory from the apt mirror this machine already uses; ``mkfs.ext4 -d`` turns
that directory into a raw ext4 disk without a loop device or a mount, and the
kernel and initrd are copied out of its ``/boot`` for QEMU's ``-kernel`` and
``-initrd``.  Nothing inside the image is configured beyond what every boot of
the tier needs: fstab, a host name, and the oneshot unit that runs the host's
script (``guest/``).

Images live under ``/var/cache/lxc-notify/vm/SUITE-KEY/``, KEY a hash of the
suite, the mirror, the package list, this file and ``guest/``: a second run
with the same inputs reuses the image, a changed input builds a new one and
removes the old.  A cached image is never written to: each boot runs on a
throwaway qcow2 overlay (runner.py).

Building is heavy (debootstrap writes about a gigabyte): it runs under the
machine's heavy-job lock (lock.py), which other suites on this machine take too.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.vm import package
from tests.vm.lock import heavy_lock

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
GUEST = HERE / "guest"

CACHE = Path(os.environ.get("LXC_NOTIFY_VM_CACHE", "/var/cache/lxc-notify/vm"))

# The stock host: what `apt install lxc` on a default Debian install leaves running.
STOCK = ("linux-image-amd64", "initramfs-tools", "systemd", "systemd-sysv", "udev", "dbus",
         "kmod", "apparmor", "lxc", "lxcfs", "iproute2", "procps")
# scripts/setup.sh's list (kept in step by tests/unit/test_vm_image.py), so that it
# installs nothing in a guest without network.  podman's dependency
# container-network-stack is virtual, which debootstrap cannot resolve: name a provider.
SETUP = ("lxc", "python3-lxc", "python3-venv", "busybox-static", "uidmap", "udev",
         "e2fsprogs", "fuse2fs", "gcc", "libc6-dev", "procps", "debootstrap", "runc", "crun",
         "golang-github-containers-common", "podman", "containernetworking-plugins")
# The Debian package's dependencies (debian/control): `apt install ./lxc-notify-plugin_*.deb`
# in a guest without network finds them installed (test_package.py).  apt installs
# Recommends too.
DEB = tuple(package.relations("Depends") + package.relations("Recommends"))
EXTRA = ("python3",)
PACKAGES = tuple(dict.fromkeys(STOCK + SETUP + DEB + EXTRA))

DISK_SIZE = "8G"  # sparse: the built system takes about 1.3 GB of it
KEEP_DAYS = 7  # an image for other inputs (another checkout's) is kept this long after its use


class ImageError(Exception):
    """Building an image failed; the message ends with the tail of the build log."""


@dataclass(frozen=True)
class Suite:
    name: str
    python: str  # the guest's python3, for wheels (runner.wheels)
    kernel_series: str  # the stock kernel, as `uname -r` starts
    lxc_series: str  # lxc-start --version


SUITES = {
    "bookworm": Suite("bookworm", python="3.11", kernel_series="6.1.", lxc_series="5.0."),
    "trixie": Suite("trixie", python="3.13", kernel_series="6.12.", lxc_series="6.0."),
}


@dataclass(frozen=True)
class Image:
    """A built, cached image: read-only from here on."""

    suite: Suite
    directory: Path
    disk: Path  # raw ext4, the root filesystem (/dev/vda)
    kernel: Path
    initrd: Path
    manifest: dict[str, str]  # package -> version, as installed
    build_seconds: float  # how long its cold build took (under the lock)


def mirror() -> str:
    """The Debian archive this machine's apt uses (LXC_NOTIFY_VM_MIRROR overrides)."""
    override = os.environ.get("LXC_NOTIFY_VM_MIRROR")
    if override:
        return override
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        with contextlib.suppress(OSError):
            for found in re.finditer(r"(?:https?|file)://\S+", source.read_text()):
                url = found.group(0).rstrip("/")
                if url.endswith("/debian"):
                    return url
    raise ImageError("no Debian archive in /etc/apt/sources.list*: set LXC_NOTIFY_VM_MIRROR")


def digest(*parts: str | bytes) -> str:
    hashed = hashlib.sha256()
    for part in parts:
        hashed.update((part.encode() if isinstance(part, str) else part) + b"\0")
    return hashed.hexdigest()[:16]


def cache_key(suite: Suite, archive: str) -> str:
    builder = [Path(__file__).resolve(), *sorted(GUEST.iterdir())]
    return digest(suite.name, archive, " ".join(PACKAGES), DISK_SIZE,
                  *(part for path in builder for part in (path.name, path.read_bytes())))


def image(name: str, *, rebuild: bool = False) -> Image:
    """The cached image of suite NAME, built first when missing (or when REBUILD)."""
    suite = SUITES[name]
    archive = mirror()
    directory = CACHE / f"{suite.name}-{cache_key(suite, archive)}"
    if rebuild or not (directory / "manifest.json").exists():
        with heavy_lock():
            if rebuild:
                shutil.rmtree(directory, ignore_errors=True)
            if not (directory / "manifest.json").exists():  # another run built it meanwhile
                _build(suite, archive, directory)
    return _load(suite, directory)


def _load(suite: Suite, directory: Path) -> Image:
    os.utime(directory / "manifest.json")  # its mtime is the image's last use (_prune)
    manifest = json.loads((directory / "manifest.json").read_text())
    return Image(suite=suite, directory=directory, disk=directory / "disk.raw",
                 kernel=directory / "vmlinuz", initrd=directory / "initrd.img",
                 manifest=manifest["packages"], build_seconds=manifest["build_seconds"])


def _build(suite: Suite, archive: str, directory: Path) -> None:
    """Build into a scratch directory, renamed into place once whole.

    A failed build keeps its scratch directory (without the root filesystem) for
    its log, until the next build starts.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f".build-{suite.name}-{os.getpid()}"
    rootfs = work / "rootfs"
    log = work / "build.log"
    started = time.monotonic()
    for stale in CACHE.glob(".build-*"):  # a build killed before it could clean up
        _remove_tree(stale / "rootfs")
        shutil.rmtree(stale, ignore_errors=True)
    work.mkdir()
    try:
        debs = CACHE / f"debs-{suite.name}"  # .debs kept between builds: a rebuild downloads less
        debs.mkdir(exist_ok=True)
        _run(["debootstrap", "--variant=minbase", "--components=main",
              f"--cache-dir={debs}", f"--include={','.join(PACKAGES)}",
              suite.name, str(rootfs), archive], log)
        _configure(rootfs)
        manifest = _installed(rootfs)
        kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
        initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
        if len(kernels) != 1 or len(initrds) != 1:
            raise ImageError(f"expected one kernel and one initrd in /boot, found "
                             f"{[p.name for p in kernels + initrds]}")
        shutil.copyfile(kernels[0], work / "vmlinuz")
        shutil.copyfile(initrds[0], work / "initrd.img")
        for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        disk = work / "disk.raw"
        _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(rootfs), str(disk), DISK_SIZE],
             log)
        _remove_tree(rootfs)
        (work / "manifest.json").write_text(json.dumps({
            "suite": suite.name, "mirror": archive, "kernel": kernels[0].name[len("vmlinuz-"):],
            "packages": manifest, "build_seconds": round(time.monotonic() - started, 1),
        }, indent=1, sort_keys=True))
        work.rename(directory)
    except BaseException:
        _remove_tree(rootfs)
        raise
    _prune(suite)


def _prune(suite: Suite) -> None:
    """Remove this suite's images for other inputs, once unused for KEEP_DAYS.

    Not at once: two checkouts of different builders (main and a branch) share
    this cache, and each would otherwise delete the other's image every run.
    """
    for manifest in CACHE.glob(f"{suite.name}-*/manifest.json"):
        if time.time() - manifest.stat().st_mtime > KEEP_DAYS * 86400:
            shutil.rmtree(manifest.parent)


def _run(argv: list[str], log: Path) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise ImageError(f"{argv[0]} exited with status {result.returncode} (log {log}):\n"
                         f"{tail}")


def _remove_tree(rootfs: Path) -> None:
    """Remove a debootstrap target, unmounting first what a failed debootstrap left there."""
    prefix = str(rootfs) + "/"
    with open("/proc/self/mountinfo") as mountinfo:
        mounted = [line.split()[4] for line in mountinfo]
    for point in sorted((m for m in mounted if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    shutil.rmtree(rootfs, ignore_errors=True)


def _configure(rootfs: Path) -> None:
    """What every boot needs, written as files: no chroot, no service started on the host."""
    etc = rootfs / "etc"
    (etc / "fstab").write_text("/dev/vda / ext4 errors=remount-ro 0 1\n")
    (etc / "hostname").write_text("lxc-notify-vm\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 lxc-notify-vm\n")
    libexec = rootfs / "usr/local/libexec"
    libexec.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(GUEST / "vm-run", libexec / "lxc-notify-vm-run")
    (libexec / "lxc-notify-vm-run").chmod(0o755)
    unit = "lxc-notify-vm-run.service"
    shutil.copyfile(GUEST / unit, etc / "systemd/system" / unit)
    wants = etc / "systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")


def _installed(rootfs: Path) -> dict[str, str]:
    """package -> version from the image's dpkg status, for the manifest."""
    installed: dict[str, str] = {}
    for stanza in (rootfs / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields = dict(re.findall(r"^(Package|Version|Status): (.*)$", stanza, re.MULTILINE))
        if fields.get("Status", "").endswith(" installed"):
            installed[fields["Package"]] = fields["Version"]
    return installed


def setup_sh_packages() -> list[str]:
    """The packages scripts/setup.sh installs, read from its `packages=(...)` array."""
    text = (REPO / "scripts/setup.sh").read_text()
    found = re.search(r"^packages=\((.*?)\)", text, re.MULTILINE | re.DOTALL)
    if found is None:
        raise ImageError("scripts/setup.sh has no packages=(...) array")
    return found.group(1).split()


def requirements() -> list[str]:
    """The project's runtime and build requirements (setup.cfg, pyproject.toml)."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    runtime = [line.strip() for line in cfg["options"]["install_requires"].splitlines()
               if line.strip()]
    build = re.search(r"requires\s*=\s*\[(.*?)\]", (REPO / "pyproject.toml").read_text(),
                      re.DOTALL)
    return runtime + (re.findall(r'"([^"]+)"', build.group(1)) if build else [])


def main(argv: list[str]) -> int:
    """python -m tests.vm.image [--rebuild] SUITE...: build (or find) the images."""
    rebuild = "--rebuild" in argv
    for name in [a for a in argv if a != "--rebuild"] or list(SUITES):
        started = time.monotonic()
        built = image(name, rebuild=rebuild)
        print(f"{name}: {built.directory} ({time.monotonic() - started:.1f} s, kernel "
              f"{built.manifest.get('linux-image-amd64', '?')}, lxc {built.manifest.get('lxc')})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
