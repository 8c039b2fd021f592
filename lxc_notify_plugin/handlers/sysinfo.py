"""sysinfo(2) answered with the container's own uptime, memory and task count.

The values are decided in ``policy/sysinfo.py`` from the caller's cgroups
(``host/memory.py``) and the host's own sysinfo, then written into the
caller's buffer in the layout of the caller's arch: a 64-bit ``struct
sysinfo`` or, for an i386 (or arm) caller, the 64-byte ``struct
compat_sysinfo`` with values scaled to 32 bits.  Nothing is done as the
caller: the call reads no file of its and needs no privilege.

The write names the caller by thread id (``process_vm_writev``, which
faults on a read-only page as the kernel's copy_to_user does, EFAULT);
so the notification is checked valid right before it, never after: a
write must not land in a task that reused a dead caller's id.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict

from .. import kernel
from ..caller.task import read_whole_at
from ..host.memory import SysinfoCgroups
from ..policy.sysinfo import SysinfoValues, container_view, fit
from ..request import DONE, Answer
from .call import Call

_COMPAT_ARCHES = frozenset({kernel.AUDIT_ARCH_I386, kernel.AUDIT_ARCH_ARM})
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def handle(call: Call) -> Answer:
    request, thread = call.request, call.thread
    address = request.args[0]
    cgroups = thread.resource("sysinfo-cgroups", SysinfoCgroups)
    proc_cgroup = thread.cgroup.read(request)
    init = request.container.init_pid
    init_cgroup = read_whole_at(thread.host_proc_fd, f"{init}/cgroup")
    started = start_time_ns(read_whole_at(thread.host_proc_fd, f"{init}/stat"))
    host = host_values()
    tasks = cgroups.task_count(proc_cgroup, init_cgroup)
    if tasks is None:
        tasks = host_task_count(thread.host_proc_fd)
    uptime = math.ceil(max(0, time.clock_gettime_ns(time.CLOCK_BOOTTIME) - started) / 1e9)
    view = container_view(host, cgroups.memory_levels(proc_cgroup), tasks, uptime)
    compat = request.notice.arch in _COMPAT_ARCHES
    data = kernel.pack_sysinfo(compat, **asdict(fit(view, compat)))
    request.ensure_valid()  # before the write: see the module's doc
    request.write_bytes(address, data)
    return DONE


def host_values() -> SysinfoValues:
    info = kernel.host_sysinfo()
    unit = info.mem_unit or 1
    return SysinfoValues(int(info.uptime), (int(info.loads[0]), int(info.loads[1]),
                                            int(info.loads[2])),
                         info.totalram * unit, info.freeram * unit, info.sharedram * unit,
                         info.bufferram * unit, info.totalswap * unit, info.freeswap * unit,
                         int(info.procs))


def start_time_ns(stat: bytes) -> int:
    """When a task started, on CLOCK_BOOTTIME: field 22 of /proc/PID/stat, in clock
    ticks (after the command name, which may hold spaces and parentheses)."""
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[19]) * 1_000_000_000 // _CLOCK_TICKS


def host_task_count(host_proc_fd: int) -> int:
    """The host's tasks, unwrapped: the total in /proc/loadavg's "running/total"."""
    return int(read_whole_at(host_proc_fd, "loadavg").split()[3].split(b"/")[1])
