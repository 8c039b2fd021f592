"""The bpf family in a real unprivileged container: cgroup v2 device programs.

The container sees its own v2 cgroup at its cgroup2 mount (``lxc.mount.auto
= cgroup:mixed:force``: on this hybrid host at /sys/fs/cgroup/unified,
rooted at its ``lxc.payload`` cgroup, writable by its root), and a v2
cgroup of the host's bind-mounted at /mnt/outside.  Every call is made by
tests/helpers/bpfprobe.c; where the answer is the kernel's, the same probe
run on the host as root says what the kernel answers a privileged caller.

Kernel facts the tests rest on (tests/lxc/bpfdev.py, kernel/bpf.py): a
device program attached to a cgroup refuses its devices to every task of
that cgroup and below; attaching one needs no capability once a task holds
its fd and a cgroup's, which is why the container's attaches are ours to
judge.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxc_notify_plugin.kernel import bpf as kbpf
from tests.conftest import require
from tests.lxc import bpfdev
from tests.lxc.conftest import Container, Daemon, own_cgroup2_mount

KEYS = {"security.syscalls.intercept.bpf": "true",
        "security.syscalls.intercept.bpf.devices": "true"}
SOURCE = Path(__file__).resolve().parent.parent / "helpers" / "bpfprobe.c"
HOST_V2 = Path("/sys/fs/cgroup/unified")  # this hybrid host's cgroup2 mount
CHAR = bpfdev.DEVCG_DEV_CHAR


@pytest.fixture(scope="module")
def bpfprobe(lxc_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/helpers/bpfprobe.c, static (the busybox containers have no libc)."""
    binary = tmp_path_factory.mktemp("helpers") / "bpfprobe"
    subprocess.run(["gcc", "-O2", "-static", "-Wall", "-Werror", "-o", str(binary),
                    str(SOURCE)], check=True)
    return binary


def _v2_root() -> Path:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        dash = fields.index("-")
        if fields[dash + 1] == "cgroup2" and fields[3] == "/":
            return Path(fields[4])
    raise AssertionError("no cgroup2 hierarchy on the host")


@pytest.fixture(scope="module")
def outside() -> Iterator[Path]:
    """A v2 cgroup of the host's, outside every container."""
    require(_v2_root().is_dir(), "a cgroup2 hierarchy on the host")
    path = _v2_root() / f"lxcn-bpf-outside-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        path.rmdir()


class BpfBox:
    """The container, where its cgroup2 is mounted, and its cgroup on the host."""

    def __init__(self, box: Container, inside: str, host: Path) -> None:
        self.box, self.inside, self.host = box, inside, host

    def probe(self, *args: str, uid: int = 0) -> list[str]:
        # bpfprobe exits 0 (2 if misused), and a trapped call LXC failed with ENOSYS
        # (an attach it left unsupervised, NOTES.md) made nothing: such a run is retried.
        return self.box.attach("/bin/bpfprobe", *args, uid=uid, gid=uid,
                               idempotent_unsupervised=True).splitlines()

    @contextlib.contextmanager
    def child(self, name: str = "") -> Iterator[str]:
        """A new cgroup below the container's own (the container's root makes and
        removes it), by its path inside."""
        path = f"{self.inside}/t{name}{uuid.uuid4().hex[:6]}"
        self.box.sh(f"mkdir {path}")
        try:
            yield path
        finally:
            self.box.sh(f"rmdir {path}")

    def host_dir(self, inside_path: str) -> Path:
        return self.host / os.path.relpath(inside_path, self.inside)


@pytest.fixture(scope="module")
def bpf_box(daemon: Daemon, nodeprobe: Path, bpfprobe: Path, outside: Path
            ) -> Iterator[BpfBox]:
    box = Container()
    box.daemon = daemon
    try:
        box.create()
        # After the template's own lxc.mount.auto: a later one replaces its cgroup part.
        with box.config_file.open("a") as config:
            config.write("lxc.mount.auto = cgroup:mixed:force\n"
                         f"lxc.mount.entry = {outside} mnt/outside none bind,create=dir 0 0\n")
        box.install(nodeprobe, "/bin/nodeprobe")
        box.install(bpfprobe, "/bin/bpfprobe")
        daemon.cli("enable", box.name, "--profile", "default")
        for key, value in KEYS.items():
            daemon.cli("config", "set", box.name, key, value)
        box.start()
        # Its own cgroup2 mount, not the outside cgroup's (which shows a path above it).
        inside = own_cgroup2_mount(box)
        v2 = next(line[3:] for line in Path(f"/proc/{box.init_pid()}/cgroup").read_text()
                  .splitlines() if line.startswith("0::"))
        yield BpfBox(box, inside, _v2_root() / v2.lstrip("/"))
    finally:
        box.destroy()


def programs(path: Path) -> tuple[int, int]:
    """(flags, count) of the device programs on the host's cgroup ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return kbpf.prog_query(fd, kbpf.BPF_CGROUP_DEVICE)
    finally:
        os.close(fd)


def on_host(bpfprobe: Path, *args: str) -> list[str]:
    """What the kernel answers a privileged caller (host root)."""
    return subprocess.run([str(bpfprobe), *args], capture_output=True, text=True,
                          check=True).stdout.splitlines()


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A v2 cgroup of the host's for the host's own calls."""
    path = _v2_root() / f"lxcn-bpf-scratch-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        path.rmdir()


# --- what the container may do -----------------------------------------------------------


def test_a_device_program_loaded_and_attached_below_refuses_its_device(bpf_box: BpfBox
                                                                      ) -> None:
    require(programs(bpf_box.host) == (0, 0), "no device program on the container's cgroup")
    with bpf_box.child() as child:
        assert bpf_box.probe("loadlog", "1", "3", "attach", child, "2")[1:] == ["ok"]
        assert programs(bpf_box.host_dir(child)) == (kbpf.BPF_F_ALLOW_MULTI, 1)
        # A process there is refused /dev/null; one outside is not.
        assert bpf_box.probe("join", child, "open", "/dev/null", "open", "/dev/zero") == [
            "ok", "EPERM", "ok"]
        assert bpf_box.probe("open", "/dev/null") == ["ok"]
    # Attached with the container's fd, the program stays until its cgroup goes.


def test_the_verifier_log_and_the_fd_are_the_callers(bpf_box: BpfBox, bpfprobe: Path) -> None:
    answer = bpf_box.probe("loadlog", "1", "3")
    assert answer == on_host(bpfprobe, "loadlog", "1", "3")
    assert answer[0].startswith("ok processed ")


def test_detach_replace_and_link(bpf_box: BpfBox) -> None:
    with bpf_box.child() as child:
        assert bpf_box.probe("load", "1", "3", "attach", child, "2", "detach", child,
                             "join", child, "open", "/dev/null") == ["ok"] * 5
        assert programs(bpf_box.host_dir(child)) == (0, 0)
    with bpf_box.child() as child:
        # BPF_F_REPLACE swaps the container's own program (c 1:3) for one refusing c 1:8.
        assert bpf_box.probe("load", "1", "3", "attach", child, "2", "replace", child,
                             "join", child, "open", "/dev/null", "open", "/dev/random") == [
            "ok", "ok", "ok", "ok", "ok", "EPERM"]
    with bpf_box.child() as child:
        # A link holds while its fd is open (this process).
        assert bpf_box.probe("load", "1", "5", "link", child, "join", child,
                             "open", "/dev/zero") == ["ok", "ok", "ok", "EPERM"]
        assert bpf_box.probe("join", child, "open", "/dev/zero") == ["ok", "ok"]


# --- what it may not ------------------------------------------------------------------------


@pytest.mark.parametrize("prog_type", ["1", "2", "8", "9"])  # socket filter, kprobe, skb, sock
def test_other_program_types_get_the_kernels_answer(bpf_box: BpfBox, bpfprobe: Path,
                                                    prog_type: str) -> None:
    assert on_host(bpfprobe, "loadtype", prog_type) == ["ok"]  # the kernel's own loads
    assert bpf_box.probe("loadtype", prog_type) == ["EPERM"]


def test_an_attach_outside_the_containers_subtree_is_refused(bpf_box: BpfBox,
                                                             outside: Path) -> None:
    assert bpf_box.probe("load", "1", "3", "attach", "/mnt/outside", "2",
                         "link", "/mnt/outside") == ["ok", "EPERM", "EPERM"]
    assert programs(outside) == (0, 0)


@pytest.mark.parametrize("flags", ["0", "1"])  # exclusive, override
def test_an_attach_that_could_replace_or_be_replaced_is_refused(bpf_box: BpfBox,
                                                                flags: str) -> None:
    with bpf_box.child() as child:
        assert bpf_box.probe("load", "1", "3", "attach", child, flags) == ["ok", "EPERM"]
        assert programs(bpf_box.host_dir(child)) == (0, 0)


def test_a_non_root_user_gets_eperm_for_everything(bpf_box: BpfBox) -> None:
    with bpf_box.child() as child:
        assert bpf_box.probe("load", "1", "3", uid=1000) == ["EPERM"]
        assert bpf_box.probe("loadtype", "9", uid=1000) == ["EPERM"]
        # Holding root's program (the kernel alone would let it attach: no capability
        # is checked there), still refused.
        assert bpf_box.probe("load", "1", "3", "as", "1000", "attach", child, "2",
                             "link", child, "detach", child) == [
            "ok", "ok", "EPERM", "EPERM", "EPERM"]
        assert programs(bpf_box.host_dir(child)) == (0, 0)


def test_the_hosts_override_program_is_never_widened_from_below(bpf_box: BpfBox) -> None:
    require(programs(bpf_box.host) == (0, 0), "no device program on the container's cgroup")
    with bpf_box.child() as child, contextlib.ExitStack() as stack:
        # A process that loads its program before the host attaches its own.  Its
        # output unbuffered here: select() must see every line it has not read.
        process = stack.enter_context(subprocess.Popen(
            ["lxc-attach", "-n", bpf_box.box.name, "-P", bpf_box.box.lxc_path, "--clear-env",
             "--", "/bin/bpfprobe", "load", "1", "3", "wait", "attach", child, "2",
             "link", child, "join", child, "open", "/dev/zero", "open", "/dev/null"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0))
        stack.callback(process.kill)
        assert process.stdout is not None and process.stdin is not None
        assert _line(process) == "ok"
        assert _line(process) == "waiting"
        # The host's program, refusing c 1:5, with override semantics on the
        # container's cgroup: the kernel would let any program below replace it.
        stack.enter_context(bpfdev.attached(str(bpf_box.host), [(CHAR, 1, 5)],
                                            bpfdev.BPF_F_ALLOW_OVERRIDE))
        assert bpf_box.probe("load", "1", "3") == ["EPERM"]  # no more programs
        process.stdin.write(b"go\n")
        # Neither attach nor link below; /dev/zero stays refused there.
        assert [_line(process) for _ in range(5)] == ["EPERM", "EPERM", "ok", "EPERM", "ok"]
        assert programs(bpf_box.host_dir(child)) == (0, 0)
    assert programs(bpf_box.host) == (0, 0)
    assert bpf_box.probe("load", "1", "3") == ["ok"]


def _line(process: subprocess.Popen[bytes]) -> str:
    """One line, read a byte at a time (an unbuffered pipe): nothing waits in a buffer."""
    assert process.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, f"bpfprobe said nothing for 30 s after {line!r}"
        byte = process.stdout.read(1)
        assert byte, f"bpfprobe ended after {line!r}"
        line += byte
    return line.decode().strip()


# --- hostile attrs ----------------------------------------------------------------------------

LOAD_CASES = ["load-attr-bad", "load-huge", "load-tail", "insns-bad", "license-bad",
              "insn-cnt-huge", "log-bad", "log-size-huge"]
ATTACH_CASES = ["attach-attr-bad", "attach-huge", "attach-tail", "attach-high-cmd",
                "target-fd-bad", "prog-fd-bad", "prog-not-bpf", "target-not-cgroup",
                "flags-bad", "detach-no-prog"]


def test_hostile_attrs_get_the_kernels_errors_and_the_daemon_serves_on(
        bpf_box: BpfBox, bpfprobe: Path, daemon: Daemon, scratch: Path) -> None:
    differences = []
    for case in LOAD_CASES + ATTACH_CASES:
        prefix = ["load", "1", "3"] if case in ATTACH_CASES else []
        host_dir = scratch / case
        host_dir.mkdir()
        try:
            expected = on_host(bpfprobe, *prefix, "hostile", case, str(host_dir))[-1]
        finally:
            host_dir.rmdir()
        with bpf_box.child() as child:
            got = bpf_box.probe(*prefix, "hostile", case, child)[-1]
        if got != expected:
            differences.append(f"{case}: the kernel {expected}, in the container {got}")
    assert not differences
    assert daemon.alive()
    with bpf_box.child() as child:
        assert bpf_box.probe("load", "1", "3", "attach", child, "2", "join", child,
                             "open", "/dev/null") == ["ok", "ok", "ok", "EPERM"]
    assert "Traceback" not in daemon.log()


def test_the_daemon_keeps_no_fd_of_the_callers(bpf_box: BpfBox, daemon: Daemon) -> None:
    def calls() -> None:
        with bpf_box.child() as child:
            assert bpf_box.probe("load", "1", "3", "attach", child, "2", "link", child,
                                 "hostile", "prog-not-bpf", child) == ["ok"] * 3 + ["EINVAL"]

    calls()  # the actor is spawned (kept while in use)
    before = daemon.fd_count()
    for _ in range(5):
        calls()
    assert daemon.fd_count() <= before
