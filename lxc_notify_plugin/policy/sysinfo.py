"""The sysinfo family: what ``sysinfo(2)`` should tell a task in a container.

The kernel answers for the machine: a container limited to 256 MiB sees the
host's 24 GB in ``free``, the host's uptime, and the host's task count
(wrapped to 16 bits).  The values a container should see instead, decided
here from plain numbers (``host/memory.py`` reads them):

* ``uptime``: seconds since the container's init started.
* ``totalram``: the lowest memory limit among the caller's cgroup and its
  ancestors, never more than the host has; ``freeram``: the least any of
  those levels has left (limit less usage, page cache counted as used, as
  the kernel's own ``freeram`` does), never more than the host has free;
  ``sharedram``: shared memory of the level whose limit binds;
  ``bufferram``: 0 (cgroups do not account block-device buffers).
* ``totalswap``/``freeswap``: likewise from the swap limits (cgroup v1's
  memory+swap less memory), never more than the host's swap.
* Without a memory (or swap) limit anywhere: the host's own values.
* ``procs``: the tasks in the container's pids cgroup, clamped to 65535
  (the field is 16 bits; the kernel's own answer wraps).
* ``loads``: the host's (no per-cgroup load average exists).
* ``mem_unit``: 1 (bytes) where the values fit the caller's fields; for a
  32-bit caller the smallest power of two from the page size up that makes
  them fit, as the kernel's compat entry point does for itself.

The call takes no argument worth filtering: every sysinfo is trapped when
the family is on (off in every shipped profile: see profiles/README.md).
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .families import Family
from .filter import Rule

PROCS_MAX = 0xFFFF
_U32 = 0xFFFFFFFF
_S32 = 0x7FFFFFFF
_S64 = (1 << 63) - 1
_U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class MemoryLevel:
    """One cgroup on the caller's path, in bytes.  ``None``: no limit at this level."""

    path: str
    limit: int | None
    usage: int
    swap_limit: int | None  # swap alone (v1: memory+swap less memory)
    swap_usage: int
    shmem: int


@dataclass(frozen=True, slots=True)
class SysinfoValues:
    """sysinfo's fields before they meet a layout: memory in bytes, uptime in seconds."""

    uptime: int
    loads: tuple[int, int, int]  # fixed point, SI_LOAD_SHIFT fraction bits
    totalram: int
    freeram: int
    sharedram: int
    bufferram: int
    totalswap: int
    freeswap: int
    procs: int  # unclamped


def container_view(host: SysinfoValues, levels: Sequence[MemoryLevel], tasks: int | None,
                   uptime: int) -> SysinfoValues:
    """The container's values from the host's, its memory cgroups (innermost first)
    and its pids count (None: no pids cgroup, the host's count stands)."""
    view = replace(host, uptime=uptime, procs=host.procs if tasks is None else tasks)
    limited = [level for level in levels if level.limit is not None]
    if limited:
        binding = min(limited, key=lambda level: level.limit or 0)
        total = min(host.totalram, binding.limit or 0)
        free = min([host.freeram, total,
                    *(max(0, (level.limit or 0) - level.usage) for level in limited)])
        view = replace(view, totalram=total, freeram=free,
                       sharedram=min(binding.shmem, total), bufferram=0)
    swapped = [level for level in levels if level.swap_limit is not None]
    if swapped:
        total_swap = min([host.totalswap, *(level.swap_limit or 0 for level in swapped)])
        free_swap = min([host.freeswap, total_swap,
                         *(max(0, (level.swap_limit or 0) - level.swap_usage)
                           for level in swapped)])
        view = replace(view, totalswap=total_swap, freeswap=free_swap)
    return view


@dataclass(frozen=True, slots=True)
class SysinfoFields:
    """The values as one layout holds them: memory in ``mem_unit``s, all clamped to fit."""

    uptime: int
    loads: tuple[int, int, int]
    totalram: int
    freeram: int
    sharedram: int
    bufferram: int
    totalswap: int
    freeswap: int
    procs: int
    mem_unit: int


def fit(values: SysinfoValues, compat: bool, page_size: int = mmap.PAGESIZE) -> SysinfoFields:
    """The fields for a 64-bit caller (``compat`` False) or a 32-bit one."""
    memory = (values.totalram, values.freeram, values.sharedram, values.bufferram,
              values.totalswap, values.freeswap)
    field_max, uptime_max = (_U32, _S32) if compat else (_U64, _S64)
    unit = 1
    if max(memory) > field_max:
        unit = page_size  # where the kernel's compat sysinfo goes when bytes do not fit
        while max(memory) // unit > field_max:
            unit <<= 1
    total, free, shared, buffer, total_swap, free_swap = (value // unit for value in memory)
    l1, l5, l15 = (min(load, field_max) for load in values.loads)
    return SysinfoFields(min(max(values.uptime, 0), uptime_max), (l1, l5, l15), total, free,
                         shared, buffer, total_swap, free_swap, min(values.procs, PROCS_MAX),
                         unit)


def filter_rules(settings: None) -> tuple[Rule, ...]:
    return (Rule("sysinfo", None),)


FAMILY: Family[None] = Family("sysinfo", ("sysinfo",), filter_rules,
                              doc="Answer sysinfo with the container's own limits")
