"""Render a container's filter rules as an OCI runtime's seccomp JSON (``linux.seccomp``).

The rules are the families' own (``policy/filter.py``), the same data LXC's
policy text is made of.  They are laid over a *base* profile, by default the
distribution's ``/usr/share/containers/seccomp.json``, which is an allowlist:
``defaultAction`` refuses and one big entry allows every known syscall
unconditionally.  Facts that shaped how:

* libseccomp lets an unconditional rule of a syscall swallow every
  conditional rule of it (seen: ``ALLOW mknodat`` plus ``NOTIFY mknodat if
  S_IFCHR`` compiles to ALLOW alone, in either order).  So a syscall we trap
  with conditions is taken out of the base's entry, and the calls our
  conditions leave out get the base's action back through rules that are
  the exact complement of ours, computed here (a FIFO mknodat must stay
  allowed, not fall to the base's default ENOSYS).
* A call we hand back (``SECCOMP_USER_NOTIF_FLAG_CONTINUE``) runs as if the
  filter had allowed it.  Trapping a syscall the base refuses would let a
  container past the base, so such a syscall is not trapped at all (and
  the caller is told why).
* OCI spells ``(arg & mask) == datum`` as ``value = mask, valueTwo = datum``
  (libseccomp's datum_a/datum_b, as runc and crun pass them).
* runc (1.1.5) and crun refuse a conditional rule naming one argument twice,
  or split it into an OR: every rule here names each argument once, several
  conditions on one argument being merged into one mask first.
* A runtime keeps running its own code under the filter after installing
  it (runc writes to its sync pipe, crun sends the listener with sendmsg):
  a NOTIFY on those would deadlock the start, so it is refused here.
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..errors import ConfigError
from .effective import ContainerPolicy, notify_rules
from .filter import EQ, MASKED_EQ, NE, ArgMatch, Rule
from .lxc_policy import LXC_DEFAULT_DENY, NO_NESTED_LISTENER

DISTRIBUTION_BASE: Final = "/usr/share/containers/seccomp.json"
ALLOW: Final = "SCMP_ACT_ALLOW"
NOTIFY: Final = "SCMP_ACT_NOTIFY"
ERRNO: Final = "SCMP_ACT_ERRNO"
WAIT_KILLABLE_RECV: Final = "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"
_U64: Final = 0xFFFFFFFFFFFFFFFF

# What runc and crun still call after installing the filter, before or while
# they execve the container's process, and what every process needs to end.
RUNTIME_NEEDS: Final = frozenset({
    "read", "write", "writev", "sendmsg", "sendto", "recvmsg", "recvfrom", "close",
    "close_range", "fcntl", "fcntl64", "futex", "execve", "execveat", "exit", "exit_group",
    "rt_sigreturn", "rt_sigaction", "rt_sigprocmask", "getpid", "gettid", "epoll_wait",
    "epoll_pwait", "poll", "ppoll", "select", "pselect6", "nanosleep", "clock_nanosleep",
    "brk", "mmap", "munmap", "mprotect", "capset", "prctl", "seccomp",
})

_ARCHITECTURES: Final = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}


def minimal_base() -> dict[str, Any]:
    """Allow by default, refuse what LXC's default profile refuses: for hosts
    without the distribution's profile (and the tests)."""
    return {
        "defaultAction": ALLOW,
        "architectures": list(_ARCHITECTURES.get(os.uname().machine, [])),
        "syscalls": [_entry(rule) for rule in (*LXC_DEFAULT_DENY, NO_NESTED_LISTENER)],
    }


# --- conditions as sets of atoms ---------------------------------------------------------
#
# An atom is one comparison a rule can AND: ``(index, "bit", bit, set)`` for one
# bit of a masked comparison, ``(index, "eq"|"ne", value)`` for the others.  A
# masked comparison is the AND of its bits, so its negation is an OR of
# single-bit atoms; merging atoms on one argument back into one mask gives
# rules the runtimes accept.

Atom = tuple[int, str, int, int]
Conjunction = frozenset[Atom]


def _atoms(match: ArgMatch) -> Conjunction:
    if match.op == MASKED_EQ:
        if match.value & ~match.mask:
            raise ValueError(f"{match}: value has bits outside its mask")
        return frozenset((match.index, "bit", 1 << b, (match.value >> b) & 1)
                         for b in range(64) if match.mask >> b & 1)
    if match.op in (EQ, NE):
        return frozenset({(match.index, match.op, match.value, 0)})
    raise ValueError(f"{match}: no OCI rendering for {match.op}")


def _negated(atom: Atom) -> Atom:
    index, kind, value, bit_set = atom
    if kind == "bit":
        return (index, kind, value, 1 - bit_set)
    return (index, NE if kind == EQ else EQ, value, 0)


def _consistent(conj: Conjunction) -> bool:
    """False when no argument value satisfies every atom (x==1 and x==2; a bit 0 and 1)."""
    for index in {a[0] for a in conj}:
        mine = [a for a in conj if a[0] == index]
        bits = {(a[2], a[3]) for a in mine if a[1] == "bit"}
        if len({bit for bit, _ in bits}) != len(bits):
            return False  # one bit asked to be both
        equal = {a[2] for a in mine if a[1] == EQ}
        if len(equal) > 1:
            return False
        for value in equal:
            if any((value & bit != 0) != bool(on) for bit, on in bits):
                return False
            if any(a[1] == NE and a[2] == value for a in mine):
                return False
    return True


def complement(conjunctions: Iterable[Conjunction]) -> list[Conjunction]:
    """Conjunctions whose OR is true exactly where none of ``conjunctions`` is.

    NOT (C1 or C2 ...) = (NOT C1) and (NOT C2) ...; each NOT Ck is an OR of
    negated atoms; distributing gives one conjunction per choice of one atom
    from each.  Contradictions are dropped, and so is any conjunction that
    another one (a subset of its atoms) already covers."""
    choices = [sorted(_negated(a) for a in conj) for conj in conjunctions]
    if not choices:
        return [frozenset()]  # nothing trapped: everything is the complement
    found = {frozenset(pick) for pick in itertools.product(*choices)}
    found = {c for c in found if _consistent(c)}
    return sorted((c for c in found if not any(o < c for o in found)),
                  key=lambda c: (len(c), sorted(c)))


def _oci_args(conj: Conjunction) -> list[dict[str, Any]]:
    """One OCI comparison per argument (runc splits repeated indexes into an OR)."""
    args: list[dict[str, Any]] = []
    for index in sorted({a[0] for a in conj}):
        mine = [a for a in conj if a[0] == index]
        equal = [a for a in mine if a[1] == EQ]
        unequal = [a for a in mine if a[1] == NE]
        bits = [a for a in mine if a[1] == "bit"]
        if equal:  # consistent: an equality already implies the rest
            args.append(_arg(index, equal[0][2], EQ))
        elif unequal and not bits and len(unequal) == 1:
            args.append(_arg(index, unequal[0][2], NE))
        elif bits and not unequal:
            mask = sum(a[2] for a in bits)
            datum = sum(a[2] for a in bits if a[3])
            args.append(_arg(index, datum, MASKED_EQ, mask))
        else:
            raise ValueError(f"argument {index}: {sorted(mine)} cannot be one comparison")
    return args


def _arg(index: int, value: int, op: str, mask: int = _U64) -> dict[str, Any]:
    if op == MASKED_EQ:
        return {"index": index, "value": mask, "valueTwo": value, "op": op}
    return {"index": index, "value": value, "op": op}


def _entry(rule: Rule) -> dict[str, Any]:
    entry: dict[str, Any] = {"names": [rule.syscall]}
    if rule.errno_value is None:
        entry["action"] = NOTIFY
    else:
        entry.update(action=ERRNO, errnoRet=rule.errno_value)
    if rule.args:
        entry["args"] = _oci_args(frozenset().union(*(_atoms(a) for a in rule.args)))
    return entry


# --- laying the rules over a base ---------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    profile: dict[str, Any]
    notes: tuple[str, ...]  # syscalls left untrapped, and why


def _base_treatment(base: dict[str, Any], syscall: str, source: str
                    ) -> tuple[dict[str, Any] | None, str | None]:
    """The base's one unconditional entry for ``syscall`` (None: its default), or
    why the syscall cannot be trapped over this base."""
    entries = [e for e in base["syscalls"] if syscall in e["names"]]
    if not entries:
        if base["defaultAction"] != ALLOW:
            return None, f"{syscall}: the base refuses it ({base['defaultAction']})"
        return None, None
    if len(entries) > 1 or entries[0].get("args"):
        return None, (f"{syscall}: the base treats it in {len(entries)} entries or with "
                      "argument conditions; not trapped over that")
    if entries[0].get("action") != ALLOW:
        return None, f"{syscall}: the base refuses it ({entries[0].get('action')})"
    return entries[0], None


def render(policy: ContainerPolicy, base: Mapping[str, Any], *, listener_path: str,
           metadata: str, flags: tuple[str, ...] = (), source: str = "<base>") -> Rendered:
    """``base`` with the policy's notify rules, ``listenerPath`` and ``listenerMetadata``."""
    out = copy.deepcopy(dict(base))
    _check_base(out, source)
    notes: list[str] = []
    by_syscall: dict[str, list[Rule]] = {}
    for rule in notify_rules(policy):
        if rule.syscall in RUNTIME_NEEDS:
            raise ConfigError(policy.profile.source, f"rule {rule.text()!r}",
                              "a runtime calls this itself after installing the filter: "
                              "trapping it would hang every container start")
        by_syscall.setdefault(rule.syscall, []).append(rule)
    added: list[dict[str, Any]] = []
    for syscall, rules in by_syscall.items():
        entry, why = _base_treatment(out, syscall, source)
        if why is not None:
            notes.append(why)
            continue
        carried: dict[str, Any] = {k: copy.deepcopy(entry[k]) for k in ("includes", "excludes")
                   if entry is not None and k in entry}
        if entry is not None:
            entry["names"] = [n for n in entry["names"] if n != syscall]
        for rule in rules:
            added.append({**_entry(rule), **carried})
        if entry is not None and out["defaultAction"] != ALLOW:
            # What our conditions leave out keeps the base's ALLOW.
            conjunctions = [frozenset().union(*(_atoms(a) for a in r.args)) for r in rules]
            for conj in complement(conjunctions):
                rest: dict[str, Any] = {"names": [syscall], "action": ALLOW, **carried}
                if conj:
                    rest["args"] = _oci_args(conj)
                added.append(rest)
    out["syscalls"] = [e for e in out["syscalls"] if e["names"]] + added
    out["listenerPath"] = listener_path
    out["listenerMetadata"] = metadata
    if flags:
        out["flags"] = sorted(set(out.get("flags") or []) | set(flags))
    return Rendered(out, tuple(notes))


def _check_base(base: dict[str, Any], source: str) -> None:
    """The shape this renderer relies on; old single ``name`` entries are made ``names``."""
    if not isinstance(base.get("defaultAction"), str):
        raise ConfigError(source, "defaultAction", "missing or not a string")
    syscalls = base.setdefault("syscalls", [])
    if not isinstance(syscalls, list):
        raise ConfigError(source, "syscalls", "not an array")
    for i, entry in enumerate(syscalls):
        if not isinstance(entry, dict):
            raise ConfigError(source, f"syscalls[{i}]", "not an object")
        if "names" not in entry and isinstance(entry.get("name"), str):
            entry["names"] = [entry.pop("name")]
        names = entry.get("names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(source, f"syscalls[{i}].names", "not an array of strings")
