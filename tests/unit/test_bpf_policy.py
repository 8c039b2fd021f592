"""The bpf family's rules as plain data: the filter, the profile table and key, the
parsing of hostile attrs and the decisions on attaching below a cgroup."""

from __future__ import annotations

import ctypes
import errno

import pytest

from lxc_notify_plugin import kernel
from lxc_notify_plugin.dispatch import Dispatcher
from lxc_notify_plugin.errors import ConfigError
from lxc_notify_plugin.kernel import bpf as kbpf
from lxc_notify_plugin.policy import bpf
from lxc_notify_plugin.policy.effective import ContainerPolicy
from lxc_notify_plugin.policy.lxc_policy import check_with_libseccomp, compile_policy
from lxc_notify_plugin.policy.profile import parse_profile

DEVICES = "security.syscalls.intercept.bpf.devices"
ON = bpf.BpfPolicy(devices=True)


def policy_with(text: str, config: dict[str, str] | None = None) -> ContainerPolicy:
    return ContainerPolicy.from_profile(parse_profile(text, "p.toml"), config, "keys")


# --- the filter -----------------------------------------------------------------------------


def test_the_filter_sends_the_four_commands_by_their_low_32_bits() -> None:
    policy = policy_with("[intercept]\nbpf = true\n")
    text = compile_policy(policy)
    for cmd in (5, 8, 9, 28):
        assert f"bpf notify [0,{cmd},SCMP_CMP_MASKED_EQ,4294967295]" in text
    assert text.count("bpf notify") == 4
    check_with_libseccomp(policy)
    assert "bpf" not in compile_policy(policy_with(""))


def test_bpf_has_the_kernels_numbers() -> None:
    # arch/x86/entry/syscalls: syscall_64.tbl 321, syscall_32.tbl 357.
    table = Dispatcher().syscalls
    assert table[(kernel.AUDIT_ARCH_X86_64, 321)] == ("bpf", "bpf")
    assert table[(kernel.AUDIT_ARCH_I386, 357)] == ("bpf", "bpf")
    assert table[(kernel.AUDIT_ARCH_X86_64, kernel.X32_SYSCALL_BIT | 321)] == ("bpf", "bpf")


def test_command_and_size_are_the_kernels_int_and_unsigned_int() -> None:
    assert bpf.command(0x1_0000_0008) == kbpf.BPF_PROG_ATTACH
    assert bpf.attr_size(0xFFFF_FFFF_0000_0010) == 16
    assert bpf.size_refusal(kbpf.PAGE_SIZE) == 0
    assert bpf.size_refusal(kbpf.PAGE_SIZE + 1) == errno.E2BIG


# --- the profile table and the key -------------------------------------------------------------


def test_devices_from_the_profile_and_the_key_with_their_sources() -> None:
    assert policy_with("").of(bpf.FAMILY) == bpf.BpfPolicy()
    profiled = policy_with("[bpf]\ndevices = true\n")
    assert profiled.of(bpf.FAMILY).devices is True
    settings = {s.name: s for s in profiled.settings}
    assert (settings["bpf.devices"].value, settings["bpf.devices"].source) == ("true", "p.toml")
    keyed = policy_with("[bpf]\ndevices = true\n", {DEVICES: "false"})
    assert keyed.of(bpf.FAMILY).devices is False
    assert {s.name: s.source for s in keyed.settings}["bpf.devices"] == f"key {DEVICES}"


@pytest.mark.parametrize(("text", "key"), [
    ("[bpf]\ndevices = 1\n", "bpf.devices"),
    ("[bpf]\nprograms = true\n", "bpf.programs"),
    ("bpf = true\n", "bpf"),
])
def test_bad_bpf_tables(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_profile(text, "p.toml")
    assert raised.value.key == key


def test_a_later_profile_layer_decides() -> None:
    merged, sources = bpf.merge([(bpf.BpfPolicy(True), "a"), (bpf.BpfPolicy(None), "b"),
                                 (bpf.BpfPolicy(False), "c")])
    assert merged == bpf.BpfPolicy(False) and sources == {"bpf.devices": "c"}


# --- BPF_PROG_LOAD ------------------------------------------------------------------------------


def load_attr(**fields: int | bytes) -> bytes:
    attr = kbpf.bpf_prog_load_attr(prog_type=kbpf.BPF_PROG_TYPE_CGROUP_DEVICE, insn_cnt=11,
                                   insns=0x1000, license=0x2000)
    for name, value in fields.items():
        setattr(attr, name, value)
    return bytes(attr)


def test_a_device_program_load_is_ours_to_make() -> None:
    parsed = bpf.parse_load(load_attr(log_level=1, log_size=1 << 20, log_buf=0x3000), ON)
    assert isinstance(parsed, bpf.Load)
    assert parsed.insns_size == 88 and parsed.log_size == bpf.LOG_CAP
    assert bpf.load_refusal(parsed.attr) is None
    mine = kbpf.bpf_prog_load_attr.from_buffer_copy(parsed.for_actor())
    assert (mine.insns, mine.license, mine.log_buf, mine.log_size, mine.insn_cnt) == (
        0, 0, 0, bpf.LOG_CAP, 11)
    # A short attr is the kernel's zero-filled one.
    assert isinstance(bpf.parse_load(load_attr()[:48], ON), bpf.Load)


@pytest.mark.parametrize(("data", "settings", "ours"), [
    (load_attr(prog_type=9), ON, False),  # another program type
    (load_attr(), bpf.BpfPolicy(), True),  # bpf.devices off
    (load_attr(prog_btf_fd=3), ON, True),
    (load_attr(fd_array=0x4000), ON, True),
    (load_attr(attach_prog_fd=7), ON, True),
    (load_attr(prog_token_fd=5), ON, True),
    (load_attr(prog_flags=kbpf.BPF_F_TOKEN_FD), ON, True),
    (load_attr(signature=0x5000), ON, True),
    (load_attr() + b"\0" * 100 + b"\1", ON, True),  # a field after ours
])
def test_loads_we_do_not_make_go_back_to_the_kernel(data: bytes, settings: bpf.BpfPolicy,
                                                    ours: bool) -> None:
    verdict = bpf.parse_load(data, settings)
    assert isinstance(verdict, bpf.Kernel) and verdict.ours is ours


@pytest.mark.parametrize(("fields", "code"), [
    ({"insn_cnt": 0}, errno.E2BIG),
    ({"insn_cnt": kbpf.BPF_MAXINSNS + 1}, errno.E2BIG),
    ({"insn_cnt": 0x7FFFFFFF}, errno.E2BIG),
    ({"log_level": 1, "log_size": 0xFFFFFFFF, "log_buf": 0x3000}, errno.EINVAL),
])
def test_loads_refused_with_the_kernels_errno(fields: dict[str, int], code: int) -> None:
    parsed = bpf.parse_load(load_attr(**fields), ON)
    assert isinstance(parsed, bpf.Load)
    refusal = bpf.load_refusal(parsed.attr)
    assert refusal is not None and refusal.errno == code


def test_loading_takes_both_capabilities() -> None:
    assert bpf.may_load(True, True)
    assert not bpf.may_load(True, False) and not bpf.may_load(False, True)


# --- attaching ----------------------------------------------------------------------------------


def attach_attr(attach_type: int = kbpf.BPF_CGROUP_DEVICE, flags: int = kbpf.BPF_F_ALLOW_MULTI,
                replace: int = 0) -> bytes:
    return bytes(kbpf.bpf_attach_attr(target_fd=4, attach_bpf_fd=5, attach_type=attach_type,
                                      attach_flags=flags, replace_bpf_fd=replace))


def test_attach_detach_and_link_of_device_programs_are_ours() -> None:
    parsed = bpf.parse_attach(kbpf.BPF_PROG_ATTACH, attach_attr(
        flags=kbpf.BPF_F_ALLOW_MULTI | kbpf.BPF_F_REPLACE, replace=6))
    assert parsed == bpf.Attach(kbpf.BPF_PROG_ATTACH, 4, 5, 6, 6)
    assert bpf.parse_attach(kbpf.BPF_PROG_DETACH, attach_attr(flags=0)) == bpf.Attach(
        kbpf.BPF_PROG_DETACH, 4, 5, 0)
    link = bytes(kbpf.bpf_link_create_attr(5, 4, kbpf.BPF_CGROUP_DEVICE, 0))
    assert bpf.parse_attach(kbpf.BPF_LINK_CREATE, link) == bpf.Attach(
        kbpf.BPF_LINK_CREATE, 4, 5, 0)
    with_options = bpf.parse_attach(kbpf.BPF_LINK_CREATE, link + b"\0\0\0\1")
    assert isinstance(with_options, bpf.Attach) and with_options.options


@pytest.mark.parametrize("cmd", [kbpf.BPF_PROG_ATTACH, kbpf.BPF_PROG_DETACH])
def test_other_attach_types_are_none_of_ours(cmd: int) -> None:
    verdict = bpf.parse_attach(cmd, attach_attr(attach_type=0))
    assert isinstance(verdict, bpf.Kernel) and not verdict.ours
    link = bytes(kbpf.bpf_link_create_attr(5, 4, 2, 0))
    verdict = bpf.parse_attach(kbpf.BPF_LINK_CREATE, link)
    assert isinstance(verdict, bpf.Kernel) and not verdict.ours


def test_the_dry_run_names_no_fd() -> None:
    data = attach_attr(flags=kbpf.BPF_F_ALLOW_MULTI | kbpf.BPF_F_REPLACE, replace=6)
    dry = kbpf.bpf_attach_attr.from_buffer_copy(bpf.dry_run(kbpf.BPF_PROG_ATTACH, data))
    assert (dry.target_fd, dry.attach_bpf_fd, dry.replace_bpf_fd, dry.relative_fd) == (
        0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    assert (dry.attach_type, dry.attach_flags) == (kbpf.BPF_CGROUP_DEVICE, 6)
    assert bpf.dry_run(kbpf.BPF_PROG_ATTACH, data[:6]) == b"\xff" * 4 + data[4:6]  # short
    detach = bytes(kbpf.bpf_attach_attr(target_fd=0, attach_bpf_fd=0,
                                        attach_type=kbpf.BPF_CGROUP_DEVICE))
    dry = kbpf.bpf_attach_attr.from_buffer_copy(bpf.dry_run(kbpf.BPF_PROG_DETACH, detach))
    # fd 0 would be ours: always -1; the optional ones stay 0, which the kernel wants.
    assert (dry.target_fd, dry.attach_bpf_fd, dry.replace_bpf_fd, dry.relative_fd) == (
        0xFFFFFFFF, 0xFFFFFFFF, 0, 0)
    link = bpf.dry_run(kbpf.BPF_LINK_CREATE, bytes(kbpf.bpf_link_create_attr(5, 4, 6, 0)))
    assert link[:8] == b"\xff" * 8 and link[8:] == bytes(kbpf.bpf_link_create_attr(0, 0, 6))[8:]


@pytest.mark.parametrize(("cmd", "flags", "options", "net_admin", "refused"), [
    (kbpf.BPF_PROG_ATTACH, kbpf.BPF_F_ALLOW_MULTI, False, True, False),
    (kbpf.BPF_PROG_ATTACH, kbpf.BPF_F_ALLOW_MULTI | kbpf.BPF_F_REPLACE, False, True, False),
    (kbpf.BPF_PROG_ATTACH, kbpf.BPF_F_ALLOW_MULTI, False, False, True),  # not root
    (kbpf.BPF_PROG_ATTACH, 0, False, True, True),  # exclusive
    (kbpf.BPF_PROG_ATTACH, kbpf.BPF_F_ALLOW_OVERRIDE, False, True, True),
    (kbpf.BPF_PROG_ATTACH, kbpf.BPF_F_REPLACE, False, True, True),
    (kbpf.BPF_LINK_CREATE, 0, False, True, False),
    (kbpf.BPF_LINK_CREATE, 0, True, True, True),  # ordering options
    (kbpf.BPF_LINK_CREATE, 8, False, True, True),
    (kbpf.BPF_PROG_DETACH, 0, False, True, False),
    (kbpf.BPF_PROG_DETACH, 0, False, False, True),
])
def test_what_is_refused_before_any_fd(cmd: int, flags: int, options: bool, net_admin: bool,
                                       refused: bool) -> None:
    refusal = bpf.attach_refusal(bpf.Attach(cmd, 4, 5, flags, options=options), net_admin)
    assert (refusal is not None) is refused
    assert refusal is None or refusal.errno == errno.EPERM


MULTI, OVERRIDE = kbpf.BPF_F_ALLOW_MULTI, kbpf.BPF_F_ALLOW_OVERRIDE


@pytest.mark.parametrize(("above", "replaces"), [
    ([], False),
    ([(0, 0), (0, 0)], False),  # nothing anywhere above
    ([(MULTI, 2), (MULTI, 1)], False),  # LXC's and systemd's multi programs
    ([(0, 0), (OVERRIDE, 1)], True),  # an override program higher up
    ([(OVERRIDE, 1), (MULTI, 1)], True),
    ([(0, 1)], True),  # exclusive (the kernel refuses too)
])
def test_a_program_below_must_not_replace_one_above(above: list[tuple[int, int]],
                                                    replaces: bool) -> None:
    assert bpf.replaces_a_program_above(above) is replaces


@pytest.mark.parametrize(("flags", "count", "code"), [
    (0, 0, errno.ENOENT), (MULTI, 0, errno.ENOENT), (OVERRIDE, 1, errno.EPERM),
    (0, 1, errno.EPERM), (MULTI, 3, 0),
])
def test_detach_only_from_multi_cgroups(flags: int, count: int, code: int) -> None:
    refusal = bpf.detach_refusal(flags, count)
    assert (refusal.errno if refusal else 0) == code


# --- where the container's cgroups are ------------------------------------------------------


HYBRID = b"9:name=systemd:/lxc.payload.c1\n5:devices:/lxc.payload.c1\n0::/lxc.payload.c1/.lxc\n"


@pytest.mark.parametrize(("caller", "init", "root"), [
    (HYBRID, b"0::/lxc.payload.c1\n", "/lxc.payload.c1"),
    (b"0::/lxc.payload.c1/system.slice/docker.service\n", b"0::/lxc.payload.c1/init.scope\n",
     "/lxc.payload.c1"),
    (b"0::/lxc.payload.c1/init.scope\n", b"0::/lxc.payload.c1/init.scope\n",
     "/lxc.payload.c1/init.scope"),
    (b"0::/a\n", b"0::/b\n", None),  # only the host's root holds both
    (b"0::/\n", b"0::/\n", None),
    (b"5:devices:/x\n", b"0::/x\n", None),  # no v2 line
    (b"0::/x/y\n0::/\n", b"0::/x\n", None),  # two v2 lines: not a real /proc/PID/cgroup
])
def test_the_containers_subtree(caller: bytes, init: bytes, root: str | None) -> None:
    assert bpf.container_subtree(caller, init) == root


def test_the_hosts_cgroup2_mount() -> None:
    mountinfo = (
        "30 1 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
        "31 30 0:27 /lxc.payload.x /sys/fs/cgroup/x rw - cgroup2 cgroup2 rw\n"
        "32 30 0:27 / /sys/fs/cgroup/my\\040v2 rw,nosuid - cgroup2 cgroup2 rw\n")
    assert bpf.cgroup2_mount(mountinfo) == "/sys/fs/cgroup/my v2"
    assert bpf.cgroup2_mount("31 30 0:27 /x /y rw - cgroup2 cgroup2 rw\n") is None


def test_the_attr_layouts_are_the_kernels() -> None:
    # include/uapi/linux/bpf.h (6.18); offsets checked against the C header.
    assert ctypes.sizeof(kbpf.bpf_prog_load_attr) == 168
    assert kbpf.bpf_prog_load_attr.log_true_size.offset == 140
    assert kbpf.bpf_prog_load_attr.fd_array.offset == 120
    assert ctypes.sizeof(kbpf.bpf_attach_attr) == 32
    assert ctypes.sizeof(kbpf.bpf_query_attr) == 64
    assert kbpf.bpf_query_attr.prog_cnt.offset == 24
