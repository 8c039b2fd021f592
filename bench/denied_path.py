"""Where a denied call's microseconds go, inside the daemon's process.

Each step the LXC transport's serving thread takes for the datagram LXC's
monitor sends for a refused ``mknodat(c 4:1)``, alone, in a loop with the
same objects a service has (dispatcher, metrics and audit log hooks; hot
caches: the floor of each step's cost), then the whole ``_reply`` the same
way.  ``--audit off`` drops the audit hook and the details it needs, as
``path = ""`` does.  The end-to-end price through LXC is
bench/mknod_latency.py's; this says where it goes.  (A round trip over a
socketpair in one process was tried: its wake-ups swung the ratio from 1.7
to 5 between rounds, so it is not here.)

Run as root: ``.venv/bin/python bench/denied_path.py``.  Not a test.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

# _common first: it puts the repository on sys.path for lxc_notify_plugin.
import _common  # noqa: F401

from lxc_notify_plugin import kernel
from lxc_notify_plugin.caller.thread import ThreadState
from lxc_notify_plugin.dispatch import Dispatcher, HostViews, SupervisedContainer
from lxc_notify_plugin.paths import PACKAGE_PROFILES
from lxc_notify_plugin.policy.effective import ContainerPolicy
from lxc_notify_plugin.policy.profile import load_profile
from lxc_notify_plugin.service.audit import AuditLog
from lxc_notify_plugin.service.metrics import Metrics
from lxc_notify_plugin.state import ContainerRecord
from lxc_notify_plugin.transport import lxc as protocol
from lxc_notify_plugin.transport.lxc import LxcProxy

COOKIE = b"bench-cookie-0123456789abcdef"
MKNODAT = 259
S_IFCHR = 0o20000

def make_daemon_parts(tmp: Path, audit_on: bool
                      ) -> tuple[Dispatcher, SupervisedContainer, list[Callable[[], object]]]:
    """The dispatcher, hooks and container as Supervisor makes them (audit on or off)."""
    profile = load_profile("default", (PACKAGE_PROFILES,))
    container = SupervisedContainer(ContainerRecord("bench", COOKIE.decode(), "default"),
                          ContainerPolicy.from_profile(profile))
    metrics = Metrics(tmp / "metrics.prom", 5.0)
    audit = AuditLog(tmp / "audit.log", 10 << 20, 5, 4096) if audit_on else None
    hooks = (metrics.record,) + ((audit.record,) if audit else ())
    dispatcher = Dispatcher(HostViews(), hooks=hooks)
    dispatcher.keeps_details = audit is not None
    metrics.start()
    closers: list[Callable[[], object]] = [metrics.close, dispatcher.close]
    if audit is not None:
        audit.start()
        closers.insert(0, audit.close)
    return dispatcher, container, closers


def steps(audit_on: bool, number: int) -> list[tuple[str, float]]:
    """Each step of the serving thread for the denied datagram, alone: ns per step."""
    from lxc_notify_plugin.dispatch import Outcome
    from lxc_notify_plugin.handlers.call import Call
    from lxc_notify_plugin.handlers.mknod import decode, refused
    from lxc_notify_plugin.policy.mknod import FAMILY, mknod_rules
    from lxc_notify_plugin.request import Notice, Request
    from lxc_notify_plugin.transport.lxc import _Session

    results: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="lxc-notify-denied-") as tmp:
        dispatcher, container, closers = make_daemon_parts(Path(tmp), audit_on)
        sizes = kernel.notif_sizes()
        path = ctypes.create_string_buffer(b"/bench/denied-node")
        pid = os.getpid()
        gram = protocol.build(7, pid, MKNODAT, kernel.AUDIT_ARCH_X86_64,
                              (0xFFFFFF9C, ctypes.addressof(path), S_IFCHR | 0o644,
                               os.makedev(4, 1)), init_pid=pid, cookie=COOKIE, sizes=sizes)
        thread = ThreadState()
        session = _Session(1)
        lookup = lambda cookie: container  # noqa: E731
        session.bind(COOKIE, lookup)
        notification = protocol.parse(gram, 3, sizes)
        notice = Notice(notification.notif_id, notification.pid, notification.arch,
                        notification.nr, notification.args)
        policy = container.policy
        view = thread.view(container.name, pid)
        request = Request(view, notice, "mknodat", -1, -1, thread.host_proc_fd,
                          dispatcher.keeps_details)
        section = policy.of(FAMILY)
        proxy = LxcProxy(Path(tmp) / "unused.sock", dispatcher, lookup, sizes)
        fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(3)]
        answer = dispatcher.answer(container, notice, thread, pid, -1, -1)
        event = Outcome(container.name, notice.tid, "mknodat", "kernel", 0, 1000,
                        {"dev": "c 4:1", "mode": "0644", "path": "/bench/denied-node"})

        # A tree from before the send was added (this file run against it) returns the reply.
        discard = (lambda _: None,) if "send" in proxy._reply.__code__.co_varnames else ()

        def until_sent() -> list[tuple[str, float]]:
            """proxy._reply with a send, as the serving loop calls it: ns until the
            answer was handed to send, and until _reply returned (medians)."""
            if "send" not in proxy._reply.__code__.co_varnames:
                return []
            stamps: list[int] = []
            sent, whole = [], []
            for _ in range(number):
                start = time.perf_counter_ns()
                proxy._reply(gram, fds, 0, session, thread,
                             lambda _: stamps.append(time.perf_counter_ns()))
                whole.append(time.perf_counter_ns() - start)
                sent.append(stamps.pop() - start)
            return [("whole: proxy._reply until the answer is sent", statistics.median(sent)),
                    ("whole: proxy._reply with send, to its return", statistics.median(whole))]

        def close_one() -> float:
            """ns to close one received fd (dups of /dev/null, closed in batches)."""
            best = float("inf")
            for _ in range(20):
                batch = [os.dup(fds[0]) for _ in range(1000)]
                start = time.perf_counter_ns()
                for fd in batch:
                    os.close(fd)
                best = min(best, (time.perf_counter_ns() - start) / 1000)
            return best

        cases: list[tuple[str, Callable[[], object]]] = [
            ("transport: parse the datagram (Notification)",
             lambda: protocol.parse(gram, 3, sizes)),
            ("transport: the cookie (session.bind)", lambda: session.bind(COOKIE, lookup)),
            ("transport: Notice", lambda: Notice(notification.notif_id, notification.pid,
                                                 notification.arch, notification.nr,
                                                 notification.args)),
            ("dispatch: syscall lookup + intercepts",
             lambda: dispatcher.syscalls.get((notice.arch, notice.nr)) and
             policy.intercepts("mknod")),
            ("dispatch: thread.view (cached)", lambda: thread.view(container.name, pid)),
            ("dispatch: Request()", lambda: Request(view, notice, "mknodat", -1, -1,
                                                    thread.host_proc_fd,
                                                    dispatcher.keeps_details)),
            ("dispatch: Call()", lambda: Call(request, policy, thread, dispatcher.host,
                                              container, dispatcher)),
            ("mknod: decode + kind + major/minor", lambda: decode("mknodat", notice.args)),
            ("mknod: policy rules (c 4:1)",
             lambda: mknod_rules(policy.of(FAMILY), "c", 4, 1, None)),
            ("mknod: note dev and mode", lambda: request.note(dev="c 4:1", mode="0644")),
            ("mknod: log.debug (off)", lambda: __import__("logging").getLogger(
                "lxc_notify_plugin.handlers.mknod").debug("%s %d:%d", "c", 4, 1)),
            ("mknod: read the path (audit only)",
             lambda: kernel.read_task_c_string(pid, ctypes.addressof(path))),
            ("mknod: refused(policy)", lambda: refused(policy)),
            ("dispatch: container.count", lambda: container.count("kernel")),
            ("dispatch: Outcome()", lambda: Outcome(container.name, notice.tid, "mknodat",
                                                    "kernel", 0, 1000, request.details)),
            *[(f"hook: {hook.__qualname__}", lambda hook=hook: hook(event))
              for hook in dispatcher.hooks],
            ("transport: reply bytes", lambda: notification.reply(flags=1)),
            ("whole: dispatcher.answer",
             lambda: dispatcher.answer(container, notice, thread, pid, -1, -1)),
            ("whole: proxy._reply (parse..reply bytes)",
             lambda: proxy._reply(gram, fds, 0, session, thread, *discard)),
        ]
        judge = dispatcher.handlers["mknod"].judge
        if judge is not None:
            cases.insert(7, ("mknod: judge (decode, rules, refused)",
                             lambda: judge("mknodat", notice.args, policy, dispatcher.host)))
        del section, answer
        try:
            for name, case in cases:
                cost = min(timeit.repeat(case, number=number, repeat=5)) / number
                results.append((name, cost * 1e9))
            results.insert(-2, ("syscall: close one fd (x3 per call)", close_one()))
            results.extend(until_sent())
        finally:
            for fd in fds:
                os.close(fd)
            thread.close()
            time.sleep(0.1)
            for close in closers:
                close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=20000, help="loops per step timing")
    parser.add_argument("--audit", choices=("on", "off", "both"), default="both")
    args = parser.parse_args()
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.audit]

    for audit_on in modes:
        label = "audit on" if audit_on else "audit off"
        print(f"\nsteps of a denied mknodat (c 4:1), {label}, best of 5 x {args.number}")
        total = 0.0
        for name, ns in steps(audit_on, args.number):
            if name.startswith("whole:"):
                print(f"  {name:46} {ns / 1000:7.2f} us")
                continue
            count = 3 if name.startswith("syscall: close") else 1
            total += ns * count
            print(f"  {name:46} {ns / 1000:7.2f} us" + (" x3" if count == 3 else ""))
        print(f"  {'sum of the steps':46} {total / 1000:7.2f} us")

    return 0


if __name__ == "__main__":
    sys.exit(main())
