"""sysinfo's values and layouts, and the cgroup readers, on plain data and fake cgroup trees."""

from __future__ import annotations

import ctypes
from dataclasses import replace
from pathlib import Path

from lxc_notify_plugin import kernel
from lxc_notify_plugin.host.memory import SysinfoCgroups
from lxc_notify_plugin.policy.sysinfo import MemoryLevel, SysinfoValues, container_view, fit

MiB = 1 << 20
GiB = 1 << 30
HOST = SysinfoValues(uptime=5000, loads=(65536, 32768, 0), totalram=24 * GiB,
                     freeram=20 * GiB, sharedram=10 * MiB, bufferram=30 * MiB,
                     totalswap=2 * GiB, freeswap=2 * GiB, procs=300)


def level(limit: int | None, usage: int = 0, swap_limit: int | None = None,
          swap_usage: int = 0, shmem: int = 0, path: str = "/c") -> MemoryLevel:
    return MemoryLevel(path, limit, usage, swap_limit, swap_usage, shmem)


def test_no_limit_anywhere_is_the_hosts_view_with_the_containers_uptime_and_tasks() -> None:
    view = container_view(HOST, [level(None)], 12, uptime=30)
    assert view == SysinfoValues(30, HOST.loads, HOST.totalram, HOST.freeram, HOST.sharedram,
                                 HOST.bufferram, HOST.totalswap, HOST.freeswap, 12)


def test_the_binding_limit_is_the_lowest_and_free_the_least_left_at_any_level() -> None:
    levels = [level(512 * MiB, 100 * MiB, shmem=1 * MiB, path="/c/sub"),
              level(256 * MiB, 200 * MiB, shmem=3 * MiB, path="/c")]
    view = container_view(HOST, levels, None, 1)
    assert view.totalram == 256 * MiB
    assert view.freeram == 56 * MiB  # /c has 56 MiB left, /c/sub 412 MiB
    assert view.sharedram == 3 * MiB and view.bufferram == 0
    assert view.procs == HOST.procs  # no pids cgroup: the host's count


def test_a_limit_above_the_host_and_usage_above_a_limit_are_clamped() -> None:
    view = container_view(HOST, [level(64 * GiB, 21 * GiB)], None, 1)
    assert view.totalram == HOST.totalram and view.freeram == HOST.freeram
    over = container_view(HOST, [level(256 * MiB, 300 * MiB)], None, 1)
    assert over.freeram == 0


def test_swap_from_its_own_limits_never_more_than_the_host_has() -> None:
    view = container_view(HOST, [level(256 * MiB, 0, 128 * MiB, 28 * MiB)], None, 1)
    assert (view.totalswap, view.freeswap) == (128 * MiB, 100 * MiB)
    none = container_view(HOST, [level(256 * MiB, 0, 0)], None, 1)
    assert (none.totalswap, none.freeswap) == (0, 0)
    view = container_view(_with(HOST, totalswap=0, freeswap=0),
                          [level(256 * MiB, 0, 128 * MiB)], None, 1)
    assert (view.totalswap, view.freeswap) == (0, 0)  # a host without swap has none to give


def _with(values: SysinfoValues, **changes: object) -> SysinfoValues:
    return replace(values, **changes)  # type: ignore[arg-type]


def test_procs_clamp_to_16_bits_never_wrap() -> None:
    assert fit(_with(HOST, procs=70000), compat=False).procs == 0xFFFF
    assert fit(_with(HOST, procs=70000), compat=True).procs == 0xFFFF


def test_64_bit_layout_is_bytes_and_compat_scales_like_the_kernel() -> None:
    native = fit(HOST, compat=False)
    assert native.mem_unit == 1 and native.totalram == 24 * GiB
    compat = fit(HOST, compat=True, page_size=4096)
    # 24 GiB does not fit 32 bits: the kernel's compat sysinfo goes to pages.
    assert compat.mem_unit == 4096 and compat.totalram == 24 * GiB // 4096
    small = fit(_with(HOST, totalram=256 * MiB, freeram=100 * MiB, totalswap=0, freeswap=0),
                compat=True)
    assert small.mem_unit == 1 and small.totalram == 256 * MiB
    huge = fit(_with(HOST, totalram=64 << 40, freeram=1 << 40), compat=True, page_size=4096)
    assert huge.totalram <= 0xFFFFFFFF and huge.totalram * huge.mem_unit == 64 << 40
    assert fit(_with(HOST, uptime=1 << 40), compat=True).uptime == 0x7FFFFFFF
    assert fit(_with(HOST, loads=(1 << 40, 0, 0)), compat=True).loads[0] == 0xFFFFFFFF


def test_packed_layouts_put_each_field_where_the_kernel_does() -> None:
    values = dict(uptime=7, loads=(1, 2, 3), totalram=10, freeram=11, sharedram=12,
                  bufferram=13, totalswap=14, freeswap=15, procs=16, mem_unit=4096)
    native = kernel.pack_sysinfo(False, **values)  # type: ignore[arg-type]
    assert len(native) == 112
    assert int.from_bytes(native[80:82], "little") == 16  # procs after 10 longs
    assert native[84:88] == b"\0" * 4  # padding before totalhigh
    assert int.from_bytes(native[104:108], "little") == 4096
    compat = kernel.pack_sysinfo(True, **values)  # type: ignore[arg-type]
    assert len(compat) == 64
    assert int.from_bytes(compat[16:20], "little") == 10  # totalram after uptime, 3 loads
    assert int.from_bytes(compat[40:42], "little") == 16
    assert int.from_bytes(compat[52:56], "little") == 4096 and compat[56:] == b"\0" * 8
    assert ctypes.sizeof(kernel.compat_sysinfo_struct) == 64


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cgroup_v2_levels_and_tasks_from_a_fake_tree(tmp_path: Path) -> None:
    _tree(tmp_path, {
        "cgroup.controllers": "cpuset cpu io memory pids\n",
        "lxc.payload.c/memory.max": "268435456\n",
        "lxc.payload.c/memory.current": "104857600\n",
        "lxc.payload.c/memory.swap.max": "max\n",
        "lxc.payload.c/memory.swap.current": "0\n",
        "lxc.payload.c/memory.stat": "anon 1\nshmem 4096\nfile 5\n",
        "lxc.payload.c/pids.current": "7\n",
        "lxc.payload.c/sub/memory.max": "max\n",
        "lxc.payload.c/sub/memory.current": "1048576\n",
        "lxc.payload.c/sub/memory.swap.max": "67108864\n",
        "lxc.payload.c/sub/memory.swap.current": "4096\n",
        "lxc.payload.c/sub/memory.stat": "shmem 0\n",
    })
    cgroups = SysinfoCgroups(tmp_path)
    assert cgroups.memory is not None and cgroups.memory.version == 2
    caller = b"0::/lxc.payload.c/sub\n"
    levels = cgroups.memory_levels(caller)
    assert levels == (level(None, 1 * MiB, 64 * MiB, 4096, 0, "/lxc.payload.c/sub"),
                      level(256 * MiB, 100 * MiB, None, 0, 4096, "/lxc.payload.c"))
    assert cgroups.task_count(caller, b"0::/lxc.payload.c\n") == 7
    view = container_view(HOST, levels, 7, 1)
    assert (view.totalram, view.freeram, view.totalswap, view.freeswap) == (
        256 * MiB, 156 * MiB, 64 * MiB, 64 * MiB - 4096)


def test_cgroup_v1_levels_from_a_fake_tree(tmp_path: Path) -> None:
    unlimited = str((1 << 63) - 4096)
    _tree(tmp_path, {
        "memory/memory.limit_in_bytes": unlimited,
        "memory/lxc.payload.c/memory.limit_in_bytes": "268435456\n",
        "memory/lxc.payload.c/memory.usage_in_bytes": "104857600\n",
        "memory/lxc.payload.c/memory.memsw.limit_in_bytes": "402653184\n",
        "memory/lxc.payload.c/memory.memsw.usage_in_bytes": "110100480\n",
        "memory/lxc.payload.c/memory.stat": "shmem 1\ntotal_shmem 8192\n",
        "pids/cgroup.procs": "",
        "pids/lxc.payload.c/pids.current": "3\n",
    })
    cgroups = SysinfoCgroups(tmp_path)
    assert cgroups.memory is not None and cgroups.memory.version == 1
    caller = b"12:pids:/lxc.payload.c\n4:memory:/lxc.payload.c\n0::/\n"
    assert cgroups.memory_levels(caller) == (
        level(256 * MiB, 100 * MiB, 128 * MiB, 5 * MiB, 8192, "/lxc.payload.c"),)
    assert cgroups.task_count(caller, caller) == 3
    # A caller in the host's root cgroup has no container count.
    assert cgroups.task_count(b"12:pids:/\n", caller) is None


def test_no_memory_controller_means_no_levels(tmp_path: Path) -> None:
    cgroups = SysinfoCgroups(tmp_path)
    assert cgroups.memory is None and cgroups.memory_levels(b"0::/x\n") == ()
    assert cgroups.task_count(b"0::/x\n", b"0::/x\n") is None
