"""Build the Debian package (debian/) from a clean copy of the tree, as CI does.

The copy holds the files git tracks, as they are in the working tree (a change
not yet committed is built; an untracked file, a build/ or an egg-info is not),
so the build proves that the tracked tree alone makes the package.  In it:
``apt-get build-dep ./`` (build dependencies from Debian's archive, the only
network the build uses), then ``dpkg-buildpackage -us -uc -b``.  Both run under
the machine's heavy-job lock (lock.py): dpkg-buildpackage is one of the heavy
jobs, and apt's own lock would make a parallel build-dep fail instead of wait.

``python -m tests.vm.package OUTDIR`` builds by hand; the VM tier's ``deb``
fixture (conftest.py) builds once per session and shares OUTDIR with the guests.
OUTDIR also gets ``source.tar``, the clean copy itself, and ``build.log``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.vm.lock import heavy_lock

REPO = Path(__file__).resolve().parent.parent.parent
PACKAGE = "lxc-notify-plugin"
LOG_TAIL = 60  # lines of the build log in a BuildError


class BuildError(Exception):
    """The package could not be built; the message ends with the log's tail."""


@dataclass(frozen=True)
class Built:
    deb: Path  # OUTDIR/lxc-notify-plugin_VERSION_all.deb
    source: Path  # OUTDIR/source.tar: the clean copy it was built from
    log: Path  # OUTDIR/build.log: build-dep and dpkg-buildpackage, whole
    seconds: float  # copy, build-dep and build, without the wait for the lock
    lock_wait: float


def control(repo: Path = REPO) -> list[dict[str, str]]:
    """debian/control's paragraphs, field -> value, continuation lines joined."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", (repo / "debian" / "control").read_text()):
        fields: dict[str, str] = {}
        last = ""
        for line in block.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace():
                fields[last] += "\n" + line.strip()
            else:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        paragraphs.append(fields)
    return paragraphs


def relations(field: str, repo: Path = REPO) -> list[str]:
    """The package names in the binary package's FIELD (Depends, Recommends ...),
    without versions and substitution variables (${python3:Depends} ...)."""
    binary = next(p for p in control(repo) if p.get("Package") == PACKAGE)
    names = (re.split(r"[\s(]", item.strip())[0] for item in binary.get(field, "").split(","))
    return [name for name in names if name and not name.startswith("${")]


def tracked_files(repo: Path = REPO) -> list[Path]:
    """The files git tracks, relative to the tree, present in the working tree."""
    try:
        listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached"],
                                check=True, capture_output=True, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as err:
        raise BuildError(f"the package is built from the files git tracks, and git "
                         f"could not list them in {repo}: {err}") from err
    names = [Path(name.decode()) for name in listed.stdout.split(b"\0") if name]
    return [name for name in names if (repo / name).is_symlink() or (repo / name).exists()]


def copy_tree(destination: Path, repo: Path = REPO) -> None:
    """The tracked files into DESTINATION; symlinks stay symlinks (debian/ has one)."""
    for name in tracked_files(repo):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target, follow_symlinks=False)


def build(out: Path, repo: Path = REPO) -> Built:
    """Build the package from a clean copy of REPO; the .deb and the log go to OUT."""
    out.mkdir(parents=True, exist_ok=True)
    log = out / "build.log"
    log.write_text("")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"}
    # Not the caller's venv: debian/rules and dh_python3 must see Debian's python3.
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH"):
        env.pop(name, None)
    with tempfile.TemporaryDirectory(prefix="lxc-notify-deb-") as scratch:
        # dpkg-buildpackage writes the .deb beside the source directory.
        source = Path(scratch) / PACKAGE
        with heavy_lock() as lock_wait:
            started = time.monotonic()
            copy_tree(source, repo)
            # The same clean tree for `pip install .` in a guest (test_package.py).
            with tarfile.open(out / "source.tar", "w") as tar:
                tar.add(source, arcname=PACKAGE)
            if _run(["apt-get", "build-dep", "-y", "-q", "./"], source, env, log) != 0:
                # Package lists missing or stale (a fresh machine): once more after an update.
                _checked(["apt-get", "update", "-q"], source, env, log)
                _checked(["apt-get", "build-dep", "-y", "-q", "./"], source, env, log)
            _checked(["dpkg-buildpackage", "-us", "-uc", "-b"], source, env, log)
            seconds = time.monotonic() - started
        debs = sorted(Path(scratch).glob(f"{PACKAGE}_*_all.deb"))
        if len(debs) != 1:
            raise BuildError(f"expected one {PACKAGE}_*_all.deb, found {debs}")
        deb = out / debs[0].name
        shutil.copyfile(debs[0], deb)
    return Built(deb=deb, source=out / "source.tar", log=log, seconds=seconds,
                 lock_wait=lock_wait)


def _run(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> int:
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(argv)}\n")
        sink.flush()
        return subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              stdout=sink, stderr=subprocess.STDOUT, check=False).returncode


def _checked(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
    status = _run(argv, cwd, env, log)
    if status != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-LOG_TAIL:])
        raise BuildError(f"{' '.join(argv)} exited with status {status} (log {log}):\n{tail}")


def main(argv: list[str]) -> int:
    """python -m tests.vm.package OUTDIR: build the .deb into OUTDIR."""
    if len(argv) != 1:
        print(main.__doc__, file=sys.stderr)
        return 2
    built = build(Path(argv[0]).resolve())
    print(f"{built.deb} ({built.seconds:.1f} s, lock wait {built.lock_wait:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
