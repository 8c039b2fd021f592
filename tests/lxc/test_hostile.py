"""mknod as the kernel would do it for a hostile caller: every answer compared with the kernel's.

The kernel's own answer comes from the overlay whiteout (``c 0:0``): the
kernel makes it for an unprivileged caller itself, through the same path
code, and our filter never traps it.  So for each path, ``mknod P c 0 0``
(the kernel) and ``mknod P c 1 3`` (us) must agree.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lxc.conftest import DEVICES, Container, Daemon, supervised_container


def unique(prefix: str = "h") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def both(container: Container, path: str, **kw: object) -> tuple[str, str]:
    """(the kernel's answer, ours) for a node at ``path`` (each removed after)."""
    kernel = container.probe("mknod", path + ".w", "c", "0", "0", **kw)  # type: ignore[arg-type]
    ours = container.probe("mknod", path, "c", "1", "3", **kw)  # type: ignore[arg-type]
    return kernel, ours


def test_the_walk_has_only_the_callers_rights(container: Container) -> None:
    """Below a directory whose owner the container does not map (host root, 0700),
    container root may not search: EACCES for every name, whatever is there."""
    hidden = container.rootfs / "tmp" / unique("hostroot")
    (hidden / "sub").mkdir(parents=True)
    (hidden / "file").write_text("x")
    os.chmod(hidden, 0o700)
    base = f"/tmp/{hidden.name}"
    for path in (f"{base}/sub/x", f"{base}/file/x", f"{base}/nothing/x", f"{base}/x"):
        assert both(container, path) == ("EACCES", "EACCES"), path
    assert not any(p.name.startswith("x") for p in hidden.rglob("*"))


def test_root_searches_what_its_namespace_maps(container: Container) -> None:
    """A 0700 directory of container uid 1000: container root's CAP_DAC_READ_SEARCH
    applies (the owner is mapped), through the helper in its user namespace."""
    d = f"/tmp/{unique('u1000')}"
    container.sh(f"mkdir -p {d}/sub && chown -R 1000:1000 {d} && chmod -R 0700 {d}")
    assert both(container, f"{d}/sub/x") == ("ok", "ok")
    assert container.probe("stat", f"{d}/sub/x").endswith("major 1 minor 3")
    # And the same walk from a relative path.
    assert container.probe("mknod", "sub/y", "c", "1", "3", cwd=d) == "ok"
    # A user other than the owner gets the kernel's EACCES from both.
    assert both(container, f"{d}/sub/z", uid=2000, gid=2000) == ("EACCES", "EACCES")


def test_memory_is_read_as_the_kernel_reads_it(container: Container) -> None:
    assert container.probe("protnone", "c", "0", "0") == "EFAULT"  # the kernel
    assert container.probe("protnone", "c", "1", "3") == "EFAULT"  # us


def test_i386_garbage_above_32_bits_is_ignored(container: Container) -> None:
    path = f"/tmp/{unique('i386hi')}"
    assert container.probe("mknod32hi", path, "c", "1", "3") == "ok"
    assert container.probe("stat", path).endswith("major 1 minor 3")


def test_thousands_of_groups(container: Container) -> None:
    path = f"/tmp/{unique('groups')}"
    assert container.probe("groups", "3000", path, "c", "1", "3") == "ok"
    assert container.probe("stat", path).endswith("major 1 minor 3")


def test_the_callers_own_names_for_itself(container: Container) -> None:
    d = f"/tmp/{unique('self')}"
    container.sh(f"mkdir {d}")
    script = (f"cd {d} && /bin/nodeprobe mknod /proc/self/cwd/a c 1 3 && "
              f"exec 3<{d} && /bin/nodeprobe mknod /dev/fd/3/b c 1 3 && "
              f"/bin/nodeprobe mknod /proc/self/fd/3/c c 1 3 && "
              f"/bin/nodeprobe mknod /proc/self/root{d}/e c 1 3")
    # nodeprobe exits 0 whatever its calls answer, and an unsupervised run (LXC's
    # lxc-attach quirk: every trapped call ENOSYS) makes nothing: retried as such.
    out = container.attach("/bin/sh", "-c", script, idempotent_unsupervised=True)
    assert out.split() == ["ok"] * 4
    for name in "abce":
        assert container.probe("stat", f"{d}/{name}").endswith("major 1 minor 3")
    # Another task's magic links are followed with the caller's rights (container
    # root may ptrace its init), as the kernel follows them; never with ours.
    assert container.probe("mknod", f"/proc/1/root{d}/f", "c", "1", "3") == "ok"
    assert container.probe("stat", f"{d}/f").endswith("major 1 minor 3")


def test_dotdot_survives_renames_on_the_host(container: Container, tmp_path: Path) -> None:
    """RESOLVE_IN_ROOT answers EAGAIN for '..' when a rename races the walk; the
    kernel's own walks retry, and so do we."""
    stop = threading.Event()

    def rename_forever() -> None:
        a, b = tmp_path / "a", tmp_path / "b"
        a.write_text("x")
        while not stop.is_set():
            a.rename(b)
            b.rename(a)

    renamer = threading.Thread(target=rename_forever)
    renamer.start()
    try:
        out = container.probe("bench", "2000", f"/tmp/../tmp/{unique('dotdot')}", "c", "1", "3")
    finally:
        stop.set()
        renamer.join()
    assert out.startswith("calls 2000 ok 2000"), out


def test_an_interrupted_caller_through_lxc(container: Container, daemon: Daemon) -> None:
    """Under a 2 ms SA_RESTART timer, calls are interrupted and restarted as new
    notifications.  Nodes made for calls abandoned while we worked are undone
    (counted "gone"); LXC 5.0.2 answers the kernel itself after our reply, and a
    call interrupted during that hop still meets its node (EEXIST): measured
    here, documented in docs/CONTEXT.md, not hidden.  The exact undo is proven
    in tests/kernel/test_dispatch_identity.py."""
    before = daemon.log().count("left mknod")
    out = container.probe("restart", "3000", f"/tmp/{unique('restart')}", "1", "3").split()
    values = dict(zip(out[::2], map(int, out[1::2]), strict=True))
    assert values["signals"] > 100, values  # the timer really interrupted calls
    assert values["other"] == 0 and values["ok"] + values["eexist"] == 3000, values
    undone = daemon.log().count("left mknod") - before
    print(f"restart under a 2 ms timer: {values}, abandoned calls undone by us: {undone}")
    assert undone > 0


def test_nodev_remount_and_full_filesystems(container: Container) -> None:
    m = f"/mnt/{unique('nodev')}"
    container.sh(f"mkdir -p {m} && mount -t tmpfs tmpfs {m}")
    try:
        assert container.probe("mknod", f"{m}/first", "c", "1", "3") == "ok"
        assert container.probe("open", f"{m}/first") == "ok"  # a usable twin
        container.sh(f"mount -o remount,bind,nodev {m}")
        assert container.probe("mknod", f"{m}/second", "c", "1", "3") == "ok"
        assert container.probe("open", f"{m}/second") == "EACCES"  # as a privileged container
    finally:
        container.sh(f"umount {m}/first; umount {m}; true")
    # Room for exactly one more inode: the caller's node, no probe beside it.
    full = f"/mnt/{unique('full')}"
    container.sh(f"mkdir -p {full} && mount -t tmpfs -o nr_inodes=2 tmpfs {full}")
    try:
        assert container.probe("mknod", f"{full}/w", "c", "0", "0") == "ok"  # the kernel
        container.sh(f"rm {full}/w")
        assert container.probe("mknod", f"{full}/null", "c", "1", "3") == "ok"
        assert container.probe("open", f"{full}/null") == "ok"
    finally:
        container.sh(f"umount {full}/null; umount {full}; true")


def test_a_twin_is_a_node_like_any_other(container: Container) -> None:
    """Link count 1, and it can be bind-mounted again (Docker's --device does that)."""
    node = f"/dev/{unique('twin')}"
    target = f"/tmp/{unique('bound')}"
    assert container.probe("mknod", node, "c", "1", "3") == "ok"
    assert container.sh(f"stat -c %h {node}").strip() == "1"
    container.sh(f"touch {target} && mount --bind {node} {target}")
    try:
        assert container.probe("open", target) == "ok"
    finally:
        container.sh(f"umount {target}; umount {node}; true")


def test_a_cwd_on_a_lazily_unmounted_filesystem(container: Container) -> None:
    """The kernel makes the node there (no mount reaches it any more); so do we."""
    m = f"/tmp/{unique('lazy')}"
    out = container.sh(f"mkdir -p {m} && mount -t tmpfs tmpfs {m} && cd {m}"
                       f" && umount -l {m} && /bin/nodeprobe mknod ./w c 0 0"
                       f" && /bin/nodeprobe mknod ./null c 1 3 && ls {m}")
    assert out.split() == ["ok", "ok"]  # made (kernel, us), and nothing left in the namespace


@pytest.fixture(scope="module")
def denied_null(daemon: Daemon, nodeprobe: Path) -> Iterator[Container]:
    """A container whose device cgroup does not allow c 1:9 (/dev/urandom): deny
    all, then allow, as LXC's common.conf and Docker set theirs up."""
    allowed = ("c 1:3", "c 1:5", "c 1:7", "c 1:8", "c 5:0", "c 5:1", "c 5:2", "c 136:*")
    config = f"{DEVICES}.deny = a\n" + "".join(
        f"{DEVICES}.allow = {device} rwm\n" for device in allowed)
    box = Container()
    box.daemon = daemon
    try:
        box.create(config)
        box.install(nodeprobe, "/bin/nodeprobe")
        daemon.cli("enable", box.name, "--profile", "default")
        box.start()
        yield box
    finally:
        box.destroy()


def test_the_callers_device_cgroup_decides(denied_null: Container) -> None:
    lists = Path(f"/proc/{denied_null.init_pid()}/cgroup").read_text()
    assert "devices:" in lists
    assert denied_null.probe("mknod", f"/tmp/{unique('urandom')}", "c", "1", "9") == "EPERM"
    assert denied_null.probe("mknod", f"/tmp/{unique('null')}", "c", "1", "3") == "ok"
    assert denied_null.probe("mknod", f"/tmp/{unique('missing')}/x", "c", "1", "9") == "ENOENT"


def test_restart_test_container_is_unharmed(daemon: Daemon, nodeprobe: Path) -> None:
    """After the hostile tests, a fresh container is served as usual."""
    box = supervised_container(daemon, nodeprobe)
    try:
        deadline = time.monotonic() + 5
        while box.probe("mknod", "/tmp/n", "c", "1", "3") != "ok":
            assert time.monotonic() < deadline
    finally:
        box.destroy()


def test_the_first_helper_walk_may_be_relative(daemon: Daemon, nodeprobe: Path) -> None:
    """The helper is spawned outside the caller's root even when the walk that needs
    it is relative (under the chroot, its paths would be the container's to choose)."""
    box = supervised_container(daemon, nodeprobe)
    try:
        d = f"/tmp/{unique('rel1000')}"
        box.sh(f"mkdir -p {d}/sub && chown -R 1000:1000 {d} && chmod -R 0700 {d}")
        assert box.probe("mknod", "sub/x", "c", "1", "3", cwd=d) == "ok"
        assert box.probe("stat", f"{d}/sub/x").endswith("major 1 minor 3")
    finally:
        box.destroy()
