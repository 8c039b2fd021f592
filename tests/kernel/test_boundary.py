"""The kernel package's boundary against the real kernel: struct layouts, the
signature tables, memory access as copy_from_user does it, the new mount API,
credentials and prctl.

Whatever changes credentials, namespaces or mounts runs in a forked child
that always ends with ``os._exit`` and reports over a pipe (``in_child``);
the test runner's own process only reads.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import pickle
import signal
import stat
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pyseccomp
import pytest

from lxc_notify_plugin import kernel
from lxc_notify_plugin.kernel import _ctypeslib
from tests.conftest import kernel_has_since

PAGE = mmap.PAGESIZE
PROT_NONE = 0  # the mmap module has PROT_READ and PROT_WRITE only
_libc = ctypes.CDLL(None, use_errno=True)
_mmap = _libc["mmap"]
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                  ctypes.c_long)
_mprotect = _libc["mprotect"]
_mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_munmap = _libc["munmap"]
_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)


def in_child(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a forked child; return its picklable result or fail with its traceback."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            try:
                report = (True, work())
            except BaseException:  # reported to the parent, which fails the test
                report = (False, traceback.format_exc())
            with os.fdopen(write_end, "wb") as out:
                pickle.dump(report, out)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as channel:
        data = channel.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the child died without a report"
    ok, result = pickle.loads(data)
    assert ok, f"in the child:\n{result}"
    return result


@contextmanager
def pages(count: int) -> Iterator[int]:
    """``count`` fresh read-write anonymous pages of this process: their address."""
    base = _mmap(None, count * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                 mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert base not in (None, ctypes.c_void_p(-1).value)
    try:
        yield base
    finally:
        _munmap(base, count * PAGE)


def protect(address: int, prot: int) -> None:
    assert _mprotect(address, PAGE, prot) == 0, os.strerror(ctypes.get_errno())


def raises_errno(code: int, call: Callable[[], object]) -> OSError:
    with pytest.raises(OSError) as raised:
        call()
    assert raised.value.errno == code, raised.value
    return raised.value


# --- layouts and tables ---------------------------------------------------------------------


def test_structs_have_the_kernels_sizes() -> None:
    sizes = {
        kernel.open_how: 24, kernel.mount_attr: 32, kernel.statx: 256,
        kernel.statx_timestamp: 16, kernel.seccomp_notif: 80, kernel.seccomp_notif_resp: 24,
        kernel.seccomp_data: 64, kernel.seccomp_notif_addfd: 24, kernel.seccomp_notif_sizes: 6,
        kernel.iovec: 16, kernel.user_cap_header_struct: 8, kernel.user_cap_data_struct: 12,
    }
    assert {struct.__name__: ctypes.sizeof(struct) for struct in sizes} == \
        {struct.__name__: size for struct, size in sizes.items()}
    assert ctypes.sizeof(kernel.mount_attr) == kernel.MOUNT_ATTR_SIZE_VER0
    # statx's offsets as the header comments give them
    assert (kernel.statx.stx_atime.offset, kernel.statx.stx_rdev_major.offset,
            kernel.statx.stx_mnt_id.offset, kernel.statx.stx_subvol.offset,
            kernel.statx._spare3.offset) == (0x40, 0x80, 0x90, 0xA0, 0xC0)
    assert kernel.seccomp_notif.data.offset == 16
    assert kernel.mount_attr.userns_fd.offset == 24


def test_ioctl_numbers() -> None:
    assert (kernel.SECCOMP_IOCTL_NOTIF_RECV, kernel.SECCOMP_IOCTL_NOTIF_SEND,
            kernel.SECCOMP_IOCTL_NOTIF_ID_VALID, kernel.SECCOMP_IOCTL_NOTIF_ADDFD,
            kernel.SECCOMP_IOCTL_NOTIF_SET_FLAGS) == \
        (0xC0502100, 0xC0182101, 0x40082102, 0x40182103, 0x40082104)
    assert (kernel.NS_GET_USERNS, kernel.NS_GET_PARENT) == (0xB701, 0xB702)


def test_audit_arches_are_libseccomps() -> None:
    assert (kernel.AUDIT_ARCH_X86_64, kernel.AUDIT_ARCH_I386, kernel.AUDIT_ARCH_X32,
            kernel.AUDIT_ARCH_AARCH64, kernel.AUDIT_ARCH_ARM) == \
        (pyseccomp.Arch.X86_64, pyseccomp.Arch.X86, pyseccomp.Arch.X32,
         pyseccomp.Arch.AARCH64, pyseccomp.Arch.ARM)


def test_syscall_numbers_are_keyed_as_notifications_report_them() -> None:
    table = kernel.syscall_numbers(("mknod", "mknodat"), machine="x86_64")
    assert table[(kernel.AUDIT_ARCH_X86_64, 133)] == "mknod"
    assert table[(kernel.AUDIT_ARCH_I386, 14)] == "mknod"
    # x32 calls arrive as AUDIT_ARCH_X86_64 with __X32_SYSCALL_BIT in nr
    assert table[(kernel.AUDIT_ARCH_X86_64, kernel.X32_SYSCALL_BIT | 133)] == "mknod"
    assert not any(arch == kernel.AUDIT_ARCH_X32 for arch, _ in table)
    arm = kernel.syscall_numbers(("mknod", "mknodat"), machine="aarch64")
    assert set(arm.values()) == {"mknod", "mknodat"}  # AArch32 has mknod, aarch64 does not
    assert "mknod" not in {name for (arch, _), name in arm.items()
                           if arch == kernel.AUDIT_ARCH_AARCH64}
    with pytest.raises(RuntimeError):
        kernel.syscall_numbers(("mknod",), machine="riscv64")
    with pytest.raises(RuntimeError):
        kernel.native_syscall_number("no_such_syscall")


def test_every_table_entry_loads_and_every_raw_syscall_has_a_number() -> None:
    for name in _ctypeslib.LIBC:
        assert callable(_ctypeslib.function(name))
    for name in _ctypeslib.SYSCALLS:
        assert _ctypeslib.syscall(name).nr == pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE,
                                                                        name) >= 0


def test_each_raw_syscall_has_its_own_typed_pointer() -> None:
    setns, unshare = _ctypeslib.syscall("setns"), _ctypeslib.syscall("unshare")
    assert setns._pointer is not unshare._pointer
    assert setns._pointer.argtypes == (ctypes.c_long, ctypes.c_int, ctypes.c_int)
    assert unshare._pointer.argtypes == (ctypes.c_long, ctypes.c_ulong)
    assert _ctypeslib._libc.syscall.argtypes is None  # the shared attribute stays untouched


def test_64_bit_arguments_are_not_truncated() -> None:
    """openat2's size is a size_t: 2**32 + 24 is E2BIG, where a 32-bit int would pass 24."""
    openat2 = _ctypeslib.syscall("openat2")
    how = kernel.open_how(os.O_PATH | os.O_CLOEXEC, 0, 0)
    raises_errno(errno.E2BIG, lambda: openat2(kernel.AT_FDCWD, b"/", ctypes.byref(how),
                                              (1 << 32) + 24))
    fd = openat2(kernel.AT_FDCWD, b"/", ctypes.byref(how), 24)
    os.close(fd)


def test_errors_carry_the_errno_and_the_calls_name() -> None:
    err = raises_errno(errno.ENOENT, lambda: kernel.openat2(kernel.AT_FDCWD, b"/nonexistent/x",
                                                            os.O_RDONLY, 0))
    assert isinstance(err, FileNotFoundError)
    assert err.strerror == f"openat2: {os.strerror(errno.ENOENT)}"
    err = raises_errno(errno.EBADF, lambda: kernel.notif_id_valid(-1, 1))
    assert str(err.strerror).startswith("SECCOMP_IOCTL_NOTIF_ID_VALID: ")
    ctypes.set_errno(0)
    with pytest.raises(RuntimeError):
        _ctypeslib.errno_on_minus_one(-1, "nothing")


def test_importing_the_package_needs_no_libseccomp() -> None:
    code = ("import sys\n"
            "from lxc_notify_plugin import kernel\n"
            "notif = kernel.seccomp_notif.from_buffer_copy(bytes(80))\n"
            "assert 'pyseccomp' not in sys.modules, 'imported'\n"
            "kernel.notif_sizes()\n"  # the first raw syscall asks libseccomp for its number
            "assert 'pyseccomp' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# --- memory ---------------------------------------------------------------------------------


def test_process_vm_readv_honours_prot_none_where_proc_mem_does_not() -> None:
    me = os.getpid()
    with pages(2) as base:
        ctypes.memmove(base + PAGE, b"secret\0", 7)
        protect(base + PAGE, PROT_NONE)
        raises_errno(errno.EFAULT, lambda: kernel.read_task_memory(me, base + PAGE, 6))
        raises_errno(errno.EFAULT, lambda: kernel.read_task_c_string(me, base + PAGE))
        mem = os.open("/proc/self/mem", os.O_RDONLY | os.O_CLOEXEC)
        try:  # FOLL_FORCE: the debugger's view
            assert kernel.read_memory(mem, base + PAGE, 6) == b"secret"
            assert kernel.read_c_string(mem, base + PAGE) == b"secret"
        finally:
            os.close(mem)
        # a read running from a good page into the bad one is short: EFAULT
        raises_errno(errno.EFAULT, lambda: kernel.read_task_memory(me, base + PAGE - 4, 8))
        ctypes.memmove(base, b"x" * PAGE, PAGE)
        assert kernel.read_task_memory(me, base + PAGE - 4, 4) == b"xxxx"


def test_strings_across_pages_and_up_to_a_bad_page() -> None:
    me = os.getpid()
    with pages(3) as base:
        ctypes.memmove(base + PAGE - 3, b"abcdef\0", 7)  # crosses into the second page
        assert kernel.read_task_c_string(me, base + PAGE - 3) == b"abcdef"
        long = b"p" * (PAGE + 100)  # crosses two page boundaries
        ctypes.memmove(base + PAGE - 50, long + b"\0", len(long) + 1)
        assert kernel.read_task_c_string(me, base + PAGE - 50, limit=2 * PAGE) == long
        protect(base + PAGE, PROT_NONE)
        ctypes.memmove(base + PAGE - 4, b"abc\0", 4)  # ends just before the bad page
        assert kernel.read_task_c_string(me, base + PAGE - 4) == b"abc"
        ctypes.memmove(base + PAGE - 4, b"abcd", 4)  # runs into it
        raises_errno(errno.EFAULT, lambda: kernel.read_task_c_string(me, base + PAGE - 4))


def test_a_string_without_nul_within_the_limit_is_enametoolong() -> None:
    me = os.getpid()
    with pages(2) as base:
        ctypes.memmove(base, b"a" * (2 * PAGE), 2 * PAGE)
        raises_errno(errno.ENAMETOOLONG, lambda: kernel.read_task_c_string(me, base, limit=PAGE))
        raises_errno(errno.ENAMETOOLONG, lambda: kernel.read_task_c_string(me, base + 10,
                                                                           limit=10))
        ctypes.memmove(base + 9, b"\0", 1)  # 9 bytes and the NUL: fits a limit of 10
        assert kernel.read_task_c_string(me, base, limit=10) == b"a" * 9
        raises_errno(errno.ENAMETOOLONG, lambda: kernel.read_task_c_string(me, base, limit=9))
        ctypes.memmove(base + 9, b"a", 1)
        ctypes.memmove(base + kernel.PATH_MAX - 1, b"\0", 1)  # PATH_MAX with its NUL: fits
        assert len(kernel.read_task_c_string(me, base)) == kernel.PATH_MAX - 1
        ctypes.memmove(base + kernel.PATH_MAX - 1, b"a\0", 2)  # one more: does not
        raises_errno(errno.ENAMETOOLONG, lambda: kernel.read_task_c_string(me, base))


def test_bad_addresses_are_efault() -> None:
    me = os.getpid()
    for bad in (0, -1, 8, 1 << 63, (1 << 64) - 1, 1 << 64, 1 << 70):
        raises_errno(errno.EFAULT, partial(kernel.read_task_c_string, me, bad))
        raises_errno(errno.EFAULT, partial(kernel.read_task_memory, me, bad, 8))
        raises_errno(errno.EFAULT, partial(kernel.write_task_memory, me, bad, b"x"))
    raises_errno(errno.EFAULT, lambda: kernel.read_task_memory(me, (1 << 64) - 4, 8))


def test_large_reads_and_concurrent_threads() -> None:
    me = os.getpid()
    with pages(3) as base:
        blob = os.urandom(3 * PAGE)
        ctypes.memmove(base, blob, len(blob))
        assert kernel.read_task_memory(me, base, len(blob)) == blob
        strings = [f"/thread/{i}/path".encode() + b"\0" for i in range(4)]
        for i, text in enumerate(strings):
            ctypes.memmove(base + i * 64, text, len(text))
        wrong: list[bytes] = []

        def reader(i: int) -> None:
            for _ in range(500):
                got = kernel.read_task_c_string(me, base + i * 64)
                if got != strings[i][:-1]:
                    wrong.append(got)

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert wrong == []


def test_a_task_that_is_gone_is_esrch() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    with pages(1) as base:
        raises_errno(errno.ESRCH, lambda: kernel.read_task_memory(pid, base, 8))
        raises_errno(errno.ESRCH, lambda: kernel.read_task_c_string(pid, base))
        raises_errno(errno.ESRCH, lambda: kernel.write_task_memory(pid, base, b"x"))


def test_write_task_memory_into_a_child() -> None:
    """The child maps a writable page and a read-only one; we write; it checks."""
    to_parent_r, to_parent_w = os.pipe()
    to_child_r, to_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            base = _mmap(None, 2 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                         mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
            _mprotect(base + PAGE, PAGE, mmap.PROT_READ)
            os.write(to_parent_w, base.to_bytes(8, "little"))
            os.read(to_child_r, 1)  # the parent has written
            good = (ctypes.string_at(base + 8, 6) == b"hello\0"
                    and ctypes.string_at(base + PAGE - 2, 2) == b"ab"
                    and ctypes.string_at(base + PAGE, PAGE) == bytes(PAGE))
            os.write(to_parent_w, b"y" if good else b"n")
            code = 0
        finally:
            os._exit(code)
    try:
        base = int.from_bytes(os.read(to_parent_r, 8), "little")
        kernel.write_task_memory(pid, base + 8, b"hello\0")
        assert kernel.read_task_c_string(pid, base + 8) == b"hello"
        raises_errno(errno.EFAULT, lambda: kernel.write_task_memory(pid, base + PAGE, b"x"))
        # a write running into the read-only page is short: EFAULT, the first bytes written
        raises_errno(errno.EFAULT, lambda: kernel.write_task_memory(pid, base + PAGE - 2,
                                                                    b"abcd"))
        big = os.urandom(PAGE + 1)  # larger than the per-thread buffer, and read-only at the end
        raises_errno(errno.EFAULT, lambda: kernel.write_task_memory(pid, base, big))
        kernel.write_task_memory(pid, base + 8, b"hello\0")
        kernel.write_task_memory(pid, base + PAGE - 2, b"ab")
        os.write(to_child_w, b"g")
        assert os.read(to_parent_r, 1) == b"y"
    finally:
        for fd in (to_parent_r, to_parent_w, to_child_r, to_child_w):
            os.close(fd)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# --- mounts ---------------------------------------------------------------------------------


def _private_mount_namespace() -> None:
    kernel.unshare(kernel.CLONE_NEWNS)
    # The copy keeps "/" shared with the host: make it private before mounting anything.
    kernel.mount_setattr(kernel.AT_FDCWD, b"/", kernel.AT_RECURSIVE,
                         propagation=kernel.MS_PRIVATE)


def _new_tmpfs(exclusive: bool = False) -> int:
    fs_fd = kernel.fsopen(b"tmpfs")
    try:
        kernel.fsconfig(fs_fd, kernel.FSCONFIG_SET_STRING, b"mode", b"0755")
        kernel.fsconfig(fs_fd, kernel.FSCONFIG_SET_STRING, b"size", b"1m")
        if kernel_has_since(6, 4):
            kernel.fsconfig(fs_fd, kernel.FSCONFIG_SET_FLAG, b"noswap")
        kernel.fsconfig(fs_fd, kernel.FSCONFIG_CMD_CREATE_EXCL if exclusive
                        else kernel.FSCONFIG_CMD_CREATE)
        return kernel.fsmount(fs_fd, kernel.FSMOUNT_CLOEXEC, kernel.MOUNT_ATTR_NODEV)
    finally:
        os.close(fs_fd)


def _fs_type(path: str) -> str:
    found = ""
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if fields[4] == path:
                found = fields[fields.index("-") + 1]
    return found


def test_new_mount_api_end_to_end(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()

    def work() -> dict[str, object]:
        _private_mount_namespace()
        result: dict[str, object] = {}
        mnt = _new_tmpfs()
        kernel.move_mount(mnt, b"", kernel.AT_FDCWD, bytes(a), kernel.MOVE_MOUNT_F_EMPTY_PATH)
        os.close(mnt)
        result["type"] = _fs_type(str(a))
        (a / "file").write_text("data")
        tree = kernel.open_tree(kernel.AT_FDCWD, bytes(a),
                                kernel.OPEN_TREE_CLONE | kernel.OPEN_TREE_CLOEXEC)
        kernel.move_mount(tree, b"", kernel.AT_FDCWD, bytes(b), kernel.MOVE_MOUNT_F_EMPTY_PATH)
        os.close(tree)
        result["clone"] = (b / "file").read_text()
        kernel.mount_setattr(kernel.AT_FDCWD, bytes(a), 0, attr_set=kernel.MOUNT_ATTR_RDONLY)
        try:
            (a / "new").write_text("x")
            result["rdonly"] = 0
        except OSError as err:
            result["rdonly"] = err.errno
        (b / "new").write_text("x")  # the clone is its own mount: still writable
        result["shared_sb"] = (a / "new").read_text()
        # fspick + CMD_RECONFIGURE on the superblock both mounts share
        picked = kernel.fspick(kernel.AT_FDCWD, bytes(b))
        kernel.fsconfig(picked, kernel.FSCONFIG_SET_STRING, b"size", b"2m")
        kernel.fsconfig(picked, kernel.FSCONFIG_CMD_RECONFIGURE)
        os.close(picked)
        result["size"] = os.statvfs(a).f_blocks * os.statvfs(a).f_frsize
        # fsconfig's aux reaches the kernel: SET_FD with a closed fd is EBADF
        fs_fd = kernel.fsopen(b"tmpfs")
        closed = os.dup(0)
        os.close(closed)
        try:
            kernel.fsconfig(fs_fd, kernel.FSCONFIG_SET_FD, b"source", None, closed)
        except OSError as err:
            result["set_fd"] = err.errno
        os.close(fs_fd)
        try:  # FSCONFIG_CMD_CREATE_EXCL: 6.6
            os.close(_new_tmpfs(exclusive=True))
            result["exclusive"] = 0
        except OSError as err:
            result["exclusive"] = err.errno
        return result

    assert in_child(work) == {"type": "tmpfs", "clone": "data", "rdonly": errno.EROFS,
                              "shared_sb": "x", "size": 2 << 20, "set_fd": errno.EBADF,
                              "exclusive": 0 if kernel_has_since(6, 6) else errno.EOPNOTSUPP}
    assert not (a / "file").exists()  # nothing leaked into our mount namespace


def _user_namespace_fd(mapping: str) -> int:
    """A user namespace with ``mapping`` as uid and gid map, made by a forked child."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            kernel.unshare(kernel.CLONE_NEWUSER)
            os.write(ready_w, b"u")
            os.read(done_r, 1)
            code = 0
        finally:
            os._exit(code)
    try:
        assert os.read(ready_r, 1) == b"u"
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{pid}/{name}", "w") as id_map:
                id_map.write(mapping)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)


def test_an_idmapped_tmpfs_mount_shows_root_as_100000(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()

    def work() -> tuple[int, int, int, int, int] | int:
        _private_mount_namespace()
        userns = _user_namespace_fd("0 100000 65536\n")
        mnt = _new_tmpfs()
        kernel.move_mount(mnt, b"", kernel.AT_FDCWD, bytes(a), kernel.MOVE_MOUNT_F_EMPTY_PATH)
        os.close(mnt)
        (a / "file").write_text("root's")
        os.chown(a / "file", 0, 0)
        tree = kernel.open_tree(kernel.AT_FDCWD, bytes(a),
                                kernel.OPEN_TREE_CLONE | kernel.OPEN_TREE_CLOEXEC)
        try:
            kernel.mount_setattr(tree, b"", kernel.AT_EMPTY_PATH,
                                 attr_set=kernel.MOUNT_ATTR_IDMAP, userns_fd=userns)
        except OSError as err:
            return err.errno or -1
        kernel.move_mount(tree, b"", kernel.AT_FDCWD, bytes(b), kernel.MOVE_MOUNT_F_EMPTY_PATH)
        os.close(tree)
        seen = os.stat(b / "file")
        fd = os.open(b / "file", os.O_RDONLY | os.O_CLOEXEC)
        identity = kernel.file_identity(fd)
        os.close(fd)
        return (os.stat(a / "file").st_uid, seen.st_uid, seen.st_gid, identity.uid,
                kernel.ns_get_owner_uid(userns))

    # tmpfs takes an idmapping since 6.3; before, the kernel's EINVAL.
    assert in_child(work) == ((0, 100000, 100000, 100000, 0) if kernel_has_since(6, 3)
                              else errno.EINVAL)


def test_private_tmpfs_is_mounted_nowhere() -> None:
    def work() -> tuple[int, bool, str]:
        root = kernel.private_tmpfs({"mode": "0700"},
                                    kernel.MOUNT_ATTR_NOSUID | kernel.MOUNT_ATTR_NOEXEC)
        try:
            os.mkdir("node-store", dir_fd=root)
            mode = stat.S_IMODE(os.fstat(root).st_mode)
            identity = kernel.file_identity(root)
            with open("/proc/self/mountinfo") as mountinfo:
                listed = any(line.split()[0] == str(identity.mount_id) for line in mountinfo)
            return mode, listed, os.readlink(f"/proc/self/fd/{root}")
        finally:
            os.close(root)

    assert in_child(work) == (0o700, False, "/")


# --- credentials, namespaces, prctl ---------------------------------------------------------


def test_capset_and_setgroups_change_only_the_calling_thread() -> None:
    def work() -> dict[str, object]:
        result: dict[str, object] = {}
        caps = kernel.capget()
        without_mknod = kernel.ThreadCaps(caps.effective & ~(1 << kernel.CAP_MKNOD),
                                          caps.permitted, caps.inheritable)
        main_tid = threading.get_native_id()

        def other_thread() -> None:
            kernel.setgroups_thread((7, 8, 9))
            kernel.capset(without_mknod)
            result["thread_caps"] = kernel.capget() == without_mknod
            result["thread_groups"] = os.getgroups()

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        with open(f"/proc/self/task/{main_tid}/status") as status:
            groups = next(line for line in status if line.startswith("Groups:"))
        result["main_groups"] = groups.split()[1:]
        result["main_caps"] = kernel.capget() == caps
        kernel.capset(without_mknod)
        try:
            os.mknod("/dev/shm/never", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        except OSError as err:
            result["mknod"] = err.errno
        return result

    result = in_child(work)
    assert result == {"thread_caps": True, "thread_groups": [7, 8, 9],
                      "main_groups": result["main_groups"], "main_caps": True,
                      "mknod": errno.EPERM}
    assert "7" not in result["main_groups"]


def test_prctl_wrappers() -> None:
    def work() -> tuple[int, int, bool, bool, int]:
        kernel.set_pdeathsig(signal.SIGTERM)
        kernel.set_keepcaps(True)
        keep = kernel.get_keepcaps()
        bits = kernel.get_securebits()
        kernel.set_dumpable(False)
        return (kernel.get_pdeathsig(), kernel.get_dumpable(), keep,
                bool(bits & kernel.SECBIT_KEEP_CAPS), kernel.prctl(kernel.PR_GET_NO_NEW_PRIVS))

    assert in_child(work) == (signal.SIGTERM, 0, True, True, 0)


def test_nsfs_ioctls() -> None:
    ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert kernel.ns_get_nstype(ns) == kernel.CLONE_NEWNS
        owner = kernel.ns_get_userns(ns)
        try:
            mine = os.stat("/proc/self/ns/user")
            assert (os.fstat(owner).st_dev, os.fstat(owner).st_ino) == (mine.st_dev, mine.st_ino)
            raises_errno(errno.EPERM, lambda: kernel.ns_get_parent(owner))  # the initial one
        finally:
            os.close(owner)
        raises_errno(errno.EINVAL, lambda: kernel.ns_get_parent(ns))  # mount ns have none
    finally:
        os.close(ns)


def test_setns_back_into_our_mount_namespace() -> None:
    def work() -> bool:
        host = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        before = os.fstat(host).st_ino
        kernel.unshare(kernel.CLONE_NEWNS)
        moved = os.stat("/proc/self/ns/mnt").st_ino != before
        kernel.setns(host, kernel.CLONE_NEWNS)
        os.close(host)
        return moved and os.stat("/proc/self/ns/mnt").st_ino == before

    assert in_child(work)


def test_fs_type_names_the_filesystem() -> None:
    assert ctypes.sizeof(kernel.statfs) == 120
    fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert kernel.fs_type(fd) == 0x9FA0  # PROC_SUPER_MAGIC
    finally:
        os.close(fd)
