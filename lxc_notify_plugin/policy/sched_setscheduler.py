"""The sched_setscheduler family: scheduling changes a container's root may make.

The kernel asks for CAP_SYS_NICE in the *host's* user namespace to give a
task a real-time policy, raise its priority, or change another user's
task, so a container's root cannot, even on its own processes.  For a
caller holding CAP_SYS_NICE in the container's user namespace the
supervisor makes the call, on the task the caller names: its pid is one of
the caller's pid namespace (0 is the calling thread), translated to the
host's (``caller/task.py: host_pid``); a pid that namespace lacks is ESRCH,
as the kernel says.  The kernel's own checks on the policy, the priority
and the target's RT budget (``cpu.rt_runtime_us`` of its cgroup) give its
own errors.  Callers without CAP_SYS_NICE are handed back: the kernel then
resolves the pid in their namespace itself.

``sched_setparam`` has the same pid and the same checks, so it is part of the
family.  (``sched_setattr`` is not: LXD does not intercept it either.)
No argument tells a call we would act on from one we would not (pid 0 is as
privileged as any other): every call is trapped when the family is on.
"""

from __future__ import annotations

from .families import Family
from .filter import Rule

SYSCALLS = ("sched_setscheduler", "sched_setparam")


def filter_rules(settings: None) -> tuple[Rule, ...]:
    return tuple(Rule(syscall, None) for syscall in SYSCALLS)


FAMILY: Family[None] = Family(
    "sched_setscheduler", SYSCALLS, filter_rules, doc="Emulate sched_setscheduler",
    capabilities={"CAP_SYS_NICE": "sched_setscheduler and sched_setparam for callers with "
                                  "CAP_SYS_NICE"})
