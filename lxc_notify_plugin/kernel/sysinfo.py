"""``struct sysinfo`` in both layouts a caller may expect, and the host's own.

Kernel facts that shaped this module:

* ``sysinfo(2)`` fills a struct whose field widths follow the caller's ABI:
  a 64-bit caller (x86_64, aarch64, and x32, whose ``__kernel_long_t`` is 64
  bits) gets ``struct sysinfo`` with 8-byte longs, 112 bytes; a compat caller
  (i386, arm) gets ``struct compat_sysinfo`` (``kernel/sys.c``) with 4-byte
  fields and no padding before ``totalhigh``, 64 bytes.  Writing one layout
  to a caller that expects the other puts every field after ``uptime`` in
  the wrong place.
* Memory fields are counts of ``mem_unit`` bytes.  A 64-bit kernel always
  answers in bytes (``mem_unit`` 1); the compat entry point shifts
  ``mem_unit`` up when a value does not fit 32 bits.  ``loads`` are fixed
  point with ``SI_LOAD_SHIFT`` (16) fraction bits; ``procs`` is 16 bits.
* The kernel zeroes the struct first: padding and ``_f`` are 0.
"""

from __future__ import annotations

import ctypes
from typing import Final

from . import _ctypeslib

__all__ = ["sysinfo_struct", "compat_sysinfo_struct", "host_sysinfo", "pack_sysinfo",
           "SI_LOAD_SHIFT"]

SI_LOAD_SHIFT: Final = 16


class sysinfo_struct(ctypes.Structure):
    """struct sysinfo (include/uapi/linux/sysinfo.h, 64-bit) {
        __kernel_long_t uptime;  __kernel_ulong_t loads[3];
        __kernel_ulong_t totalram, freeram, sharedram, bufferram, totalswap, freeswap;
        __u16 procs; __u16 pad;  __kernel_ulong_t totalhigh, freehigh;  __u32 mem_unit;
        char _f[20-2*sizeof(__kernel_ulong_t)-sizeof(__u32)];   (0 bytes here)
    };  112 bytes (4 of padding after pad, 4 at the end)."""

    _fields_ = [
        ("uptime", ctypes.c_int64), ("loads", ctypes.c_uint64 * 3),
        ("totalram", ctypes.c_uint64), ("freeram", ctypes.c_uint64),
        ("sharedram", ctypes.c_uint64), ("bufferram", ctypes.c_uint64),
        ("totalswap", ctypes.c_uint64), ("freeswap", ctypes.c_uint64),
        ("procs", ctypes.c_uint16), ("pad", ctypes.c_uint16),
        ("totalhigh", ctypes.c_uint64), ("freehigh", ctypes.c_uint64),
        ("mem_unit", ctypes.c_uint32),
    ]


class compat_sysinfo_struct(ctypes.Structure):
    """struct compat_sysinfo (kernel/sys.c) {
        s32 uptime;  u32 loads[3];
        u32 totalram, freeram, sharedram, bufferram, totalswap, freeswap;
        u16 procs; u16 pad;  u32 totalhigh, freehigh;  u32 mem_unit;
        char _f[20-2*sizeof(u32)-sizeof(int)];   (8 bytes)
    };  64 bytes."""

    _fields_ = [
        ("uptime", ctypes.c_int32), ("loads", ctypes.c_uint32 * 3),
        ("totalram", ctypes.c_uint32), ("freeram", ctypes.c_uint32),
        ("sharedram", ctypes.c_uint32), ("bufferram", ctypes.c_uint32),
        ("totalswap", ctypes.c_uint32), ("freeswap", ctypes.c_uint32),
        ("procs", ctypes.c_uint16), ("pad", ctypes.c_uint16),
        ("totalhigh", ctypes.c_uint32), ("freehigh", ctypes.c_uint32),
        ("mem_unit", ctypes.c_uint32), ("_f", ctypes.c_char * 8),
    ]


assert ctypes.sizeof(sysinfo_struct) == 112 and ctypes.sizeof(compat_sysinfo_struct) == 64

_sysinfo = _ctypeslib.function("sysinfo")


def host_sysinfo() -> sysinfo_struct:
    """What the kernel says to us (the host's namespaces): ``mem_unit`` 1 on 64-bit."""
    info = sysinfo_struct()
    _sysinfo(ctypes.byref(info))
    return info


def pack_sysinfo(compat: bool, *, uptime: int, loads: tuple[int, int, int], totalram: int,
                 freeram: int, sharedram: int, bufferram: int, totalswap: int, freeswap: int,
                 procs: int, mem_unit: int) -> bytes:
    """The struct's bytes in the 64-bit or the compat layout, padding zeroed.
    Values must already fit their fields (ctypes would silently cut them)."""
    info: sysinfo_struct | compat_sysinfo_struct = (
        compat_sysinfo_struct() if compat else sysinfo_struct())
    info.uptime = uptime
    info.loads[0], info.loads[1], info.loads[2] = loads
    info.totalram, info.freeram, info.sharedram = totalram, freeram, sharedram
    info.bufferram, info.totalswap, info.freeswap = bufferram, totalswap, freeswap
    info.procs = procs
    info.mem_unit = mem_unit
    return bytes(info)
