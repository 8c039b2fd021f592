"""Compile a profile into LXC's v2 seccomp policy text (``lxc.seccomp.profile``).

The text keeps LXC's own default denylist (``common.seccomp``), then adds one
``notify`` rule per intercepted call and argument filter, so the kernel only
stops the calls we may act on: for mknod, only character and block nodes
(``S_IFMT`` bits of the mode); FIFOs, sockets and regular files never leave
the kernel.
"""

from __future__ import annotations

import stat

from .profile import Profile

_S_IFMT = 0o170000  # stat.S_IFMT is a function in Python, the mask is this

# LXC's /usr/share/lxc/config/common.seccomp, which a container that sets its
# own lxc.seccomp.profile would otherwise lose.
_LXC_DEFAULT_DENY = (
    "reject_force_umount  # umount -f stays refused, as LXC's default profile does",
    "[all]",
    "kexec_load errno 1",
    "open_by_handle_at errno 1",
    "init_module errno 1",
    "finit_module errno 1",
    "delete_module errno 1",
)

# (syscall, index of the mode argument) for every entry point of mknod.
_MKNOD_ENTRY_POINTS = (("mknod", 1), ("mknodat", 2))


def _masked_eq(index: int, value: int, mask: int) -> str:
    return f"[{index},{value},SCMP_CMP_MASKED_EQ,{mask}]"


def notify_rules(profile: Profile) -> list[str]:
    rules: list[str] = []
    if "mknod" in profile.intercept:
        for syscall, mode_arg in _MKNOD_ENTRY_POINTS:
            for node_type in (stat.S_IFCHR, stat.S_IFBLK):
                rules.append(f"{syscall} notify {_masked_eq(mode_arg, node_type, _S_IFMT)}")
    return rules


def compile_policy(profile: Profile) -> str:
    lines = ["2", "denylist", *_LXC_DEFAULT_DENY,
             f"# intercepted for profile {profile.name!r} by lxc-notify", *notify_rules(profile)]
    return "\n".join(lines) + "\n"
