"""The mount handler against real notifications, no LXC, as mknod's are tested.

A forked child stands in for a container: it unshares a user namespace
(0 -> 100000, 65536 ids, written by the test) and a mount namespace, becomes
root there, loads a notify filter for mount(2) calls that make a new
superblock, and makes the calls a step at a time.  A serving thread of the
test answers them through ``transport.listener`` and the real Dispatcher,
with a policy that emulates ext4 with shifting (idmapped).  The source is an
ext4 image on a loop device made for each test, detached and removed
whatever happens.

A second task in the child's mount namespace (the *keeper*, forked by the
test and joined to it with setns) is where the test reads the namespace's
mount table from: it outlives a caller that is killed.

Every expectation of the kernel's answer is the kernel's own: the same steps
run first in a *reference* child, real root in a private mount namespace
without a filter, and the emulated results must equal its results.

The seccomp filter is only ever loaded in forked children, which end with
``os._exit``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyseccomp
import pytest

from lxc_notify_plugin import kernel
from lxc_notify_plugin.caller import actor as actor_module
from lxc_notify_plugin.dispatch import Dispatcher, SupervisedContainer
from lxc_notify_plugin.paths import PACKAGE_PROFILES
from lxc_notify_plugin.policy import keys
from lxc_notify_plugin.policy.effective import ContainerPolicy
from lxc_notify_plugin.policy.mount import NOT_NEW
from lxc_notify_plugin.policy.profile import load_profile
from lxc_notify_plugin.state import ContainerRecord
from lxc_notify_plugin.transport.listener import serve_listener, set_sync_wake_up
from tests.conftest import require_tools
from tests.kernel.test_boundary import PAGE, PROT_NONE, pages, protect

_libc = ctypes.CDLL(None, use_errno=True)
_mount = _libc["mount"]
_mount.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulong,
                   ctypes.c_void_p)
_mmap = _libc["mmap"]
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                  ctypes.c_long)
_munmap = _libc["munmap"]
_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)

_RESULT = struct.Struct("=q")
_ID_MAP = "0 100000 65536\n"
_WAIT_S = 10.0

Step = Callable[[], int]  # run in the child; 0 or -errno


# --- what a step passes the kernel --------------------------------------------------------


@dataclass(frozen=True)
class Placed:
    """A string argument placed against an unreadable page.

    ``where``: "prot_none" (the pointer is the start of a PROT_NONE page),
    "unmapped" (of a page mapped nowhere), "crossing" (``text`` without its NUL
    runs up to a PROT_NONE page), "ending" (``text`` and its NUL are the last
    readable bytes before one)."""

    where: str
    text: bytes = b""


Arg = bytes | Placed | None  # a string, a placed string, or NULL


def _address(arg: Arg, stack: contextlib.ExitStack) -> int | None:
    if arg is None:
        return None
    if isinstance(arg, bytes):
        buffer = ctypes.create_string_buffer(arg)
        stack.callback(lambda: buffer)  # alive until the call returned
        return ctypes.addressof(buffer)
    if arg.where == "unmapped":
        base = _mmap(None, PAGE, mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        assert base not in (None, ctypes.c_void_p(-1).value)
        assert _munmap(base, PAGE) == 0
        return int(base)
    base = stack.enter_context(pages(2))
    protect(base + PAGE, PROT_NONE)
    if arg.where == "prot_none":
        return int(base + PAGE)
    text = arg.text if arg.where == "crossing" else arg.text + b"\0"
    start = base + PAGE - len(text)
    ctypes.memmove(start, text, len(text))
    return int(start)


def mount_call(source: Arg, target: Arg, fs_type: Arg = b"ext4", flags: int = 0,
               data: Arg = None, *, cwd: bytes | None = None, root: bytes | None = None
               ) -> Step:
    """A step calling mount(2) with these arguments, from ``cwd`` (else the child's
    own) under the root ``root`` (chroot, else none); the child's root and cwd
    are its own again afterwards."""

    def call() -> int:
        saved_root = os.open("/", os.O_PATH | os.O_DIRECTORY)
        saved_cwd = os.open(".", os.O_PATH | os.O_DIRECTORY)
        try:
            if root is not None:
                os.chroot(root)
                os.chdir(b"/")
            if cwd is not None:
                os.chdir(cwd)
            with contextlib.ExitStack() as stack:
                result = _mount(_address(source, stack), _address(target, stack),
                                _address(fs_type, stack), flags, _address(data, stack))
                code = 0 if result == 0 else -ctypes.get_errno()
        finally:
            os.fchdir(saved_root)
            os.chroot(".")
            os.fchdir(saved_cwd)
            os.close(saved_root)
            os.close(saved_cwd)
        return code
    return call


# --- the child: a stand-in container, or the reference ----------------------------------


def _filter_mount() -> int:
    """Load the mount family's filter (new superblocks only); its listener."""
    filt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    filt.add_rule(pyseccomp.NOTIFY, "mount", pyseccomp.Arg(3, pyseccomp.MASKED_EQ, NOT_NEW, 0))
    filt.load()
    return int(pyseccomp._libseccomp.seccomp_notify_fd(filt._filter))


def _umount_all(path: bytes) -> int:
    count = 0
    while True:
        try:
            kernel.umount2(path, kernel.MNT_DETACH)
        except OSError as err:
            assert err.errno == errno.EINVAL, err  # not a mount point (any more)
            return count
        count += 1


def _child(channel: socket.socket, steps: list[Step], container: bool) -> None:
    """Become the container (or the reference), then serve the test's commands:
    ``g`` the next step, ``u PATH`` unmount everything at PATH, ``q`` leave."""
    code = 1
    try:
        # Not pytest's cwd: a checkout in /root (0700, as a newcomer's on Debian) is
        # no place container root may even name "." in.
        os.chdir("/")
        if container:
            kernel.unshare(kernel.CLONE_NEWUSER | kernel.CLONE_NEWNS)
            channel.send(b"u")
            channel.recv(1)  # our ids are mapped
            os.setgroups([])
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)  # host 100000; every capability in our namespace kept
            kernel.set_dumpable(True)  # the id change cleared it
            listener = _filter_mount()
            socket.send_fds(channel, [b"r"], [listener])
            os.close(listener)
        else:
            kernel.unshare(kernel.CLONE_NEWNS)
            kernel.mount_setattr(kernel.AT_FDCWD, b"/", kernel.AT_RECURSIVE,
                                 propagation=kernel.MS_PRIVATE)
            channel.send(b"r")
        # SA_RESTART, as Go's preemption signal: an interrupted call is restarted.
        signal.signal(signal.SIGUSR1, lambda *_: None)
        signal.siginterrupt(signal.SIGUSR1, False)
        done = 0
        while True:
            command = channel.recv(4096)
            if command in (b"", b"q"):
                break
            if command == b"g":
                result = steps[done]()
                done += 1
            else:
                result = _umount_all(command[1:])
            channel.send(_RESULT.pack(result))
        code = 0
    except BaseException:
        traceback.print_exc()  # the test then sees the channel close: say why here
        raise
    finally:
        os._exit(code)


def _keeper(pid: int) -> int:
    """A second task in ``pid``'s mount namespace (a child of ours, reaped by us)."""
    ns_fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    ready_r, ready_w = os.pipe()
    keeper = os.fork()
    if keeper == 0:
        code = 1
        try:
            kernel.setns(ns_fd, kernel.CLONE_NEWNS)
            os.write(ready_w, b"k")
            code = 0
            signal.pause()
        finally:
            os._exit(code)
    os.close(ns_fd)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"k", "the keeper could not join the namespace"
    finally:
        os.close(ready_r)
    return keeper


@dataclass(frozen=True)
class Mounted:
    """One mount of the test's device, as the keeper's mountinfo shows it."""

    point: str
    source: str
    mount_options: str
    super_options: str


class Session:
    def __init__(self, pid: int, keeper: int, channel: socket.socket, device: str,
                 container: SupervisedContainer | None, listener: int) -> None:
        self.pid, self.keeper, self.channel, self.device = pid, keeper, channel, device
        self.container, self.listener = container, listener
        self.serving: threading.Thread | None = None
        self.tid = -1  # the serving thread's

    def assert_rested(self) -> None:
        """The serving thread is back in the host's mount namespace, root and cwd."""
        base = f"/proc/self/task/{self.tid}"
        assert os.readlink(f"{base}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
        assert os.readlink(f"{base}/root") == "/" and os.readlink(f"{base}/cwd") == "/"

    def step(self) -> int:
        self.channel.send(b"g")
        return int(_RESULT.unpack(self.channel.recv(_RESULT.size))[0])

    def umount(self, path: Path) -> int:
        self.channel.send(b"u" + bytes(path))
        return int(_RESULT.unpack(self.channel.recv(_RESULT.size))[0])

    def mounts(self) -> list[Mounted]:
        return device_mounts(f"/proc/{self.keeper}/mountinfo", self.device)

    def run(self, count: int, places: list[Path]) -> list[tuple[int, list[str]]]:
        """The next ``count`` steps' results and where the device is mounted after
        each (as mount points); every mount on ``places`` is then removed (by the
        child, as its own)."""
        results = []
        for _ in range(count):
            code = self.step()
            results.append((code, [m.point for m in self.mounts()]))
            for place in places:
                self.umount(place)
            assert self.mounts() == []
        return results


def device_mounts(mountinfo: str, device: str) -> list[Mounted]:
    rdev = os.stat(device).st_rdev
    wanted = f"{os.major(rdev)}:{os.minor(rdev)}"
    found = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if fields[2] == wanted:
                found.append(Mounted(fields[4], tail[1], fields[5], tail[2]))
    return found


def container_policy(shift: bool = True) -> SupervisedContainer:
    config = {keys.PREFIX + "mount": "true", keys.PREFIX + "mount.allowed": "ext4",
              keys.PREFIX + "mount.shift": str(shift).lower()}
    policy = ContainerPolicy.from_profile(load_profile("default", (PACKAGE_PROFILES,)), config)
    return SupervisedContainer(ContainerRecord("kernel-mount", "", "default"), policy)


@contextlib.contextmanager
def session(steps: list[Step], device: str, *, container: bool = True,
            dispatcher: Dispatcher | None = None) -> Iterator[Session]:
    """The child (a container served by the real Dispatcher, or the reference)
    and its keeper; everything ended, reaped and closed on the way out."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        parent_end.close()
        _child(child_end, steps, container)
    child_end.close()
    listener = stop_r = stop_w = keeper = -1
    thread: threading.Thread | None = None
    dispatcher = dispatcher or Dispatcher()
    served = container_policy() if container else None
    try:
        parent_end.settimeout(60)
        if container:
            assert parent_end.recv(1) == b"u"
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{pid}/{name}", "w") as id_map:
                    id_map.write(_ID_MAP)
            parent_end.send(b"m")
            ready, fds, _, _ = socket.recv_fds(parent_end, 1, 1)
            assert ready == b"r" and len(fds) == 1
            listener = fds[0]
            set_sync_wake_up(listener)
        else:
            assert parent_end.recv(1) == b"r"
        keeper = _keeper(pid)  # forked before any thread of ours starts
        s = Session(pid, keeper, parent_end, device, served, listener)
        if served is not None:
            stop_r, stop_w = os.pipe()
            listening, box = listener, served
            started = threading.Event()

            def serve() -> None:
                s.tid = threading.get_native_id()
                started.set()
                serve_listener(listening, box, pid, dispatcher, stop_r)

            thread = threading.Thread(target=serve, name="kernel-mount-serving")
            thread.start()
            s.serving = thread
            assert started.wait(_WAIT_S)
        yield s
    finally:
        with contextlib.suppress(OSError):
            parent_end.send(b"q")
        if thread is not None:
            os.write(stop_w, b"x")
            thread.join(_WAIT_S)
            assert not thread.is_alive()
        for fd in (listener, stop_r, stop_w):
            if fd >= 0:
                os.close(fd)
        for victim in (pid, keeper):
            if victim > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(victim, 0)
        dispatcher.close()
        parent_end.close()


# --- the device ---------------------------------------------------------------------------


def _released(device: str) -> bool:
    """Whether no superblock holds the device (a mount claims it exclusively)."""
    deadline = time.monotonic() + _WAIT_S
    while True:
        try:
            fd = os.open(device, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
        except OSError as err:
            if err.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
            time.sleep(0.02)
            continue
        os.close(fd)
        return True


@pytest.fixture
def loop_device() -> Iterator[str]:
    """A fresh 16 MiB ext4 image on a loop device; at the end the device must be
    free again (no superblock left by a test), and it is detached and removed
    whatever happened."""
    require_tools("mkfs.ext4", "losetup")
    fd, image = tempfile.mkstemp(prefix="lxcn-kmount-", suffix=".img", dir="/var/tmp")
    device = ""
    try:
        os.ftruncate(fd, 16 << 20)
        os.close(fd)
        fd = -1
        subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True,
                       stdout=subprocess.DEVNULL)
        device = subprocess.run(["losetup", "--find", "--show", image], check=True,
                                capture_output=True, text=True).stdout.strip()
        assert stat.S_ISBLK(os.stat(device).st_mode)
        yield device
        assert device_mounts("/proc/self/mountinfo", device) == [], "a mount reached the host"
        assert _released(device), "a superblock still holds the device"
    finally:
        if fd >= 0:
            os.close(fd)
        if device:
            subprocess.run(["losetup", "-d", device], check=False)
        os.unlink(image)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory container root (host 100000) may search (pytest's tmp_path is
    root's alone)."""
    # Not /tmp: Debian 13 mounts a tmpfs there with nodev, where the kernel refuses a
    # block node as a mount's source (EACCES) before anything this module compares.
    path = Path(tempfile.mkdtemp(prefix="lxcn-kmount-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        # A mount left in a namespace of a dead child is gone with it: rmdir works.
        for sub in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if sub.is_dir() and not sub.is_symlink():
                sub.rmdir()
            else:
                sub.unlink()
        path.rmdir()


def _both(steps: list[Step], places: list[Path], device: str
          ) -> tuple[list[tuple[int, list[str]]], list[tuple[int, list[str]]], SupervisedContainer]:
    """The steps' results from the kernel (reference) and from us (emulated)."""
    with session(steps, device, container=False) as reference:
        expected = reference.run(len(steps), places)
    with session(steps, device) as emulated:
        got = emulated.run(len(steps), places)
        assert emulated.container is not None
        stats = emulated.container
    return expected, got, stats


# --- 1. a caller killed mid-mount ---------------------------------------------------------


@pytest.mark.parametrize("point", ["superblock made", "mount attached"])
def test_a_caller_killed_mid_mount_leaves_no_mount(
        point: str, loop_device: str, open_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL while the handler works, after the actor made the superblock or
    after the mount was attached in the caller's namespace: answered as gone,
    nothing mounted in that namespace (read from a second task in it), and the
    superblock released (the loop fixture checks the device is free)."""
    target = open_dir / "mnt"
    target.mkdir()
    victim: list[int] = []
    killed: list[str] = []

    def kill() -> None:
        if not killed:
            os.kill(victim[0], signal.SIGKILL)
            os.waitpid(victim[0], 0)  # reaped: its notification is gone
            killed.append(point)

    real_new_mount = actor_module.Actor.new_mount
    real_move_mount = kernel.move_mount

    def new_mount(self: actor_module.Actor, *args: object, **kwargs: object) -> int:
        mount_fd = real_new_mount(self, *args, **kwargs)  # type: ignore[arg-type]
        if point == "superblock made":
            kill()
        return mount_fd

    def move_mount(from_fd: int, from_path: bytes, to_fd: int, to_path: bytes,
                   flags: int) -> None:
        real_move_mount(from_fd, from_path, to_fd, to_path, flags)
        if point == "mount attached" and flags & kernel.MOVE_MOUNT_T_EMPTY_PATH:
            kill()  # the handler's attach (the flag lock's moves name a path)

    monkeypatch.setattr(actor_module.Actor, "new_mount", new_mount)
    monkeypatch.setattr(kernel, "move_mount", move_mount)
    with session([mount_call(loop_device.encode(), bytes(target))], loop_device) as s:
        victim.append(s.pid)
        s.channel.send(b"g")
        assert s.container is not None
        deadline = time.monotonic() + _WAIT_S
        while not s.container.counts() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert killed == [point]
        assert s.container.counts() == {"gone": 1}
        assert s.mounts() == [], "the dead caller's namespace kept the mount"
        s.pid = -1  # reaped above


# --- 2. SA_RESTART ------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["superblock made", "mount attached"])
def test_a_restarted_mount_succeeds_exactly_once(
        point: str, loop_device: str, open_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The waiting caller takes a signal with SA_RESTART after the actor made its
    superblock, or just after its mount was attached: that mount is dropped or
    undone, the restarted call (a new notification) mounts, and the caller sees
    0 once, with one mount on the target (no EBUSY from a leftover first mount,
    no second layer)."""
    target = open_dir / "mnt"
    target.mkdir()
    real_valid = kernel.notif_id_valid
    real_new_mount = actor_module.Actor.new_mount
    real_move_mount = kernel.move_mount
    attached: list[int] = []
    armed: list[str] = []
    signalled: list[int] = []
    victim: list[int] = []

    def new_mount(self: actor_module.Actor, *args: object, **kwargs: object) -> int:
        mount_fd = real_new_mount(self, *args, **kwargs)  # type: ignore[arg-type]
        if point == "superblock made":
            armed.append(point)
        return mount_fd

    def move_mount(from_fd: int, from_path: bytes, to_fd: int, to_path: bytes,
                   flags: int) -> None:
        real_move_mount(from_fd, from_path, to_fd, to_path, flags)
        if flags & kernel.MOVE_MOUNT_T_EMPTY_PATH:  # the handler's attach
            attached.append(from_fd)
            if point == "mount attached":
                armed.append(point)

    def interrupting_valid(listener_fd: int, notif_id: int) -> bool:
        if armed and not signalled:  # the first check after the armed point
            signalled.append(notif_id)
            os.kill(victim[0], signal.SIGUSR1)
            deadline = time.monotonic() + _WAIT_S
            while real_valid(listener_fd, notif_id) and time.monotonic() < deadline:
                time.sleep(0.001)
        return real_valid(listener_fd, notif_id)

    monkeypatch.setattr(actor_module.Actor, "new_mount", new_mount)
    monkeypatch.setattr(kernel, "move_mount", move_mount)
    monkeypatch.setattr(kernel, "notif_id_valid", interrupting_valid)
    with session([mount_call(loop_device.encode(), bytes(target))], loop_device) as s:
        victim.append(s.pid)
        assert s.step() == 0
        assert len(signalled) == 1
        assert len(attached) == (2 if point == "mount attached" else 1)
        assert [m.point for m in s.mounts()] == [str(target)]
        assert s.container is not None
        assert s.container.counts() == {"gone": 1, "done": 1}
        s.assert_rested()
        assert s.umount(target) == 1


# --- 3. relative paths --------------------------------------------------------------------


def test_relative_paths_from_the_cwd_and_under_a_chroot(loop_device: str,
                                                        open_dir: Path) -> None:
    """Source and target relative to the caller's cwd (with ``..`` and a symlink),
    the target ``.``, and a chroot'd caller: relative, absolute in its root,
    ``..`` stopping at its root, and a cwd outside its root that ``..`` leaves
    (all as real root gets them)."""
    mnt, root = open_dir / "mnt", open_dir / "root"
    mnt.mkdir()
    root.mkdir(mode=0o755)
    (root / "mnt").mkdir()
    (open_dir / "link").symlink_to("mnt")
    os.mknod(root / "disk", stat.S_IFBLK | 0o600, os.stat(loop_device).st_rdev)
    # open_dir to the device: up to / first, however deep open_dir is.
    up = b"../" * (len(open_dir.parts) - 1) + loop_device.lstrip("/").encode()
    steps = [
        mount_call(up, b"mnt", cwd=bytes(open_dir)),
        mount_call(up, b"link", cwd=bytes(open_dir)),
        mount_call(b"../" + up, b".", cwd=bytes(mnt)),
        mount_call(b"disk", b"mnt", root=bytes(root)),
        mount_call(b"/disk", b"/mnt", root=bytes(root)),
        mount_call(b"../../disk", b"../mnt/", root=bytes(root)),
        mount_call(b"mnt/../../../disk", b"missing/x", root=bytes(root)),  # ENOENT
        # chroot without chdir: the cwd stays outside the root, and .. leaves it
        _chrooted_keeping_cwd(up, b"mnt", open_dir, root),
    ]
    places = [mnt, root / "mnt"]
    expected, got, container = _both(steps, places, loop_device)
    assert [code for code, _ in expected] == [0, 0, 0, 0, 0, 0, -errno.ENOENT, 0]
    assert got == expected
    assert container.counts() == {"done": 7, "errno": 1}


def _chrooted_keeping_cwd(source: bytes, target: bytes, cwd: Path, root: Path) -> Step:
    def call() -> int:
        saved_root = os.open("/", os.O_PATH | os.O_DIRECTORY)
        saved_cwd = os.open(".", os.O_PATH | os.O_DIRECTORY)
        try:
            os.chdir(cwd)
            os.chroot(root)  # the cwd stays where it was: outside the new root
            return mount_call(source, target)()
        finally:
            os.fchdir(saved_root)
            os.chroot(".")
            os.fchdir(saved_cwd)
            os.close(saved_root)
            os.close(saved_cwd)
    return call


# --- 4. unreadable pages ------------------------------------------------------------------


def test_unreadable_arguments_are_the_kernels_efault(loop_device: str, open_dir: Path) -> None:
    """A source, target, type or data pointer on a PROT_NONE page or on no page,
    or a string running into one, is EFAULT as the kernel gives it, before any
    other check (a missing target, a refused option); a data string whose NUL
    is the last readable byte is the kernel's whole option string.

    Not tested: a data string with no NUL before the fault.  The kernel copies
    the readable part into a kmalloc'd page and NULs only its last byte
    (copy_mount_options, path_mount): the options after the fault are whatever
    that page held before, so there is no kernel answer to compare with."""
    target = open_dir / "mnt"
    target.mkdir()
    dev, tgt, missing = loop_device.encode(), bytes(target), bytes(open_dir / "missing")
    none, unmapped = Placed("prot_none"), Placed("unmapped")
    cases: list[tuple[str, Step]] = [
        ("source prot_none", mount_call(none, tgt)),
        ("source unmapped", mount_call(unmapped, tgt)),
        ("source crossing", mount_call(Placed("crossing", dev), tgt)),
        ("target prot_none", mount_call(dev, none)),
        ("target unmapped", mount_call(dev, unmapped)),
        ("target crossing", mount_call(dev, Placed("crossing", tgt))),
        ("type prot_none", mount_call(dev, tgt, none)),
        ("type crossing", mount_call(dev, tgt, Placed("crossing", b"ext4"))),
        ("data prot_none", mount_call(dev, tgt, data=none)),
        ("data unmapped", mount_call(dev, tgt, data=unmapped)),
        ("data prot_none, target missing", mount_call(dev, missing, data=none)),
        ("source prot_none, target missing", mount_call(none, missing)),
        ("target prot_none, errors=panic", mount_call(dev, none, data=b"errors=panic")),
        ("data ending at the fault", mount_call(dev, tgt, data=Placed("ending", b"nodelalloc"))),
        ("source and target ending at the fault",
         mount_call(Placed("ending", dev), Placed("ending", tgt))),
        ("empty data before the fault", mount_call(dev, tgt, data=Placed("ending"))),
    ]
    steps = [step for _, step in cases]
    places = [target]
    expected, got, _ = _both(steps, places, loop_device)
    named_expected = {name: code for (name, _), (code, _) in zip(cases, expected, strict=True)}
    named_got = {name: code for (name, _), (code, _) in zip(cases, got, strict=True)}
    assert named_expected == {name: (0 if "before the fault" in name or "ending" in name
                                     else -errno.EFAULT) for name, _ in cases}
    assert named_got == named_expected
    assert got == expected


def test_a_data_string_cut_by_the_fault_keeps_its_options(loop_device: str,
                                                          open_dir: Path) -> None:
    """The options read up to a PROT_NONE page reach the superblock, as the
    kernel's (nodelalloc shows in the super options of both mounts)."""
    target = open_dir / "mnt"
    target.mkdir()
    steps = [mount_call(loop_device.encode(), bytes(target),
                        data=Placed("ending", b"nodelalloc,commit=7"))]
    supers = []
    for container in (False, True):
        with session(steps, loop_device, container=container) as s:
            assert s.step() == 0
            (mounted,) = s.mounts()
            supers.append(set(mounted.super_options.split(",")))
            assert s.umount(target) == 1
    reference, emulated = supers
    assert {"nodelalloc", "commit=7"} <= reference
    assert {"nodelalloc", "commit=7"} <= emulated


def test_the_mount_table_names_the_callers_source(loop_device: str, open_dir: Path) -> None:
    """mountinfo's source field is the string the caller passed, as the kernel
    keeps it (fc->source): what findmnt, df and ``umount SOURCE`` go by."""
    target = open_dir / "mnt"
    target.mkdir()
    up = b"../" * (len(open_dir.parts) - 1) + loop_device.lstrip("/").encode()
    steps = [mount_call(loop_device.encode(), bytes(target)),
             mount_call(up, b"mnt", cwd=bytes(open_dir))]
    sources = []
    for container in (False, True):
        with session(steps, loop_device, container=container) as s:
            seen = []
            for _ in steps:
                assert s.step() == 0
                seen.append([m.source for m in s.mounts()])
                assert s.umount(target) == 1
            sources.append(seen)
    reference, emulated = sources
    assert reference == [[loop_device], [up.decode()]]
    assert emulated == reference


# --- 5. no leak -----------------------------------------------------------------------------


def _our_children(marker: bytes) -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue  # exited meanwhile
        if ppid == me and marker in cmdline:
            found.append(int(entry))
    return found


def test_many_mounts_leak_no_fd_and_keep_one_actor(loop_device: str, open_dir: Path) -> None:
    """Thirty mounts and unmounts: the daemon's fd count after the second is its
    count after the last, one actor serves them all, and it is gone with the
    serving thread."""
    target = open_dir / "mnt"
    target.mkdir()
    rounds = 30
    steps = [mount_call(loop_device.encode(), bytes(target)) for _ in range(rounds)]
    actor_marker = b"lxc_notify_plugin.caller.actor"
    fd_counts, actors = [], []
    with session(steps, loop_device) as s:
        for _ in range(rounds):
            assert s.step() == 0
            assert [m.point for m in s.mounts()] == [str(target)]
            assert s.umount(target) == 1
            fd_counts.append(len(os.listdir("/proc/self/fd")))
            actors.append(len(_our_children(actor_marker)))
        assert s.container is not None
        assert s.container.counts() == {"done": rounds}
        s.assert_rested()
    assert len(set(fd_counts[1:])) == 1, fd_counts
    assert set(actors) == {1}, actors
    deadline = time.monotonic() + _WAIT_S
    while _our_children(actor_marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _our_children(actor_marker) == []
