"""Architectures and syscall numbers: the only user of libseccomp (pyseccomp).

Kernel facts that shaped this module:

* Syscall numbers differ per architecture: mknod is 133 on x86_64, 14 on
  i386, 0x40000085 on x32, and aarch64 has no mknod at all.  Numbers are
  never hard-coded: they come from libseccomp's resolver, which knows every
  arch's table, and a name it does not know is an error, not a default.
* ``seccomp_data.arch`` is an AUDIT_ARCH_* value (``include/uapi/linux/audit.h``:
  the ELF machine, ``__AUDIT_ARCH_64BIT``, ``__AUDIT_ARCH_LE``).  Those are ABI
  constants, written here so that reading a notification needs no libseccomp;
  a test checks them against libseccomp's.
* An x86_64 host also runs i386 programs (AUDIT_ARCH_I386, their own
  numbers) and, where the kernel allows it, x32 programs.  The kernel reports
  an x32 call as AUDIT_ARCH_X86_64 with ``__X32_SYSCALL_BIT`` set in ``nr``;
  ``AUDIT_ARCH_X32`` is libseccomp's own token for that ABI and never appears
  in a notification.  So x32 numbers (bit included, as libseccomp gives them)
  are filed under AUDIT_ARCH_X86_64.  An aarch64 host runs arm (AArch32) ones.
* pyseccomp loads libseccomp when imported, so it is imported on first use:
  importing the package (to parse an LXC datagram, say) does not need it.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Final

__all__ = [
    "AUDIT_ARCH_X86_64", "AUDIT_ARCH_I386", "AUDIT_ARCH_X32", "AUDIT_ARCH_AARCH64",
    "AUDIT_ARCH_ARM", "X32_SYSCALL_BIT", "HOST_ARCHES", "syscall_numbers", "native_syscall_number"
]

_EM_386: Final = 3
_EM_ARM: Final = 40
_EM_X86_64: Final = 62
_EM_AARCH64: Final = 183
_AUDIT_ARCH_64BIT: Final = 0x80000000
_AUDIT_ARCH_LE: Final = 0x40000000

AUDIT_ARCH_X86_64: Final = _EM_X86_64 | _AUDIT_ARCH_64BIT | _AUDIT_ARCH_LE  # 0xC000003E
AUDIT_ARCH_I386: Final = _EM_386 | _AUDIT_ARCH_LE  # 0x40000003
AUDIT_ARCH_X32: Final = _EM_X86_64 | _AUDIT_ARCH_LE  # libseccomp's SCMP_ARCH_X32 token
AUDIT_ARCH_AARCH64: Final = _EM_AARCH64 | _AUDIT_ARCH_64BIT | _AUDIT_ARCH_LE  # 0xC00000B7
AUDIT_ARCH_ARM: Final = _EM_ARM | _AUDIT_ARCH_LE  # 0x40000028

X32_SYSCALL_BIT: Final = 0x40000000

# The arches whose calls can reach us on each host machine: the native one and
# its compat modes, as LXC adds them to a container's filter.
HOST_ARCHES: Final = {
    "x86_64": (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, AUDIT_ARCH_X32),
    "aarch64": (AUDIT_ARCH_AARCH64, AUDIT_ARCH_ARM),
}

# The arch a notification names for calls made in each libseccomp ABI.
_REPORTED_AS: Final = {AUDIT_ARCH_X32: AUDIT_ARCH_X86_64}


def syscall_numbers(names: tuple[str, ...],
                    machine: str | None = None) -> dict[tuple[int, int], str]:
    """Map ``(audit arch, nr)``, as a notification gives them, to a syscall name
    for every arch this host can run.

    A name an arch lacks (``mknod`` on aarch64) is simply absent for that arch.
    An unknown host machine is an error: we do not guess numbers.
    """
    import pyseccomp

    machine = machine or os.uname().machine
    try:
        arches = HOST_ARCHES[machine]
    except KeyError:
        raise RuntimeError(f"unsupported host architecture {machine!r}") from None
    table: dict[tuple[int, int], str] = {}
    for arch in arches:
        for name in names:
            nr = int(pyseccomp.resolve_syscall(arch, name))
            if nr >= 0:  # libseccomp's negative numbers mean "not on this arch"
                table[(_REPORTED_AS.get(arch, arch), nr)] = name
    return table


@cache
def native_syscall_number(name: str) -> int:
    """The number of ``name`` on this machine's native arch; an unknown name is an error."""
    import pyseccomp

    nr = int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))
    if nr < 0:
        raise RuntimeError(f"libseccomp knows no syscall {name!r} on this architecture")
    return nr
