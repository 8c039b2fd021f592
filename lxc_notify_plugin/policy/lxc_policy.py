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

import pyseccomp

from ..errors import ConfigError
from .effective import ContainerPolicy, notify_rules
from .filter import EQ, MASKED_EQ, NE, ArgMatch, Rule

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 8

# LXC's /usr/share/lxc/config/common.seccomp, which a container that sets its
# own lxc.seccomp.profile would otherwise lose.
LXC_DEFAULT_DENY = tuple(Rule(name, errno.EPERM) for name in (
    "kexec_load", "open_by_handle_at", "init_module", "finit_module", "delete_module"))

# A filter with a listener cannot be stacked under ours (the kernel says EBUSY);
# answering in the filter keeps the request away from us and the kernel alike.
NO_NESTED_LISTENER = Rule("seccomp", errno.EBUSY, (
    ArgMatch(0, SECCOMP_SET_MODE_FILTER, mask=0xFFFFFFFF),
    ArgMatch(1, SECCOMP_FILTER_FLAG_NEW_LISTENER, mask=SECCOMP_FILTER_FLAG_NEW_LISTENER)))


def rules(policy: ContainerPolicy) -> list[Rule]:
    """LXC's defaults, then each intercepted family's own rules."""
    return [*LXC_DEFAULT_DENY, NO_NESTED_LISTENER, *notify_rules(policy)]


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
        args = [_libseccomp_arg(a) for a in rule.args]
        try:
            filt.add_rule(action, rule.syscall, *args)
        except (OSError, ValueError, RuntimeError) as err:
            raise ConfigError(policy.profile.source, f"rule {rule.text()!r}",
                              f"libseccomp refuses it: {err}") from err


def _libseccomp_arg(match: ArgMatch) -> pyseccomp.Arg:
    if match.op == MASKED_EQ:
        return pyseccomp.Arg(match.index, pyseccomp.MASKED_EQ, match.mask, match.value)
    op = {NE: pyseccomp.NE, EQ: pyseccomp.EQ}[match.op]
    return pyseccomp.Arg(match.index, op, match.value)
