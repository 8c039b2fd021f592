"""The handler registry, the LXD keys and the dispatch table, each checked against a
source of its own.

The registry, the keys and the table are all built from the family
declarations in ``policy/``; comparing them with those declarations (or with
each other) would pass whatever the declarations said.  Here the registry is
compared with what is on disk (the handler modules that define ``handle``),
the keys with LXD's documented instance options, and the table with what
LXD's keys intercept and the numbers in the kernel's own tables
(arch/x86/entry/syscalls/syscall_64.tbl and syscall_32.tbl), written out
below.  A family that gains or loses an entry point, a key, or a number
fails here until this file says so too.
"""

from __future__ import annotations

import importlib
import pkgutil

from lxc_notify_plugin import handlers, kernel
from lxc_notify_plugin.dispatch import Dispatcher
from lxc_notify_plugin.handlers import registry
from lxc_notify_plugin.policy import keys

# Family -> its entry points: (name, x86_64 number, i386 number).  The families are
# LXD's keys; the entry points are the kernel's calls for what each key
# intercepts (fsopen: trapped so that mount(8) falls back to mount(2), as Incus does).
ENTRY_POINTS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "mknod": (("mknod", 133, 14), ("mknodat", 259, 297)),
    "mount": (("mount", 165, 21), ("fsopen", 430, 430)),
    "setxattr": (("setxattr", 188, 226), ("lsetxattr", 189, 227), ("fsetxattr", 190, 228)),
    "sysinfo": (("sysinfo", 99, 116),),
    "sched_setscheduler": (("sched_setscheduler", 144, 156), ("sched_setparam", 142, 154)),
    "bpf": (("bpf", 321, 357),),
}

# LXD's instance options under security.syscalls.intercept (doc: instance options,
# "security"), with the kind of value each takes.
LXD_KEYS = {
    "bpf": "bool", "bpf.devices": "bool", "mknod": "bool", "mount": "bool",
    "mount.allowed": "fs-list", "mount.fuse": "fuse-map", "mount.shift": "bool",
    "sched_setscheduler": "bool", "setxattr": "bool", "sysinfo": "bool",
}


def test_every_handler_module_on_disk_is_registered_under_its_family() -> None:
    on_disk = {}
    for info in pkgutil.iter_modules(handlers.__path__):
        module = importlib.import_module(f"{handlers.__name__}.{info.name}")
        if callable(getattr(module, "handle", None)):
            on_disk[info.name] = module.handle
    assert on_disk, "no handler module found"
    # Each family with the handle of the module of its name, and no module left out.
    assert {name: entry.handle for name, entry in registry().items()} == on_disk


def test_the_keys_are_lxds_instance_options() -> None:
    known = {name.removeprefix(keys.PREFIX): spec for name, spec in keys.known().items()}
    assert keys.PREFIX == "security.syscalls.intercept."
    assert {name: spec.kind for name, spec in known.items()} == LXD_KEYS
    for name, spec in known.items():  # each key belongs to the family it names first
        assert spec.family == name.split(".")[0], (name, spec.family)


def test_the_dispatch_table_is_the_kernels_numbers_for_each_familys_calls() -> None:
    built = set(registry())
    assert not built - set(ENTRY_POINTS), "a family with no entry points written out here"
    expected = {}
    for family in built:
        for syscall, x86_64, i386 in ENTRY_POINTS[family]:
            expected[(kernel.AUDIT_ARCH_X86_64, x86_64)] = (syscall, family)
            # x32 calls are reported as x86_64 with the x32 bit set in the number.
            expected[(kernel.AUDIT_ARCH_X86_64, kernel.X32_SYSCALL_BIT | x86_64)] = (syscall,
                                                                                       family)
            expected[(kernel.AUDIT_ARCH_I386, i386)] = (syscall, family)
    table = Dispatcher().syscalls
    assert {key: table[key] for key in expected if key in table} == expected, "missing or wrong"
    assert not table.keys() - expected.keys(), "in the table, not in the kernel's list"
