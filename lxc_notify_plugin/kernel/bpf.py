"""bpf(2) for cgroup device programs, pidfd_getfd(2) and kcmp(2): the bpf family's bindings.

Kernel facts that shaped this module (``include/uapi/linux/bpf.h``,
``kernel/bpf/syscall.c`` and ``cgroup.c``; "seen" where this host's 6.18
showed it):

* ``bpf(cmd, attr, size)`` copies ``min(size, sizeof(union bpf_attr))`` bytes
  of ``attr``.  Before anything else: a size above a page is E2BIG, bytes
  beyond the kernel's union must be zero (E2BIG), an unreadable ``attr`` is
  EFAULT, and the bytes after the command's last field must be zero
  (EINVAL).  Only then come privilege checks and the file descriptors.
* Loading a ``BPF_PROG_TYPE_CGROUP_DEVICE`` program takes CAP_BPF and
  CAP_NET_ADMIN (CAP_SYS_ADMIN stands for either) in the initial user
  namespace, or in a BPF token's.  Attaching one to a cgroup
  (``BPF_PROG_ATTACH``) or linking it (``BPF_LINK_CREATE``) takes *no*
  capability: the program's fd and the cgroup's fd are the credentials
  (seen: uid 65534 with an empty capability set attached and linked one to
  a cgroup it had opened read-only).  Detaching a non-multi program with
  another program's fd is EPERM for such a task and done for root (seen).
* One attach type on a cgroup holds either one program (flags 0, or
  ``BPF_F_ALLOW_OVERRIDE``) or a list (``BPF_F_ALLOW_MULTI``).  A cgroup's
  effective programs are its own, then each ancestor's that is multi, or
  the nearest ancestor's when nothing below it has any: a program attached
  below an override program *replaces* it, one below a multi program runs
  with it (a device access then needs every one to allow), and below flags
  0 nothing may be attached (EPERM).
* ``BPF_PROG_QUERY`` gives a cgroup's flags and program count (it needs
  CAP_NET_ADMIN); links count as multi.
* ``fdget`` refuses O_PATH files: a cgroup or program named by an O_PATH fd
  is EBADF to bpf(2).  Directories queried here are opened O_RDONLY.
* A program's fd is close-on-exec, as the kernel makes it.  /proc's fdinfo
  of a program fd says its type (``prog_type:``).
* ``pidfd_getfd`` copies a file from another task's table
  (PTRACE_MODE_ATTACH_REALCREDS).  A pidfd names a *thread's* table only
  with ``PIDFD_THREAD`` (6.9+); before it, the thread group leader's, which
  another thread shares unless it was cloned without CLONE_FILES (``kcmp``
  with KCMP_FILES tells).

``ACTOR_STEPS`` are the steps of this module an actor runs in the caller's
cgroups (``caller/actor.py``): the program's memory is charged to the
caller's memory cgroup.  Each takes the step's arguments and the fds sent
with it, and returns the answer and the fds to send back.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import os
from collections.abc import Callable, Mapping
from ctypes import c_int, c_long, c_uint, c_ulong, c_void_p
from typing import Any, Final

from . import _ctypeslib
from ._ctypeslib import Signature

__all__ = [
    "BPF_PROG_LOAD", "BPF_PROG_ATTACH", "BPF_PROG_DETACH", "BPF_PROG_QUERY",
    "BPF_LINK_CREATE", "BPF_PROG_TYPE_CGROUP_DEVICE", "BPF_CGROUP_DEVICE",
    "BPF_F_ALLOW_OVERRIDE", "BPF_F_ALLOW_MULTI", "BPF_F_REPLACE", "BPF_F_TOKEN_FD",
    "BPF_MAXINSNS", "BPF_INSN_SIZE", "PAGE_SIZE", "CGROUP2_SUPER_MAGIC", "PIDFD_THREAD",
    "bpf_prog_load_attr", "bpf_attach_attr", "bpf_query_attr", "bpf_link_create_attr",
    "bpf", "bpf_bytes", "prog_query", "pidfd_getfd", "pidfd_of_thread", "prog_type_of",
    "ACTOR_STEPS",
]

# enum bpf_cmd
BPF_PROG_LOAD: Final = 5
BPF_PROG_ATTACH: Final = 8
BPF_PROG_DETACH: Final = 9
BPF_PROG_QUERY: Final = 16
BPF_LINK_CREATE: Final = 28
BPF_PROG_TYPE_CGROUP_DEVICE: Final = 15  # enum bpf_prog_type
BPF_CGROUP_DEVICE: Final = 6  # enum bpf_attach_type
BPF_F_ALLOW_OVERRIDE: Final = 1 << 0
BPF_F_ALLOW_MULTI: Final = 1 << 1
BPF_F_REPLACE: Final = 1 << 2
BPF_F_TOKEN_FD: Final = 1 << 16  # prog_flags: prog_token_fd names a BPF token
BPF_MAXINSNS: Final = 4096  # the kernel's limit for programs loaded without CAP_BPF
BPF_INSN_SIZE: Final = 8  # struct bpf_insn
PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")
CGROUP2_SUPER_MAGIC: Final = 0x63677270  # include/uapi/linux/magic.h
PIDFD_THREAD: Final = os.O_EXCL  # include/uapi/linux/pidfd.h
_KCMP_FILES: Final = 2

_SIGNATURES: Final = {
    # bpf(int cmd, union bpf_attr __user *uattr, unsigned int size)
    "bpf": Signature(c_long, (c_int, c_void_p, c_uint)),
    # pidfd_getfd(int pidfd, int fd, unsigned int flags)
    "pidfd_getfd": Signature(c_long, (c_int, c_int, c_uint)),
    # kcmp(pid_t pid1, pid_t pid2, int type, unsigned long idx1, unsigned long idx2)
    "kcmp": Signature(c_long, (c_int, c_int, c_int, c_ulong, c_ulong)),
}
_bpf = _ctypeslib.syscall("bpf", _SIGNATURES["bpf"])
_pidfd_getfd = _ctypeslib.syscall("pidfd_getfd", _SIGNATURES["pidfd_getfd"])
_kcmp = _ctypeslib.syscall("kcmp", _SIGNATURES["kcmp"])

_u32, _s32, _u64 = ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint64


class bpf_prog_load_attr(ctypes.Structure):
    """union bpf_attr, the part BPF_PROG_LOAD reads (6.18):
    struct {
        __u32 prog_type;            __u32 insn_cnt;
        __aligned_u64 insns;        __aligned_u64 license;
        __u32 log_level;            __u32 log_size;
        __aligned_u64 log_buf;
        __u32 kern_version;         __u32 prog_flags;
        char prog_name[BPF_OBJ_NAME_LEN];
        __u32 prog_ifindex;         __u32 expected_attach_type;
        __u32 prog_btf_fd;          __u32 func_info_rec_size;
        __aligned_u64 func_info;
        __u32 func_info_cnt;        __u32 line_info_rec_size;
        __aligned_u64 line_info;
        __u32 line_info_cnt;        __u32 attach_btf_id;
        union { __u32 attach_prog_fd; __u32 attach_btf_obj_fd; };
        __u32 core_relo_cnt;
        __aligned_u64 fd_array;     __aligned_u64 core_relos;
        __u32 core_relo_rec_size;   __u32 log_true_size;
        __s32 prog_token_fd;        __u32 fd_array_cnt;
        __aligned_u64 signature;
        __u32 signature_size;       __s32 keyring_id;
    };"""

    _fields_ = [
        ("prog_type", _u32), ("insn_cnt", _u32), ("insns", _u64), ("license", _u64),
        ("log_level", _u32), ("log_size", _u32), ("log_buf", _u64),
        ("kern_version", _u32), ("prog_flags", _u32), ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", _u32), ("expected_attach_type", _u32),
        ("prog_btf_fd", _u32), ("func_info_rec_size", _u32), ("func_info", _u64),
        ("func_info_cnt", _u32), ("line_info_rec_size", _u32), ("line_info", _u64),
        ("line_info_cnt", _u32), ("attach_btf_id", _u32),
        ("attach_prog_fd", _u32), ("core_relo_cnt", _u32),
        ("fd_array", _u64), ("core_relos", _u64),
        ("core_relo_rec_size", _u32), ("log_true_size", _u32),
        ("prog_token_fd", _s32), ("fd_array_cnt", _u32),
        ("signature", _u64), ("signature_size", _u32), ("keyring_id", _s32),
    ]


class bpf_attach_attr(ctypes.Structure):
    """union bpf_attr for BPF_PROG_ATTACH and BPF_PROG_DETACH:
    struct {
        union { __u32 target_fd; __u32 target_ifindex; };
        __u32 attach_bpf_fd;        __u32 attach_type;
        __u32 attach_flags;         __u32 replace_bpf_fd;
        union { __u32 relative_fd; __u32 relative_id; };
        __u64 expected_revision;
    };"""

    _fields_ = [("target_fd", _u32), ("attach_bpf_fd", _u32), ("attach_type", _u32),
                ("attach_flags", _u32), ("replace_bpf_fd", _u32), ("relative_fd", _u32),
                ("expected_revision", _u64)]


class bpf_query_attr(ctypes.Structure):
    """union bpf_attr for BPF_PROG_QUERY:
    struct {
        union { __u32 target_fd; __u32 target_ifindex; };
        __u32 attach_type;          __u32 query_flags;
        __u32 attach_flags;         __aligned_u64 prog_ids;
        union { __u32 prog_cnt; __u32 count; };
        __u32 :32;
        __aligned_u64 prog_attach_flags;
        __aligned_u64 link_ids;     __aligned_u64 link_attach_flags;
        __u64 revision;
    } query;"""

    _fields_ = [("target_fd", _u32), ("attach_type", _u32), ("query_flags", _u32),
                ("attach_flags", _u32), ("prog_ids", _u64), ("prog_cnt", _u32),
                ("_pad", _u32), ("prog_attach_flags", _u64), ("link_ids", _u64),
                ("link_attach_flags", _u64), ("revision", _u64)]


class bpf_link_create_attr(ctypes.Structure):
    """The head of union bpf_attr for BPF_LINK_CREATE (a union per link kind follows):
    struct {
        union { __u32 prog_fd; __u32 map_fd; };
        union { __u32 target_fd; __u32 target_ifindex; };
        __u32 attach_type;          __u32 flags;
        union { ... };
    } link_create;"""

    _fields_ = [("prog_fd", _u32), ("target_fd", _u32), ("attach_type", _u32),
                ("flags", _u32)]


def bpf(cmd: int, attr: ctypes.Structure | ctypes.Array[ctypes.c_char], size: int) -> int:
    """bpf(2) with ``size`` bytes of ``attr`` (the call may write into it)."""
    return _bpf(cmd, ctypes.byref(attr), size)


def bpf_bytes(cmd: int, data: bytes) -> int:
    """bpf(2) with ``data`` as the attr and its length as the size."""
    buffer = ctypes.create_string_buffer(data, max(len(data), 1))
    return _bpf(cmd, buffer, len(data))


def prog_query(cgroup_fd: int, attach_type: int) -> tuple[int, int]:
    """(attach flags, program count) of ``attach_type`` on the cgroup ``cgroup_fd``."""
    attr = bpf_query_attr(target_fd=cgroup_fd, attach_type=attach_type)
    bpf(BPF_PROG_QUERY, attr, ctypes.sizeof(attr))
    return int(attr.attach_flags), int(attr.prog_cnt)


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """A copy, in our table (close-on-exec), of the file ``fd`` of the pidfd's task."""
    return _pidfd_getfd(pidfd, fd, 0)


def pidfd_of_thread(tid: int, tgid: int) -> int:
    """A pidfd whose fd table is thread ``tid``'s: PIDFD_THREAD where the kernel has
    it (6.9+); else its thread group leader's, if ``tid`` shares that table (EBADF
    otherwise: the caller's fds are not ours to name)."""
    try:
        return os.pidfd_open(tid, PIDFD_THREAD)
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
    fd = os.pidfd_open(tgid)
    if tid != tgid:
        try:
            shared = _kcmp(tgid, tid, _KCMP_FILES, 0, 0) == 0
        except BaseException:
            os.close(fd)
            raise
        if not shared:
            os.close(fd)
            raise OSError(errno.EBADF, f"thread {tid} has an fd table of its own")
    return fd


def prog_type_of(fd: int, proc_fd: int) -> int | None:
    """The program type of our fd ``fd``, None if it is no BPF program (``proc_fd``:
    the host's /proc, where ``thread-self`` is this thread)."""
    try:
        if os.readlink(f"thread-self/fd/{fd}", dir_fd=proc_fd) != "anon_inode:bpf-prog":
            return None
        info = os.open(f"thread-self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    except FileNotFoundError:
        return None
    try:
        text = os.read(info, 4096)
    finally:
        os.close(info)
    for line in text.splitlines():
        name, _, value = line.partition(b":")
        if name == b"prog_type":
            return int(value)
    return None


# --- the actor's steps -------------------------------------------------------------------

Step = Callable[[Mapping[str, Any], list[int]], tuple[dict[str, Any], list[int]]]


def _failed(err: OSError) -> tuple[dict[str, Any], list[int]]:
    return {"errno": err.errno or errno.EIO}, []


def step_prog_load(args: Mapping[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
    """BPF_PROG_LOAD of ``args["attr"]`` (its pointers ours to fill): the instructions,
    the license and, if ``log_buffer``, a log buffer of ``log_size`` bytes (the
    size is passed as given either way: the kernel judges the pair).  Answers the
    log and ``log_true_size``, and sends the program's fd."""
    attr = bpf_prog_load_attr.from_buffer_copy(bytes.fromhex(args["attr"]))
    insns = base64.b64decode(args["insns"])
    insns_buf = ctypes.create_string_buffer(insns, max(len(insns), 1))
    license_buf = ctypes.create_string_buffer(bytes.fromhex(args["license"]))
    log_size = int(args.get("log_size", 0))
    # Never a size larger than our buffer: the kernel would write past it.
    log_buf = ctypes.create_string_buffer(max(log_size, 1))
    attr.insns = ctypes.addressof(insns_buf)
    attr.license = ctypes.addressof(license_buf)
    attr.log_buf = ctypes.addressof(log_buf) if args.get("log_buffer") else 0
    attr.log_size = log_size
    try:
        prog_fd = bpf(BPF_PROG_LOAD, attr, ctypes.sizeof(attr))
        code = 0
    except OSError as err:
        prog_fd, code = -1, err.errno or errno.EIO
    answer = {"errno": code, "log": base64.b64encode(log_buf.value).decode(),
              "log_true_size": int(attr.log_true_size)}
    return answer, [prog_fd] if prog_fd >= 0 else []


def _attach(cmd: int, args: Mapping[str, Any], fds: list[int]) -> tuple[dict[str, Any],
                                                                        list[int]]:
    attr = bpf_attach_attr(target_fd=fds[0], attach_bpf_fd=fds[1],
                           attach_type=int(args["attach_type"]),
                           attach_flags=int(args.get("flags", 0)),
                           replace_bpf_fd=fds[2] if len(fds) > 2 else 0)
    try:
        bpf(cmd, attr, ctypes.sizeof(attr))
    except OSError as err:
        return _failed(err)
    return {"errno": 0}, []


def step_prog_attach(args: Mapping[str, Any], fds: list[int]) -> tuple[dict[str, Any],
                                                                      list[int]]:
    """BPF_PROG_ATTACH: fds are the cgroup, the program and, with BPF_F_REPLACE, the
    program it replaces."""
    return _attach(BPF_PROG_ATTACH, args, fds)


def step_prog_detach(args: Mapping[str, Any], fds: list[int]) -> tuple[dict[str, Any],
                                                                      list[int]]:
    """BPF_PROG_DETACH: fds are the cgroup and the program."""
    return _attach(BPF_PROG_DETACH, args, fds)


def step_link_create(args: Mapping[str, Any], fds: list[int]) -> tuple[dict[str, Any],
                                                                      list[int]]:
    """BPF_LINK_CREATE of the program ``fds[1]`` on the cgroup ``fds[0]``; sends the link."""
    attr = bpf_link_create_attr(prog_fd=fds[1], target_fd=fds[0],
                                attach_type=int(args["attach_type"]))
    try:
        link_fd = bpf(BPF_LINK_CREATE, attr, ctypes.sizeof(attr))
    except OSError as err:
        return _failed(err)
    return {"errno": 0}, [link_fd]


ACTOR_STEPS: Final[Mapping[str, Step]] = {
    "prog_load": step_prog_load, "prog_attach": step_prog_attach,
    "prog_detach": step_prog_detach, "link_create": step_link_create,
}
