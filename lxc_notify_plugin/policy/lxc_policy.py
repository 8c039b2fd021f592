"""Compile a container's policy into LXC's v2 seccomp policy text (``lxc.seccomp.profile``).

The text keeps LXC's own default denylist (``common.seccomp``), blocks a
nested seccomp listener as LXD does, then adds one ``notify`` rule per
intercepted call and argument filter, so the kernel only stops the calls we
may act on: for mknod, only character and block nodes (``S_IFMT`` bits of the
mode); FIFOs, sockets and regular files never leave the kernel.

The same rules are also built with pyseccomp in a throw-away filter (never
loaded), so a rule libseccomp would reject is an error at enable/start time,
not a container that will not boot.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

import pyseccomp

from ..errors import ConfigError
from .effective import ContainerPolicy

_S_IFMT = 0o170000  # stat.S_IFMT is a function in Python, the mask is this
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 8


@dataclass(frozen=True)
class ArgMatch:
    """[index,value,SCMP_CMP_MASKED_EQ,mask]: (args[index] & mask) == value."""

    index: int
    value: int
    mask: int

    def text(self) -> str:
        return f"[{self.index},{self.value},SCMP_CMP_MASKED_EQ,{self.mask}]"


@dataclass(frozen=True)
class Rule:
    syscall: str
    errno_value: int | None  # None: notify the supervisor
    args: tuple[ArgMatch, ...] = ()

    def text(self) -> str:
        action = "notify" if self.errno_value is None else f"errno {self.errno_value}"
        return " ".join([self.syscall, action, *(a.text() for a in self.args)])


# LXC's /usr/share/lxc/config/common.seccomp, which a container that sets its
# own lxc.seccomp.profile would otherwise lose.
_LXC_DEFAULT_DENY = tuple(Rule(name, errno.EPERM) for name in (
    "kexec_load", "open_by_handle_at", "init_module", "finit_module", "delete_module"))

# A filter with a listener cannot be stacked under ours (the kernel says EBUSY);
# answering in the filter keeps the request away from us and the kernel alike.
_NO_NESTED_LISTENER = Rule("seccomp", errno.EBUSY, (
    ArgMatch(0, SECCOMP_SET_MODE_FILTER, 0xFFFFFFFF),
    ArgMatch(1, SECCOMP_FILTER_FLAG_NEW_LISTENER, SECCOMP_FILTER_FLAG_NEW_LISTENER)))

# (syscall, index of the mode argument) for every entry point of mknod.
_MKNOD_ENTRY_POINTS = (("mknod", 1), ("mknodat", 2))


def rules(policy: ContainerPolicy) -> list[Rule]:
    found = [*_LXC_DEFAULT_DENY, _NO_NESTED_LISTENER]
    if policy.intercepts("mknod"):
        for syscall, mode_arg in _MKNOD_ENTRY_POINTS:
            for node_type in (stat.S_IFCHR, stat.S_IFBLK):
                found.append(Rule(syscall, None, (ArgMatch(mode_arg, node_type, _S_IFMT),)))
    return found


def compile_policy(policy: ContainerPolicy) -> str:
    lines = ["2", "denylist",
             "reject_force_umount  # umount -f stays refused, as LXC's default profile does",
             "[all]",
             f"# profile {policy.profile.name!r} ({policy.profile.source}), by lxc-notify",
             *(rule.text() for rule in rules(policy))]
    return "\n".join(lines) + "\n"


_COMPAT_ARCHES = {"x86_64": (pyseccomp.Arch.X86, pyseccomp.Arch.X32),
                  "aarch64": (pyseccomp.Arch.ARM,)}


def check_with_libseccomp(policy: ContainerPolicy) -> None:
    """Build every rule with pyseccomp on every arch LXC will use; never load it."""
    filt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for arch in _COMPAT_ARCHES.get(os.uname().machine, ()):
        filt.add_arch(arch)
    for rule in rules(policy):
        action = pyseccomp.NOTIFY if rule.errno_value is None else pyseccomp.ERRNO(
            rule.errno_value)
        args = [pyseccomp.Arg(a.index, pyseccomp.MASKED_EQ, a.mask, a.value) for a in rule.args]
        try:
            filt.add_rule(action, rule.syscall, *args)
        except (OSError, ValueError, RuntimeError) as err:
            raise ConfigError(policy.profile.source, f"rule {rule.text()!r}",
                              f"libseccomp refuses it: {err}") from err
