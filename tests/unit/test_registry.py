"""The handler registry and the dispatch table, each checked against a source of its own.

The registry is built from the family declarations; it is compared here with
what is on disk (the handler modules that define ``handle``) and the table
with the syscall numbers of the kernel's own tables (arch/x86/entry/syscalls),
never with the list either was built from.
"""

from __future__ import annotations

import importlib
import pkgutil

from lxc_notify_plugin import handlers, kernel
from lxc_notify_plugin.dispatch import Dispatcher
from lxc_notify_plugin.handlers import registry
from lxc_notify_plugin.policy import keys
from lxc_notify_plugin.policy.families import LXD_FAMILIES

# syscall_64.tbl and syscall_32.tbl: (x86_64 nr, i386 nr).
KERNEL_NUMBERS = {
    "mknod": (133, 14), "mknodat": (259, 297), "mount": (165, 21), "fsopen": (430, 430),
    "setxattr": (188, 226), "lsetxattr": (189, 227), "fsetxattr": (190, 228),
    "sysinfo": (99, 116), "sched_setscheduler": (144, 156), "sched_setparam": (142, 154),
}


def test_every_handler_module_on_disk_is_registered_under_its_family() -> None:
    on_disk = {}
    for info in pkgutil.iter_modules(handlers.__path__):
        module = importlib.import_module(f"{handlers.__name__}.{info.name}")
        if callable(getattr(module, "handle", None)):
            on_disk[info.name] = module.handle
    assert on_disk and {name: entry.handle for name, entry in registry().items()} == on_disk
    for name, entry in registry().items():
        assert entry.family.name == name and entry.family.syscalls


def test_each_lxd_switch_names_its_own_family() -> None:
    for family in LXD_FAMILIES:
        assert keys.known()[keys.PREFIX + family].family == family
    assert all(spec.name.startswith(keys.PREFIX + spec.family) for spec in keys.known().values())


def test_the_dispatch_table_has_the_kernels_numbers_on_every_host_arch() -> None:
    table = Dispatcher().syscalls
    syscalls = {syscall: family for name, entry in registry().items()
                for syscall in entry.family.syscalls for family in [name]}
    assert set(KERNEL_NUMBERS) <= set(syscalls) or set(syscalls) <= set(KERNEL_NUMBERS)
    for syscall, (x86_64, i386) in KERNEL_NUMBERS.items():
        if syscall not in syscalls:
            continue
        family = syscalls[syscall]
        assert table[(kernel.AUDIT_ARCH_X86_64, x86_64)] == (syscall, family)
        assert table[(kernel.AUDIT_ARCH_I386, i386)] == (syscall, family)
        # x32 calls are reported as x86_64 with the x32 bit set in the number.
        if x86_64 < 512:
            assert table[(kernel.AUDIT_ARCH_X86_64, kernel.X32_SYSCALL_BIT | x86_64)] == (
                syscall, family)
    # Nothing else is in the table under a known call's name.
    for (arch, nr), (syscall, _) in table.items():
        if syscall in KERNEL_NUMBERS and arch == kernel.AUDIT_ARCH_I386:
            assert nr == KERNEL_NUMBERS[syscall][1], (syscall, nr)
