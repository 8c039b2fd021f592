"""A hand-assembled cgroup v2 device program (BPF_PROG_TYPE_CGROUP_DEVICE), for tests.

The program reads ``struct bpf_cgroup_dev_ctx {u32 access_type; u32 major;
u32 minor;}`` (the low 16 bits of ``access_type`` are the device type:
1 block, 2 char) and returns 0 (deny) for each listed device, 1 otherwise.
Loaded and attached with bpf(2) (x86_64 syscall 321) through ctypes: no
library needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from collections.abc import Iterator, Sequence

SYS_BPF = 321
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # enum bpf_attach_type
BPF_F_ALLOW_OVERRIDE = 1
BPF_F_ALLOW_MULTI = 2
DEVCG_DEV_BLOCK = 1
DEVCG_DEV_CHAR = 2

_LDX_MEM_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W
_ALU64_AND_K = 0x57
_JNE_K = 0x55
_MOV64_K = 0xB7
_EXIT = 0x95

_libc = ctypes.CDLL(None, use_errno=True)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | src << 4, off, imm)


def program(denied: Sequence[tuple[int, int, int]]) -> bytes:
    """Instructions refusing each (type, major, minor) in ``denied``."""
    code = [_insn(_LDX_MEM_W, 2, 1, 0),  # r2 = ctx->access_type
            _insn(_ALU64_AND_K, 2, imm=0xFFFF),  # r2 = the device type
            _insn(_LDX_MEM_W, 3, 1, 4),  # r3 = ctx->major
            _insn(_LDX_MEM_W, 4, 1, 8)]  # r4 = ctx->minor
    for kind, major, minor in denied:
        code += [_insn(_JNE_K, 2, off=4, imm=kind),  # each jump: to the next rule
                 _insn(_JNE_K, 3, off=3, imm=major),
                 _insn(_JNE_K, 4, off=2, imm=minor),
                 _insn(_MOV64_K, 0, imm=0),
                 _insn(_EXIT)]
    code += [_insn(_MOV64_K, 0, imm=1), _insn(_EXIT)]
    return b"".join(code)


def _bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, len(attr))
    rc = _libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_long(cmd), buf,
                       ctypes.c_uint(len(attr)))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(rc)


def load(denied: Sequence[tuple[int, int, int]]) -> int:
    """The program's fd."""
    insns = program(denied)
    insns_buf = ctypes.create_string_buffer(insns, len(insns))
    license_buf = ctypes.create_string_buffer(b"GPL")
    log_buf = ctypes.create_string_buffer(1 << 16)
    attr = struct.pack("<IIQQIIQII16sII", BPF_PROG_TYPE_CGROUP_DEVICE, len(insns) // 8,
                       ctypes.addressof(insns_buf), ctypes.addressof(license_buf),
                       1, len(log_buf), ctypes.addressof(log_buf), 0, 0, b"lxcn_test_dev",
                       0, BPF_CGROUP_DEVICE).ljust(128, b"\0")
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as err:
        raise OSError(err.errno, f"BPF_PROG_LOAD: {err.strerror}; verifier: "
                      f"{log_buf.value.decode(errors='replace')}") from None


def _attach_attr(cgroup_fd: int, prog_fd: int, flags: int) -> bytes:
    return struct.pack("<IIIII", cgroup_fd, prog_fd, BPF_CGROUP_DEVICE, flags, 0).ljust(32, b"\0")


@contextlib.contextmanager
def attached(cgroup_dir: str, denied: Sequence[tuple[int, int, int]],
             flags: int = BPF_F_ALLOW_MULTI) -> Iterator[None]:
    """The program attached (with ``flags``: BPF_F_ALLOW_MULTI unless told) to the
    v2 cgroup ``cgroup_dir`` for the block; detached and closed afterwards,
    whatever happened."""
    prog_fd = load(denied)
    try:
        cgroup_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _bpf(BPF_PROG_ATTACH, _attach_attr(cgroup_fd, prog_fd, flags))
            try:
                yield
            finally:
                _bpf(BPF_PROG_DETACH, _attach_attr(cgroup_fd, prog_fd, 0))
        finally:
            os.close(cgroup_fd)
    finally:
        os.close(prog_fd)
