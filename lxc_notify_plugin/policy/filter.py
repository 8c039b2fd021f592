"""Seccomp filter rules as plain data: what a family asks the kernel to send us.

One rule is a syscall, an action and argument conditions ANDed together.
The LXC start path prints them as LXC's v2 policy lines
(``policy/lxc_policy.py``); an OCI runtime's seccomp JSON is the other
rendering of the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

# libseccomp's comparison names, as LXC's policy text and OCI's JSON spell them.
MASKED_EQ = "SCMP_CMP_MASKED_EQ"
NE = "SCMP_CMP_NE"
EQ = "SCMP_CMP_EQ"


@dataclass(frozen=True)
class ArgMatch:
    """``args[index] OP value``; with MASKED_EQ: ``(args[index] & mask) == value``."""

    index: int
    value: int
    op: str = MASKED_EQ
    mask: int = 0xFFFFFFFFFFFFFFFF

    def text(self) -> str:
        if self.op == MASKED_EQ:
            return f"[{self.index},{self.value},{self.op},{self.mask}]"
        return f"[{self.index},{self.value},{self.op}]"


@dataclass(frozen=True)
class Rule:
    syscall: str
    errno_value: int | None  # None: notify the supervisor
    args: tuple[ArgMatch, ...] = ()

    def text(self) -> str:
        action = "notify" if self.errno_value is None else f"errno {self.errno_value}"
        return " ".join([self.syscall, action, *(a.text() for a in self.args)])
