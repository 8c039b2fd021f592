"""Boot a cached Debian image with QEMU, run one script inside, get its result back.

The guest's ``lxc-notify-vm-run.service`` (guest/) starts after multi-user.target,
mounts the 9p share ``share`` (the host's SHARE_DIR) at /mnt/share, runs
``/mnt/share/script`` with bash as root, writes ``stdout``, ``stderr`` and
``.vm/status`` there and powers the machine off.  Every boot writes to a
qcow2 overlay over the cached raw disk, so the image stays as built: a
throwaway one, or one kept across boots (:func:`machine_disk`), so that a
second boot finds what the first left (an installed package, a container set
to autostart) as a machine rebooted does.  The guest runs the script of every
boot: each boot's script is the host's to give.

Acceleration: TCG (``-accel tcg,thread=multi``, TCG_CPU) unless kvm_intel or
kvm_amd is loaded.  This machine's /dev/kvm is PVM, which boots only
PVM-patched kernels: Debian's stock kernel hangs there, so /dev/kvm alone
proves nothing.  Under TCG the guest runs several times slower than native:
no timing from a VM is a performance figure, only pass or fail.

Failures of the machinery (QEMU missing or dying, the hard timeout, a guest
that never reported a status) raise :class:`VMError` with the serial
console's tail; the script's own failure is its exit status in the result.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.vm import image as images
from tests.vm.image import CACHE, Image
from tests.vm.lock import heavy_lock

MEMORY_MIB = 4096
CPUS = 2
# TCG's model: every feature it emulates but AVX and 5-level paging.  With plain
# "max", glibc picks its AVX2 string functions, which TCG runs slowly (in the same
# guest: 300 MB through sha256sum 21.7 s against 10.3 s, bytes.find and copies over
# 50 MB 4.5 s against 1.2 s, one probe script 150 s against 124-142 s of QEMU);
# la57 is off as on the hosts admins run, and a 4-level page walk is less to emulate.
TCG_CPU = "max,-la57,-avx,-avx2,-avx512f"
CONSOLE_TAIL = 60  # lines of the serial console in a VMError


class VMError(Exception):
    """The VM did not run the script to a reported status."""

    def __init__(self, what: str, console: str) -> None:
        tail = "\n".join(console.splitlines()[-CONSOLE_TAIL:])
        super().__init__(f"{what}\n--- serial console, last {CONSOLE_TAIL} lines ---\n{tail}")
        self.what = what
        self.console = console


@dataclass(frozen=True)
class VMResult:
    status: int  # the script's exit status
    stdout: str
    stderr: str
    console: str = field(repr=False)
    lock_wait: float  # seconds waiting for the heavy-job lock
    boot_seconds: float  # QEMU started -> script started (seen from the host)
    total_seconds: float  # QEMU started -> QEMU exited

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def accelerator() -> list[str]:
    """KVM only where a real VMX/SVM module is loaded; TCG otherwise."""
    if any(Path("/sys/module", m).is_dir() for m in ("kvm_intel", "kvm_amd")):
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", TCG_CPU]


def qemu_command(img: Image, overlay: Path, share_dir: Path, console: Path,
                 shares: Mapping[str, Path], files: Mapping[str, Path] | None = None
                 ) -> list[str]:
    argv = ["qemu-system-x86_64", *accelerator(), "-smp", str(CPUS), "-m", str(MEMORY_MIB),
            "-nodefaults", "-display", "none", "-no-reboot",
            "-serial", f"file:{console}",
            "-kernel", str(img.kernel), "-initrd", str(img.initrd),
            # panic=-1 with -no-reboot: a panicking guest ends QEMU instead of hanging.
            "-append", "root=/dev/vda ro console=ttyS0 panic=-1",
            # As -device, before any other disk: PCI slots go in command-line order,
            # and the root disk must be the first, /dev/vda (root= below).
            "-drive", f"file={overlay},if=none,id=root,format=qcow2,cache=unsafe",
            "-device", "virtio-blk-pci,drive=root",
            "-device", "virtio-rng-pci",
            "-virtfs", f"local,path={share_dir},mount_tag=share,security_model=none,id=share"]
    for tag, path in shares.items():
        argv += ["-virtfs", f"local,path={path},mount_tag={tag},security_model=none,"
                            f"id={tag},readonly=on"]
    for serial, path in (files or {}).items():
        # A big file read whole (a tar) as a read-only disk: 9p under TCG read the
        # 400 MB Docker root filesystem too slowly for its test's time limit.
        argv += ["-drive", f"file={path},if=none,id=file-{serial},format=raw,readonly=on",
                 "-device", f"virtio-blk-pci,drive=file-{serial},serial={serial}"]
    return argv


@contextlib.contextmanager
def machine_disk(img: Image) -> Iterator[Path]:
    """A qcow2 overlay over IMG's disk for several boots (run_in_vm's ``disk``), removed after.

    Each boot ends with the guest's own poweroff, so QEMU closes the overlay
    cleanly and the next boot sees every write of the last; a boot killed at its
    timeout leaves it as a power cut would.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="disk-", dir=CACHE) as scratch:
        overlay = Path(scratch) / "overlay.qcow2"
        _overlay(img, overlay)
        yield overlay


def _overlay(img: Image, overlay: Path) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                    "-b", str(img.disk), str(overlay)], check=True)


def run_in_vm(img: Image, script: str, share_dir: Path, timeout: float, *,
              shares: Mapping[str, Path] | None = None,
              env: Mapping[str, str] | None = None,
              disk: Path | None = None,
              files: Mapping[str, Path] | None = None) -> VMResult:
    """Boot IMG, run SCRIPT (bash) inside as root, power off; kill QEMU after TIMEOUT s.

    SHARE_DIR (empty or missing) becomes /mnt/share in the guest and keeps the
    script, its stdout and stderr afterwards.  SHARES maps extra 9p tags to host
    directories, mounted read-only at /mnt/TAG.  ENV is exported to the script.
    DISK is an overlay from :func:`machine_disk` to boot from (and keep); without
    it the boot writes to a throwaway one.  FILES maps serials (up to 20
    characters) to host files, each a read-only disk in the guest at
    /dev/disk/by-id/virtio-SERIAL.
    TIMEOUT counts from QEMU's start, not from the wait for the heavy-job lock.
    """
    shares = dict(shares or {})
    if "share" in shares:
        raise ValueError("the tag 'share' is the runner's own")
    if any(len(serial) > 20 or not serial.isalnum() for serial in files or {}):
        raise ValueError(f"disk serials are up to 20 letters and digits: {list(files or {})}")
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        raise VMError("qemu-system-x86_64 and qemu-img are needed (apt install "
                      "qemu-system-x86 qemu-utils)", "")
    share_dir.mkdir(parents=True, exist_ok=True)
    ctl = share_dir / ".vm"
    ctl.mkdir(exist_ok=True)
    for stale in ("started", "finished", "status", "status.tmp"):
        (ctl / stale).unlink(missing_ok=True)
    (share_dir / "script").write_text(script)
    (ctl / "mounts").write_text("".join(f"{tag}\n" for tag in shares))
    (ctl / "env").write_text("".join(f"export {k}={shlex.quote(v)}\n"
                                     for k, v in (env or {}).items()))
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="run-", dir=CACHE) as scratch:
        overlay = disk or Path(scratch) / "overlay.qcow2"
        console = Path(scratch) / "console.log"
        if disk is None:
            _overlay(img, overlay)
        argv = qemu_command(img, overlay, share_dir, console, shares, files)
        with heavy_lock() as lock_wait:  # raises lock.LockTimeout after its wait limit
            started = time.monotonic()
            boot = _supervise(argv, ctl, console, started + timeout, timeout)
            total = time.monotonic() - started
        text = read_text(console)
    status_file = ctl / "status"
    if not status_file.exists():
        raise VMError(f"QEMU exited after {total:.0f} s without the script's status "
                      f"(script {'started' if boot is not None else 'never started'})", text)
    return VMResult(status=int(status_file.read_text().strip()),
                    stdout=read_text(share_dir / "stdout"), stderr=read_text(share_dir / "stderr"),
                    console=text, lock_wait=lock_wait,
                    boot_seconds=boot if boot is not None else float("nan"),
                    total_seconds=total)


def _supervise(argv: list[str], ctl: Path, console: Path, deadline: float,
               timeout: float) -> float | None:
    """Run QEMU to its exit or the deadline; returns the seconds until the script started."""
    started = time.monotonic()
    boot: float | None = None
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        while True:
            try:
                qemu.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if boot is None and (ctl / "started").exists():
                boot = time.monotonic() - started
            if time.monotonic() > deadline:
                raise VMError(f"hard timeout: QEMU killed after {timeout:.0f} s "
                              f"(script {'started' if boot is not None else 'never started'})",
                              read_text(console))
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        assert qemu.stdout is not None
        said = qemu.stdout.read().decode(errors="replace")
        qemu.stdout.close()
    if qemu.returncode != 0:
        raise VMError(f"QEMU exited with status {qemu.returncode}: {said.strip()}",
                      read_text(console))
    if boot is None and (ctl / "started").exists():
        boot = time.monotonic() - started  # started and finished between two polls
    return boot


def facts(stdout: str) -> dict[str, str]:
    """The ``fact NAME VALUE`` lines a script printed (the tier's scripts report so)."""
    found = {}
    for line in stdout.splitlines():
        if line.startswith("fact "):
            _, name, *value = line.split(" ", 2)
            found[name] = value[0].strip() if value else ""
    return found


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wheels(python: str, extra: Sequence[str] = ()) -> Path:
    """The project's requirements (and EXTRA ones) as wheels for the guest's
    PYTHON (e.g. "3.13"), cached.

    Downloaded on the host by pip, once per requirement list; the directory also
    holds ``requirements.txt``, for `pip install --no-index --find-links DIR -r`.
    """
    wanted = [*images.requirements(), *extra]
    key = images.digest(python, *wanted)
    directory = CACHE / f"wheels-py{python}-{key}"
    if (directory / "requirements.txt").exists():
        return directory
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".wheels-", dir=CACHE))
    try:
        # Markers are evaluated for the target Python: tomli (< 3.11) is left out.
        subprocess.run([sys.executable, "-m", "pip", "download", "-q",
                        "--disable-pip-version-check", "--only-binary=:all:",
                        "--python-version", python, "--implementation", "cp",
                        "--platform", "manylinux2014_x86_64", "--platform", "any",
                        "-d", str(partial), *wanted],
                       check=True, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        (partial / "requirements.txt").write_text("".join(f"{r}\n" for r in wanted))
        # Other requirement lists' wheels stay (a megabyte each): another checkout's
        # running guest may have them mounted.
        partial.rename(directory)
    except subprocess.CalledProcessError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise VMError(f"pip download for Python {python} failed:\n{err.stderr}", "") from err
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return directory


def main(argv: list[str]) -> int:
    """python -m tests.vm.runner SUITE SCRIPT [TIMEOUT]: run a script file in a VM."""
    if len(argv) not in (2, 3):
        print(main.__doc__, file=sys.stderr)
        return 2
    img = images.image(argv[0])
    share = Path(tempfile.mkdtemp(prefix="share-", dir=CACHE))
    try:
        result = run_in_vm(img, Path(argv[1]).read_text(), share,
                           float(argv[2]) if len(argv) == 3 else 600,
                           shares={"wheels": wheels(img.suite.python)},
                           env={"CI": os.environ.get("CI", "")})
    finally:
        kept = {n: read_text(share / n) for n in ("stdout", "stderr")}
        shutil.rmtree(share)
    sys.stdout.write(kept["stdout"])
    sys.stderr.write(kept["stderr"])
    print(f"[vm] {argv[0]}: status {result.status}, lock wait {result.lock_wait:.1f} s, "
          f"boot to script {result.boot_seconds:.1f} s, QEMU {result.total_seconds:.1f} s",
          file=sys.stderr)
    return result.status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
