"""The bpf family: cgroup v2 device programs for a container's own cgroups.

Docker, runc, crun and systemd inside a container manage their devices on
cgroup v2 with ``BPF_PROG_TYPE_CGROUP_DEVICE`` programs, and the kernel lets
only a task with CAP_BPF and CAP_NET_ADMIN in the initial user namespace
load one.  As LXD and Incus do (``security.syscalls.intercept.bpf`` and
``.bpf.devices``), the supervisor loads such a program for a container's
root and gives it the fd, and attaches and detaches it where the container
may: only so that the container's device rules can narrow, never widen.

What reaches us (the filter compares ``cmd``, an ``int``: its low 32 bits,
as the kernel reads it): ``BPF_PROG_LOAD``, ``BPF_PROG_ATTACH``,
``BPF_PROG_DETACH`` and ``BPF_LINK_CREATE``.  The last is LXD's blind spot:
the kernel checks no capability to attach a device program, by
``BPF_PROG_ATTACH`` or by a link, to a cgroup whose fd the task has (seen
on 6.18): whoever holds a program we loaded could attach it anywhere it can
open, with any semantics.  Every other command stays in the kernel.

The rules, all of which this module decides from plain data:

* **Load** (``bpf.devices`` on): a device program only, for a caller with
  CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN) in the container's own user
  namespace, of at most ``BPF_MAXINSNS`` instructions, without the load
  options we do not carry over (BTF, func/line info, relocations, an fd
  array, a token, a signature: each would name the caller's fds or memory,
  which the kernel would read as ours).  Anything else goes back to the
  kernel, whose answer for a container is EPERM.  Nothing is loaded while a
  program with override or exclusive semantics sits on the container's
  cgroup or above it: once the container holds a device program it can
  attach it below that one (see above), and below an override program a
  program *replaces* it.
* **Attach**, by ``BPF_PROG_ATTACH`` or ``BPF_LINK_CREATE``: a device
  program, to a cgroup inside the container's own subtree (judged by the
  fd's directory, never by a name), with ``BPF_F_ALLOW_MULTI`` (and
  optionally ``BPF_F_REPLACE``; a link is always multi), and only where no
  cgroup above holds a program with other semantics: the new program then
  runs *with* every program above it, and a device access needs all of
  them to allow.  An override or exclusive attach is refused (EPERM).
* **Detach**: a device program from a cgroup of the subtree whose programs
  are multi (a non-multi program there is never the container's own: the
  kernel would let root detach it with any program's fd).
* The container's subtree is the deepest cgroup holding both the caller and
  the container's init (as sysinfo counts tasks): a cgroup its init made
  for itself (systemd's ``init.scope``) is never the whole container, and
  the host's root cgroup never is one.

The kernel's own checks come first where it makes them first: the attr's
size and tail, its readability and its fields are answered with the
kernel's errors (E2BIG, EFAULT, EINVAL), fds the caller does not have are
EBADF, a program of another type EINVAL.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..kernel import bpf as kbpf
from .families import DEFAULT_SOURCE, KEY_PREFIX, Described, Family, KeySpec, Setting, Settings
from .filter import MASKED_EQ, ArgMatch, Rule
from .schema import check_keys, want

SYSCALLS: Final = ("bpf",)
# The commands we judge; the filter sends us no other.
TRAPPED: Final = (kbpf.BPF_PROG_LOAD, kbpf.BPF_PROG_ATTACH, kbpf.BPF_PROG_DETACH,
                  kbpf.BPF_LINK_CREATE)
COMMAND_NAMES: Final = {kbpf.BPF_PROG_LOAD: "prog_load", kbpf.BPF_PROG_ATTACH: "prog_attach",
                        kbpf.BPF_PROG_DETACH: "prog_detach",
                        kbpf.BPF_LINK_CREATE: "link_create"}
# A verifier log we pass on: the caller's buffer, up to this (a longer log is
# the kernel's ENOSPC, as for a caller whose buffer is this small).
LOG_CAP: Final = 32 * 1024
LICENSE_MAX: Final = 127  # the kernel copies at most this much of the license string
_LOG_SIZE_MAX: Final = 0xFFFFFFFF >> 2  # bpf_verifier_log_attr_valid()
_U32: Final = 0xFFFFFFFF

_LOAD_SIZE: Final = ctypes.sizeof(kbpf.bpf_prog_load_attr)
_ATTACH_SIZE: Final = ctypes.sizeof(kbpf.bpf_attach_attr)
_LINK_SIZE: Final = ctypes.sizeof(kbpf.bpf_link_create_attr)
# Load fields that name the caller's fds or memory beyond the instructions,
# license and log: loaded by us they would be read in our context.
_NOT_CARRIED: Final = ("prog_ifindex", "prog_btf_fd", "func_info_rec_size", "func_info",
                       "func_info_cnt", "line_info_rec_size", "line_info", "line_info_cnt",
                       "attach_btf_id", "attach_prog_fd", "core_relo_cnt", "fd_array",
                       "core_relos", "core_relo_rec_size", "prog_token_fd", "fd_array_cnt",
                       "signature", "signature_size", "keyring_id")


@dataclass(frozen=True)
class BpfPolicy:
    """The family's settings: ``[bpf]`` of a profile, the key laid over it."""

    devices: bool | None = None  # load device programs for the container's root


# --- what a call asks, and the verdicts -----------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    """Hand the call back: the kernel's answer is the caller's."""

    why: str
    ours: bool = True  # False: none of our business (another program or attach type)


@dataclass(frozen=True)
class Refused:
    """Answer ``errno`` without acting."""

    errno: int
    why: str


@dataclass(frozen=True)
class Load:
    """A device program load we may make: the attr with its pointers still the caller's."""

    attr: kbpf.bpf_prog_load_attr
    log_size: int  # what we tell the kernel (our buffer's size)

    @property
    def insns_size(self) -> int:
        return int(self.attr.insn_cnt) * kbpf.BPF_INSN_SIZE

    def for_actor(self) -> bytes:
        """The attr as the actor gets it: the caller's pointers cleared (the actor
        puts its own), log_size ours."""
        mine = kbpf.bpf_prog_load_attr.from_buffer_copy(self.attr)
        mine.insns = mine.license = mine.log_buf = 0
        mine.log_size = self.log_size
        mine.log_true_size = 0
        return bytes(mine)


@dataclass(frozen=True)
class Attach:
    """A device attach, detach or link: the caller's fd numbers, as it gave them."""

    cmd: int
    target_fd: int
    prog_fd: int
    flags: int
    replace_fd: int = -1  # with BPF_F_REPLACE
    options: bool = False  # a link's union beyond its head is not all zero

    @property
    def name(self) -> str:
        return COMMAND_NAMES[self.cmd]


def command(register: int) -> int:
    """bpf's ``int cmd``: the low 32 bits, as the kernel reads it (the filter masks too)."""
    return register & _U32


def attr_size(register: int) -> int:
    """bpf's ``unsigned int size``."""
    return register & _U32


def size_refusal(size: int) -> int:
    """The kernel's answer to an attr size, before reading it: E2BIG above a page."""
    return errno.E2BIG if size > kbpf.PAGE_SIZE else 0


def parse_load(data: bytes, settings: BpfPolicy) -> Load | Kernel | Refused:
    """A BPF_PROG_LOAD's attr (the bytes the caller's size covers, at most a page)."""
    if any(data[_LOAD_SIZE:]):
        return Kernel("attr fields this build does not know")
    attr = kbpf.bpf_prog_load_attr.from_buffer_copy(data[:_LOAD_SIZE].ljust(_LOAD_SIZE, b"\0"))
    if attr.prog_type != kbpf.BPF_PROG_TYPE_CGROUP_DEVICE:
        return Kernel(f"program type {attr.prog_type}", ours=False)
    if not settings.devices:
        return Kernel("bpf.devices is off")
    carried = [name for name in _NOT_CARRIED if getattr(attr, name)]
    if attr.prog_flags & kbpf.BPF_F_TOKEN_FD:
        carried.append("prog_flags BPF_F_TOKEN_FD")
    if carried:
        return Kernel(f"load options not emulated: {', '.join(carried)}")
    return Load(attr, min(int(attr.log_size), LOG_CAP))


def load_refusal(attr: kbpf.bpf_prog_load_attr) -> Refused | None:
    """The kernel's answers to a privileged caller's load that come before the
    instructions are read: their count (E2BIG; ours is bounded by BPF_MAXINSNS,
    the kernel's bound for programs loaded without CAP_BPF) and a log size the
    kernel refuses (EINVAL: a buffer we could never match)."""
    if attr.insn_cnt == 0 or attr.insn_cnt > kbpf.BPF_MAXINSNS:
        return Refused(errno.E2BIG, f"{attr.insn_cnt} instructions")
    if attr.log_size > _LOG_SIZE_MAX:
        return Refused(errno.EINVAL, "log_size")
    return None


def may_load(bpf_capable: bool, net_admin: bool) -> bool:
    """The kernel's own test for a device program (``bpf_token_capable``), applied to
    the caller's capabilities in the container's user namespace."""
    return bpf_capable and net_admin


def parse_attach(cmd: int, data: bytes) -> Attach | Kernel:
    """A BPF_PROG_ATTACH, BPF_PROG_DETACH or BPF_LINK_CREATE attr: ours only for
    device programs (checked further by ``attach_refusal``)."""
    if cmd == kbpf.BPF_LINK_CREATE:
        link = kbpf.bpf_link_create_attr.from_buffer_copy(
            data[:_LINK_SIZE].ljust(_LINK_SIZE, b"\0"))
        if link.attach_type != kbpf.BPF_CGROUP_DEVICE:
            return Kernel(f"link attach type {link.attach_type}", ours=False)
        # Flags and the rest of the union (ordering a cgroup link, 6.16+) are not
        # emulated: attach_refusal refuses them.
        return Attach(cmd, int(link.target_fd), int(link.prog_fd), int(link.flags),
                      options=any(data[_LINK_SIZE:]))
    attr = kbpf.bpf_attach_attr.from_buffer_copy(data[:_ATTACH_SIZE].ljust(_ATTACH_SIZE, b"\0"))
    if attr.attach_type != kbpf.BPF_CGROUP_DEVICE:
        return Kernel(f"attach type {attr.attach_type}", ours=False)
    replace = int(attr.replace_bpf_fd) if attr.attach_flags & kbpf.BPF_F_REPLACE else -1
    return Attach(cmd, int(attr.target_fd), int(attr.attach_bpf_fd), int(attr.attach_flags),
                  replace)


def dry_run(cmd: int, data: bytes) -> bytes:
    """The caller's attr with its fds made -1: given to the kernel, it answers the
    errors it finds before the fds (size, tail, fields, flags) and then EBADF,
    having done nothing.  So the caller gets the kernel's errors in its order.
    The program and the target are always made -1 (0 would name *our* fd 0);
    the optional fds only where they are not 0, as the kernel refuses some that
    are not (BPF_PROG_DETACH's relative_fd: EINVAL) before any lookup."""
    buffer = bytearray(data)
    always, optional = _LINK_FDS if cmd == kbpf.BPF_LINK_CREATE else _ATTACH_FDS
    for offset in always + optional:
        if offset + 4 <= len(buffer) and (offset in always or any(buffer[offset:offset + 4])):
            buffer[offset:offset + 4] = b"\xff\xff\xff\xff"
    return bytes(buffer)


def _offsets(struct: type[ctypes.Structure], *names: str) -> tuple[int, ...]:
    return tuple(getattr(struct, name).offset for name in names)


_LINK_FDS: Final = (_offsets(kbpf.bpf_link_create_attr, "prog_fd", "target_fd"), ())
_ATTACH_FDS: Final = (_offsets(kbpf.bpf_attach_attr, "target_fd", "attach_bpf_fd"),
                      _offsets(kbpf.bpf_attach_attr, "replace_bpf_fd", "relative_fd"))


def attach_refusal(request: Attach, net_admin: bool) -> Refused | None:
    """What is refused before any fd is looked at: a caller without CAP_NET_ADMIN
    (or CAP_SYS_ADMIN) in the container, semantics other than multi, link
    options we do not emulate."""
    if not net_admin:
        return Refused(errno.EPERM, "the caller lacks CAP_NET_ADMIN in the container")
    if request.cmd == kbpf.BPF_PROG_ATTACH and request.flags not in (
            kbpf.BPF_F_ALLOW_MULTI, kbpf.BPF_F_ALLOW_MULTI | kbpf.BPF_F_REPLACE):
        return Refused(errno.EPERM, f"attach flags {request.flags:#x}: only "
                                    "BPF_F_ALLOW_MULTI (a program that can be replaced "
                                    "below, or replaces one above, could widen)")
    if request.cmd == kbpf.BPF_LINK_CREATE and (request.flags or request.options):
        return Refused(errno.EPERM, "link options (ordering) are not emulated")
    return None


def replaces_a_program_above(ancestors: Sequence[tuple[int, int]]) -> bool:
    """Whether a program attached below these cgroups ((flags, count) of their device
    programs, nearest first) would replace one of theirs: a cgroup holding a
    program with override or exclusive semantics (exclusive ones the kernel
    refuses itself; refused here as well, with the same EPERM)."""
    return any(count and not flags & kbpf.BPF_F_ALLOW_MULTI for flags, count in ancestors)


def detach_refusal(flags: int, count: int) -> Refused | None:
    """A detach from a cgroup whose device programs are (flags, count)."""
    if not count:
        return Refused(errno.ENOENT, "nothing attached")
    if not flags & kbpf.BPF_F_ALLOW_MULTI:
        return Refused(errno.EPERM, "a non-multi program is never the container's own")
    return None


# --- where the container's cgroups are ----------------------------------------------------


def v2_path(proc_cgroup: bytes) -> str | None:
    """The cgroup v2 path in a ``/proc/PID/cgroup`` text (host view), None without
    exactly one v2 line (the kernel refuses cgroup names with a newline)."""
    found = [line[3:] for line in proc_cgroup.split(b"\n") if line.startswith(b"0::")]
    if len(found) != 1 or not found[0].startswith(b"/"):
        return None
    return os.fsdecode(found[0])


def container_subtree(caller_cgroup: bytes, init_cgroup: bytes) -> str | None:
    """The container's own v2 subtree: the deepest cgroup holding both the caller
    and the container's init; None if that is the host's root (or unknown)."""
    caller, init = v2_path(caller_cgroup), v2_path(init_cgroup)
    if caller is None or init is None:
        return None
    common = os.path.commonpath([caller, init])
    return None if common == "/" else common


def cgroup2_mount(mountinfo: str) -> str | None:
    """Where the host mounts the root of its cgroup2 hierarchy (``/proc/self/mountinfo``)."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if fields[dash + 1] == "cgroup2" and fields[3] == "/":
            return _unescape(fields[4])
    return None


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (``\\040`` for a space)."""
    out, i = bytearray(), 0
    raw = field.encode()
    while i < len(raw):
        if raw[i:i + 1] == b"\\" and raw[i + 1:i + 4].isdigit():
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


# --- the profile's table and the key -----------------------------------------------------

_DEVICES = KEY_PREFIX + "bpf.devices"


def filter_rules(settings: BpfPolicy) -> tuple[Rule, ...]:
    """bpf(2) for the four commands we judge; its other commands never leave the kernel."""
    return tuple(Rule("bpf", None, (ArgMatch(0, cmd, MASKED_EQ, _U32),)) for cmd in TRAPPED)


def parse(data: Mapping[str, Any], file: str) -> BpfPolicy:
    table = want(data.get("bpf", {}), dict, file, "bpf")
    check_keys(table, {"devices"}, file, "bpf.")
    devices = table.get("devices")
    if devices is not None:
        devices = want(devices, bool, file, "bpf.devices")
    return BpfPolicy(devices)


def merge(layers: Sequence[tuple[BpfPolicy, str]]) -> tuple[BpfPolicy, dict[str, str]]:
    """The last value given wins."""
    devices: bool | None = None
    sources: dict[str, str] = {}
    for layer, source in layers:
        if layer.devices is not None:
            devices = layer.devices
            sources["bpf.devices"] = source
    return BpfPolicy(devices), sources


def lay_keys(settings: BpfPolicy, config: Mapping[str, str], config_file: str,
             profile_source: str) -> BpfPolicy:
    if _DEVICES in config:
        return BpfPolicy(config[_DEVICES] == "true")
    return settings


def describe(settings: BpfPolicy, given: Described) -> list[Setting]:
    source = (f"key {_DEVICES}" if _DEVICES in given.config
              else given.sources.get("bpf.devices", DEFAULT_SOURCE))
    return [Setting("bpf.devices", str(bool(settings.devices)).lower(), source)]


FAMILY: Family[BpfPolicy] = Family(
    "bpf", SYSCALLS, filter_rules,
    doc="Emulate bpf for cgroup device programs",
    settings=Settings(
        ("bpf",), BpfPolicy(), parse, merge, describe,
        keys=(KeySpec(_DEVICES, "bool", "bpf", True,
                      "Load cgroup device programs for the container's root", "false"),),
        lay_keys=lay_keys),
    capabilities={"CAP_BPF": "loading cgroup device programs (with CAP_NET_ADMIN)",
                  "CAP_NET_ADMIN": "loading cgroup device programs (a networking type to "
                                   "the kernel)"})
