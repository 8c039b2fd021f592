"""One boot of a stock image for several test modules, each with its own part of the script.

A boot under QEMU's TCG costs about a minute before any script runs, so the
modules that need only a fresh stock machine (test_hosts, test_handlers,
test_bpf_hosts) share one boot per image instead of taking one each.  Each
module declares a :class:`Part`: its bash script, the shares it reads and
its own time limit.  The boot runs the parts one after another in
:data:`ORDER`; each writes its stdout, stderr and exit status to its own
directory of the share (``$SHARE``, /mnt/share/NAME), so one part's
failure fails only its module's tests and the next part still runs.  A part
must leave the machine as it found it for the parts after it (its daemon
stopped, its containers destroyed).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.vm.image import REPO, Image
from tests.vm.runner import VMResult, read_text, run_in_vm, wheels

# The stock host's own facts first, before any part installs or starts anything;
# then the handler tests (setup.sh, as a newcomer runs it); then bpf, in the venv
# setup.sh made (a venv and pip of its own cost minutes under TCG).
ORDER = ("hosts", "handlers", "bpf")
SLACK = 300.0  # seconds of the boot's limit beyond its parts' own: boot and poweroff


@dataclass(frozen=True)
class Part:
    name: str  # one of ORDER
    script: str  # bash, run as root from /root, with SHARE set to its own directory
    timeout: float  # seconds; the part is killed after them and the next one runs
    shares: Mapping[str, Path] = field(default_factory=dict)  # read-only, /mnt/TAG
    extras: Sequence[str] = ()  # requirements beyond the project's, as wheels
    files: Mapping[str, Path] = field(default_factory=dict)  # /dev/disk/by-id/virtio-SERIAL


@dataclass(frozen=True)
class PartResult:
    status: int  # the part's exit status (124: killed at its timeout)
    stdout: str
    stderr: str
    seconds: int  # its wall time in the guest
    share: Path  # its directory of the share, as the host sees it
    boot: VMResult  # the whole boot's

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def text(self, name: str) -> str:
        """A file the part wrote to $SHARE, or "" if it wrote none."""
        return read_text(self.share / name)


def source_tree(into: Path) -> Path:
    """The checkout's tracked files and its new, unignored ones (no venv, no caches)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], check=True, capture_output=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


def boot(img: Image, parts: Sequence[Part], share_dir: Path, src: Path) -> dict[str, PartResult]:
    """Boot IMG once and run PARTS in ORDER; the source tree SRC is shared at /mnt/src."""
    parts = sorted(parts, key=lambda part: ORDER.index(part.name))
    shares = _merged({"src": src}, [part.shares for part in parts], "share /mnt/")
    files = _merged({}, [part.files for part in parts], "disk virtio-")
    extras = sorted({extra for part in parts for extra in part.extras})
    shares["wheels"] = wheels(img.suite.python, extras)
    lines = ["set -u"]
    for part in parts:
        (share_dir / part.name).mkdir(parents=True, exist_ok=True)
        (share_dir / part.name / "script").write_text(part.script)
        here = f"/mnt/share/{part.name}"
        lines.append("SECONDS=0")
        lines.append(f"(cd /root && SHARE={here} timeout -k 10 {part.timeout:.0f} "
                     f"bash {here}/script > {here}/stdout 2> {here}/stderr)")
        lines.append(f"echo $? > {here}/status; echo $SECONDS > {here}/seconds")
    result = run_in_vm(img, "\n".join(lines) + "\n", share_dir,
                       sum(part.timeout for part in parts) + SLACK, shares=shares,
                       env={"CI": "true"}, files=files)
    return {part.name: PartResult(status=_number(share_dir / part.name / "status"),
                                  stdout=read_text(share_dir / part.name / "stdout"),
                                  stderr=read_text(share_dir / part.name / "stderr"),
                                  seconds=_number(share_dir / part.name / "seconds"),
                                  share=share_dir / part.name, boot=result)
            for part in parts}


def _merged(into: dict[str, Path], wanted: Sequence[Mapping[str, Path]],
            what: str) -> dict[str, Path]:
    """INTO with every part's names added; one name for two host paths is an error."""
    for names in wanted:
        for name, path in names.items():
            if into.setdefault(name, path) != path:
                raise ValueError(f"parts want {what}{name} from two places: "
                                 f"{into[name]} and {path}")
    return into


def _number(path: Path) -> int:
    text = read_text(path).strip()
    return int(text) if text else -1  # -1: the part never finished
