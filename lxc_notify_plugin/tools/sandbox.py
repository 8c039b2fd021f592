"""Throw-away unprivileged busybox containers, for the demo, the tests and the benchmark.

Each sandbox has a unique name, is created from LXC's busybox template with
no network, and is destroyed on exit from its ``with`` block even when the
body fails, so the machine keeps nothing between runs.

LXC's busybox template links each applet with its own ``ln`` (xargs -n1):
about 0.4 s natively, but 13 s under the VM tier's TCG, where most tests
make a container.  So each process runs the real template once, into a
private directory, and every sandbox is a copy of that container (``cp -a``)
with the config lxc-create would have written for it: the same lines, its
own name and root filesystem, and its extra config where lxc-create puts the
``-f`` file's lines (tests/lxc/test_start_path.py compares the two).
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

SUBID_RANGE = "100000:65536"
# The AppArmor profile of every sandbox: unconfined where the host has no
# AppArmor (LXC refuses a profile it cannot load); the real-hosts tier sets
# "generated", LXC's own per-container profile, as Debian's default.conf does.
APPARMOR_PROFILE = os.environ.get("LXC_NOTIFY_SANDBOX_APPARMOR", "unconfined")
_BASE_CONFIG = f"""\
lxc.net.0.type = empty
lxc.apparmor.profile = {APPARMOR_PROFILE}
lxc.idmap = u 0 100000 65536
lxc.idmap = g 0 100000 65536
"""


class SandboxError(RuntimeError):
    pass


class AttachOutcome(enum.Enum):
    DONE = "done"            # the command ran and exited 0, and LXC reported nothing wrong
    NEVER_RAN = "never ran"  # lxc-attach failed before the command started: safe to retry
    FAILED = "failed"        # the command ran (or may have) and something failed: never retry


# How LXC 5.0.2's tools print their own errors on stderr (log_append_stderr in
# src/lxc/log.c; lxc-attach logs at ERROR and above only):
#   lxc-attach: NAME: FILE.c: FUNCTION: LINE MESSAGE
# where Debian's build gives FILE as "../src/lxc/attach.c" (seen), e.g.
# "lxc-attach: c1: ../src/lxc/commands.c: lxc_cmd_seccomp_notify_add_listener:
# 1615 Connection refused - Failed to add seccomp listener".
_LXC_ERROR = re.compile(r"^lxc-attach: (?:[^\n:]+: )?[\w./-]+\.c: \w+: \d+ .*$", re.MULTILINE)


def lxc_attach_error(stderr: str) -> str | None:
    """The first error lxc-attach itself logged on this stderr, if any."""
    found = _LXC_ERROR.search(stderr)
    return found.group(0) if found else None


def split_status(stdout: str, marker: str) -> tuple[str, int | None]:
    """The command's output without the wrapper's lines, and the command's own exit
    status as the wrapping shell printed it after the command (None if it did not)."""
    found = re.search(rf"{re.escape(marker)} status (\d+)\n?\Z", stdout)
    if found is not None:
        stdout = stdout[:found.start()]
    return stdout.replace(marker + "\n", "", 1), int(found.group(1)) if found else None


def classify_attach(returncode: int, stdout: str, stderr: str, marker: str) -> AttachOutcome:
    """What one ``lxc-attach ... -- /bin/sh -c 'echo MARKER && "$@"; echo "MARKER status $?"'``
    run proves (the wrapper also exits with the command's status).

    LXC 5.0.2 (src/lxc/attach.c, tools/lxc_attach.c) exits EXIT_FAILURE, 1, for
    every failure of its own, the same status as a command that exits 1, so the
    status alone proves nothing.  Its attached child loads the seccomp filter,
    sends the listener fd to lxc-attach and execs the command without waiting;
    lxc-attach then hands the fd to the monitor, and when that fails it waits
    for the command to finish, unsupervised, and exits 1 (with "Failed to add
    seccomp listener" on stderr, or with no message when the monitor refused).
    Hence: no marker means the command never started, and status 1 then is
    LXC's own failure, safe to retry.  A marker means it started: anything but
    status 0 without an LXC error on stderr is a failure, never retried, except
    lxc-attach's 1 over the command's own reported 0 (below).
    """
    if marker in stdout:
        if lxc_attach_error(stderr) is not None:
            return AttachOutcome.FAILED
        if returncode == 0:
            return AttachOutcome.DONE
        # Seen with LXC 5.0.2, about once in a thousand attaches and with nothing in
        # either log: the command exits 0 and lxc-attach 1.  The shell's own report
        # of the command's status is then the truth; an unsupervised run (the same
        # status 1) shows in the command's result, where trapped calls fail ENOSYS.
        if returncode == 1 and split_status(stdout, marker)[1] == 0:
            return AttachOutcome.DONE
        return AttachOutcome.FAILED
    # No marker and LXC's status 1, or lxc-attach itself killed by a signal (seen:
    # SIGABRT after "Failed to rexec as memfd", before it attached anything).
    return AttachOutcome.NEVER_RAN if returncode == 1 or returncode < 0 else AttachOutcome.FAILED


def ensure_subordinate_ids() -> None:
    """root needs 100000:65536 in /etc/subuid and /etc/subgid for the idmap."""
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        text = path.read_text() if path.exists() else ""
        if f"root:{SUBID_RANGE}" not in text.split():
            with path.open("a") as f:
                f.write(("" if not text or text.endswith("\n") else "\n") + f"root:{SUBID_RANGE}\n")


def _run(argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


_TEMPLATE_NAME = "template"
_COPIED_AS_IS = ("lxc.idmap", "lxc.rootfs.path")  # what the copied files depend on
_template_lock = threading.Lock()
_template_dir: Path | None = None  # this process's one real busybox container


def _busybox_template() -> Path:
    """This process's container made by ``lxc-create -t busybox`` with the base config
    (in a private LXC path, so no lxc-ls sees it), made on first use, removed at exit."""
    global _template_dir
    with _template_lock:
        if _template_dir is None:
            ensure_subordinate_ids()
            lxc_path = Path(tempfile.mkdtemp(prefix="lxcnotify-busybox-"))
            atexit.register(_remove_template, lxc_path, os.getpid())
            with tempfile.NamedTemporaryFile("w", suffix=".conf") as conf:
                conf.write(_BASE_CONFIG)
                conf.flush()
                result = _run(["lxc-create", "-n", _TEMPLATE_NAME, "-P", str(lxc_path),
                               "-t", "busybox", "-f", conf.name])
            if result.returncode != 0:
                raise SandboxError(f"lxc-create -t busybox failed: {result.stderr.strip()}")
            _template_dir = lxc_path / _TEMPLATE_NAME
        return _template_dir


def _remove_template(lxc_path: Path, owner: int) -> None:
    if os.getpid() == owner:  # not in a forked child that exits through atexit
        shutil.rmtree(lxc_path, ignore_errors=True)


def copied_config(template_config: str, template_dir: Path, container_dir: Path,
                  extra_config: str) -> str:
    """TEMPLATE_CONFIG as lxc-create would have written it for CONTAINER_DIR with
    EXTRA_CONFIG after the base config: lxc-create copies the -f file's non-blank
    lines just before the ``lxc.rootfs.path`` it adds, then the template's own."""
    extra = [line for line in extra_config.splitlines() if line.strip()]
    for line in extra:
        key = line.partition("=")[0].strip()
        if key in _COPIED_AS_IS:
            # The copy's files are owned as the base idmap maps them, in its own rootfs.
            raise SandboxError(f"a sandbox's extra config cannot set {key}: {line!r}")
    lines = template_config.splitlines()
    rootfs = f"lxc.rootfs.path = dir:{template_dir}/rootfs"
    uts = f'lxc.uts.name = "{template_dir.name}"'
    if lines.count(rootfs) != 1 or lines.count(uts) != 1:
        raise SandboxError(f"{template_dir}/config is not the busybox template's: "
                           f"expected one {rootfs!r} and one {uts!r}")
    at = lines.index(rootfs)
    lines[at:at + 1] = [*extra, f"lxc.rootfs.path = dir:{container_dir}/rootfs"]
    lines[lines.index(uts)] = f'lxc.uts.name = "{container_dir.name}"'
    return "\n".join(lines) + "\n"


class Sandbox:
    def __init__(self, prefix: str = "lxcnotify", lxc_path: str | None = None) -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.lxc_path = lxc_path or "/var/lib/lxc"
        self._created = False

    def _lxc(self, tool: str, *args: str) -> list[str]:
        return [tool, "-n", self.name, "-P", self.lxc_path, *args]

    @property
    def rootfs(self) -> Path:
        return Path(self.lxc_path) / self.name / "rootfs"

    @property
    def config_file(self) -> Path:
        return Path(self.lxc_path) / self.name / "config"

    def create(self, extra_config: str = "") -> Sandbox:
        """The container ``lxc-create -t busybox`` with the base and EXTRA_CONFIG makes,
        as a copy of this process's one real run of the template (see above)."""
        template = _busybox_template()
        container_dir = Path(self.lxc_path) / self.name
        config = copied_config((template / "config").read_text(), template, container_dir,
                               extra_config)
        result = _run(["cp", "-a", "--", str(template), str(container_dir)], timeout=120)
        if result.returncode != 0:
            shutil.rmtree(container_dir, ignore_errors=True)
            raise SandboxError(f"copying the busybox container to {container_dir} failed: "
                               f"{result.stderr.strip()}")
        try:
            # Written in place: the file keeps the owner and mode lxc-create gave it.
            (container_dir / "config").write_text(config)
        except BaseException:
            shutil.rmtree(container_dir, ignore_errors=True)  # no config: lxc-destroy can't
            raise
        self._created = True
        return self

    def install(self, host_file: str | Path, container_path: str, mode: int = 0o755) -> None:
        target = self.rootfs / container_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(host_file, target)
        os.chmod(target, mode)

    def start(self, config: Mapping[str, str] | None = None) -> None:
        args: list[str] = []
        for key, value in (config or {}).items():
            args += ["-s", f"{key}={value}"]
        log = Path(self.lxc_path) / self.name / "start.log"
        result = _run(self._lxc("lxc-start", "-l", "INFO", "-o", str(log), *args))
        if result.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise SandboxError(f"lxc-start {self.name} failed: {result.stderr.strip()}\n{tail}")
        if _run(self._lxc("lxc-wait", "-s", "RUNNING", "-t", "10")).returncode != 0:
            raise SandboxError(f"{self.name} did not reach RUNNING")

    def stop(self) -> None:
        _run(self._lxc("lxc-stop", "-k"))

    def init_pid(self) -> int:
        out = _run(self._lxc("lxc-info", "-pH")).stdout.strip()
        if not out.isdigit():
            raise SandboxError(f"{self.name} is not running")
        return int(out)

    def attach(self, *argv: str, uid: int = 0, gid: int = 0, cwd: str | None = None,
               timeout: float = 120, idempotent_unsupervised: bool = False) -> str:
        """Run argv in the container and return its stdout; raise unless it exits 0.

        lxc-attach sometimes (about 1 in 100 under load, see NOTES.md) exits 1
        having run nothing: that is retried.  It also exits 1, having run the
        command *unsupervised* (trapped calls then fail ENOSYS), when handing
        the seccomp listener to the monitor fails after the command started:
        that must never pass for a result, nor be silently re-run.  So the
        command runs behind a shell that first prints a marker, and only a run
        that printed none is retried (see classify_attach).

        ``idempotent_unsupervised`` is for commands that never exit 1 themselves
        and change nothing when their trapped calls fail (nodeprobe): there a
        marker, status 1 and ENOSYS in the output prove an unsupervised run of
        LXC's making that did nothing, and it is retried, with a printed line.
        """
        for attempt in range(1, 4):
            marker = f"lxc-notify-sandbox-{uuid.uuid4().hex}"
            # $0 is the directory to enter (or just a name); "&&": no marker, no command.
            # The command's own status is printed after it (not exec'd): lxc-attach's
            # status is not always the command's (classify_attach).
            report = f'status=$?; echo "{marker} status $status"; exit $status'
            script = f'echo {marker} && cd "$0" && "$@"; {report}' if cwd is not None \
                else f'echo {marker} && "$@"; {report}'
            result = _run(self._lxc("lxc-attach", "--clear-env", "-u", str(uid), "-g", str(gid),
                                    "--", "/bin/sh", "-c", script, cwd or "sh", *argv),
                          timeout=timeout)
            outcome = classify_attach(result.returncode, result.stdout, result.stderr, marker)
            stdout, _ = split_status(result.stdout, marker)
            # Status 1 from lxc-attach with ENOSYS printed: LXC ran it unsupervised (an
            # idempotent probe then changed nothing); checked before DONE, which a
            # command's own status 0 may claim under lxc-attach's 1.
            unsupervised = (idempotent_unsupervised and marker in result.stdout
                            and result.returncode == 1 and "ENOSYS" in stdout.split())
            if outcome is AttachOutcome.DONE and not unsupervised:
                return stdout
            if unsupervised and attempt < 3:
                print(f"sandbox: lxc-attach to {self.name} ran {argv[0]} unsupervised "
                      f"(exit 1, ENOSYS; {result.stderr.strip() or 'no message'}); retrying",
                      file=sys.stderr)
                time.sleep(0.2)
                continue
            if outcome is AttachOutcome.NEVER_RAN:
                if attempt < 3:
                    print(f"sandbox: lxc-attach to {self.name} exited {result.returncode} "
                          "before running "
                          f"{argv[0]} ({result.stderr.strip() or 'no message'}); retrying",
                          file=sys.stderr)
                    time.sleep(0.2)
                continue
            if marker not in result.stdout:
                what = "never started"
            elif lxc_attach_error(result.stderr) is not None:
                what = "ran, but LXC reported an error: it may have run unsupervised"
            else:
                what = "ran and failed"
            raise SandboxError(
                f"{' '.join(argv)} in {self.name} {what} (lxc-attach exited "
                f"{result.returncode})\n--- stdout ---\n{stdout}--- stderr ---\n{result.stderr}"
                + self._monitor_errors())
        raise SandboxError(f"lxc-attach to {self.name} failed 3 times before running "
                           f"{argv[0]}: {result.stderr.strip() or 'no message'}")

    def _monitor_errors(self) -> str:
        """The monitor's recent errors (its log): why it may have refused an attached
        process's seccomp listener, which lxc-attach does not say."""
        log = Path(self.lxc_path) / self.name / "start.log"
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [line for line in lines[-400:] if " ERROR " in line]
        return ("\n--- the monitor's last errors ---\n" + "\n".join(errors[-8:])) if errors else ""

    def destroy(self) -> None:
        if self._created:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop()  # lxc-destroy -f kills it anyway if this hangs
            _run(self._lxc("lxc-destroy", "-f"), timeout=120)
            self._created = False

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.destroy()
