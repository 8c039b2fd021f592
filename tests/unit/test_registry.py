"""The handler registry: every family declared in policy/ has its handler, and every
list that used to be kept by hand is derived from the declarations."""

from __future__ import annotations

from lxc_notify_plugin import kernel
from lxc_notify_plugin.dispatch import Dispatcher
from lxc_notify_plugin.handlers import registry
from lxc_notify_plugin.policy import keys
from lxc_notify_plugin.policy.families import LXD_FAMILIES, built, family_of_syscalls


def test_every_declared_family_has_a_handler_and_nothing_else_does() -> None:
    assert set(registry()) == set(built()) and built()
    for name, entry in registry().items():
        assert entry.family.name == name and entry.family.syscalls
        assert entry.handle.__module__ == f"lxc_notify_plugin.handlers.{name}"


def test_families_use_lxds_names_and_keys() -> None:
    assert set(built()) <= set(LXD_FAMILIES)
    assert {spec.family for spec in keys.KEYS.values()} == set(LXD_FAMILIES)


def test_the_dispatch_table_covers_every_syscall_on_every_host_arch() -> None:
    table = Dispatcher().syscalls
    by_name = family_of_syscalls()
    for arch in (kernel.AUDIT_ARCH_X86_64, kernel.AUDIT_ARCH_I386):
        names = {syscall for (a, _), (syscall, _) in table.items() if a == arch}
        # i386 has every mknod entry point; each maps to its family.
        assert names == set(by_name), (arch, names)
    # x32 calls are reported as x86_64 with the x32 bit set in the number.
    assert table[(kernel.AUDIT_ARCH_X86_64, kernel.X32_SYSCALL_BIT | 133)] == ("mknod", "mknod")
    assert all(by_name[syscall] == family for syscall, family in table.values())
    assert table[(kernel.AUDIT_ARCH_X86_64, 133)] == ("mknod", "mknod")
    assert table[(kernel.AUDIT_ARCH_I386, 14)] == ("mknod", "mknod")
