"""How many syscalls the lxc-notify daemon makes per emulated mknod, all included.

One supervised container (``default`` profile, ``lxc-notify enable``) makes N
emulated mknods of an allowed device (c 1:3) in a host tmpfs bound into it,
once with a relative path (cwd /bench, path ``rel-node``) and once with an
absolute one (``/bench/abs-node``), each with ``nodeprobe bench`` (which
unlinks after each success; the unlink is not trapped).  For each run,
``strace -c -f -p DAEMON_PID`` is attached to every thread of the daemon (and
follows threads it starts) and detached after, so every syscall of the
supervisor is counted: socket, ioctls, /proc reads, the mknod itself, locks.

strace's own attach and the daemon's idle work (timers, the udev monitor) are
measured in an idle window of the same procedure and about the same length,
with no mknod; "net" subtracts it, scaled to each run's length.  strace slows
the daemon a lot: this counts syscalls, it does not time anything.

Target: at most 22 syscalls per emulated relative-path mknod.

Run as root from the repository: ``.venv/bin/python bench/daemon_syscalls.py``
(``--calls N``, default 2,000).  Needs strace (``apt-get install -y strace``).
Not a test: it asserts nothing and prints tables.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# _common first: it puts the repository on sys.path for lxc_notify_plugin.
from _common import Daemon, build_nodeprobe, nodeprobe_bench, request_delta, shared_tmpfs

from lxc_notify_plugin.tools.sandbox import Sandbox

TARGET_RELATIVE = 22
DEVICE = (1, 3)  # /dev/null: allowed by the default profile, so emulated
TOP = 12


@dataclass
class Trace:
    """One strace -c window: the table as strace printed it, parsed, and how long."""

    table: str
    calls: dict[str, int]
    errors: dict[str, int]
    seconds: float

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def _tracers(pid: int) -> set[int]:
    """TracerPid of every thread of ``pid`` (0 for an untraced one)."""
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
                if line.startswith("TracerPid:"):
                    found.add(int(line.split()[1]))
    return found


def _parse_table(text: str) -> tuple[dict[str, int], dict[str, int]]:
    """strace -c's table: ``% time seconds usecs/call calls [errors] syscall`` rows."""
    calls: dict[str, int] = {}
    errors: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) not in (5, 6) or fields[-1] == "total" or not fields[3].isdigit():
            continue
        name = fields[-1]
        calls[name] = int(fields[3])
        if len(fields) == 6:
            errors[name] = int(fields[4])
    return calls, errors


def traced(pid: int, out: Path, work: Callable[[], None]) -> Trace:
    """Attach strace -c -f to every thread of ``pid``, run ``work``, detach."""
    strace = subprocess.Popen(["strace", "-c", "-f", "-S", "calls", "-o", str(out),
                               "-p", str(pid)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while _tracers(pid) != {strace.pid}:  # every thread attached, by this strace
            if strace.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("strace did not attach: "
                                   + (strace.stderr.read().decode() if strace.stderr else ""))
            time.sleep(0.01)
        start = time.monotonic()
        work()
        seconds = time.monotonic() - start
    finally:
        strace.send_signal(signal.SIGINT)  # detaches and writes the summary
        try:
            strace.wait(30)
        except subprocess.TimeoutExpired:
            strace.kill()
            strace.wait()
        if strace.stderr:
            strace.stderr.close()
    table = out.read_text()
    calls, errors = _parse_table(table)
    return Trace(table, calls, errors, seconds)


def _report(name: str, trace: Trace, idle: Trace, n: int) -> float:
    scale = trace.seconds / idle.seconds if idle.seconds else 0.0
    net_total = trace.total - idle.total * scale
    print(f"\n--- {name}: strace -c -f -p DAEMON, {n} emulated mknods, "
          f"{trace.seconds:.1f} s traced ---")
    print(trace.table.rstrip())
    print(f"\n{name}: {trace.total} syscalls / {n} = {trace.total / n:.1f} per mknod; "
          f"net of the idle window: {net_total / n:.1f} per mknod")
    print(f"{'syscall':24} {'calls':>8} {'errors':>7} {'per mknod':>10} {'net':>8}")
    for syscall, count in sorted(trace.calls.items(), key=lambda kv: -kv[1])[:TOP]:
        net = count - idle.calls.get(syscall, 0) * scale
        print(f"{syscall:24} {count:8} {trace.errors.get(syscall, 0):7} {count / n:10.2f} "
              f"{net / n:8.2f}")
    return net_total / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="emulated mknods per run")
    args = parser.parse_args()
    if shutil.which("strace") is None:
        print("strace is missing: apt-get install -y strace", file=sys.stderr)
        return 1

    n = args.calls
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lxc-notify-bench-")))
        probe = build_nodeprobe(tmp)
        _, bind_tmpfs = stack.enter_context(shared_tmpfs())
        daemon = stack.enter_context(Daemon(tmp))
        box = stack.enter_context(Sandbox(prefix="bench-sys"))  # destroyed before the daemon
        box.create(bind_tmpfs)
        box.install(probe, "/bin/nodeprobe")
        daemon.enable(box)
        box.start()

        runs = {
            "relative path (cwd /bench, rel-node)": ("rel-node", "/bench"),
            "absolute path (/bench/abs-node)": ("/bench/abs-node", None),
        }
        results: dict[str, dict[str, int]] = {}

        def run(name: str) -> Callable[[], None]:
            path, cwd = runs[name]
            return lambda: results.__setitem__(
                name, nodeprobe_bench(box, n, path, *DEVICE, cwd=cwd))

        for path, cwd in runs.values():  # warm-up, untraced: caches, lazy imports
            nodeprobe_bench(box, 200, path, *DEVICE, cwd=cwd)
        before = daemon.requests(box)
        traces = {name: traced(daemon.pid, tmp / f"strace-{i}", run(name))
                  for i, name in enumerate(runs)}
        after = daemon.requests(box)  # asked after strace detached: not counted
        idle_seconds = sum(t.seconds for t in traces.values()) / len(traces)
        idle = traced(daemon.pid, tmp / "strace-idle", lambda: time.sleep(idle_seconds))

    print(f"\ndaemon syscalls per emulated mknod c 1:3 (tmpfs bound at /bench), N = {n}")
    print(f"--- idle window, no mknod: {idle.total} syscalls in {idle.seconds:.1f} s ---")
    print(idle.table.rstrip() if idle.total else "(none)")
    net = {name: _report(name, trace, idle, n) for name, trace in traces.items()}
    for name, values in results.items():
        print(f"{name}: nodeprobe says calls {values['calls']} ok {values['ok']}")
    print(f"requests the daemon counted over both traced runs ({2 * n} mknods): "
          f"{request_delta(before, after)}")
    relative = net[next(iter(runs))]
    failed = {name: n - values["ok"] for name, values in results.items() if values["ok"] != n}
    if failed:
        verdict = ("not judged: not every mknod was emulated ("
                   + ", ".join(f"{k}: {v} failed" for k, v in failed.items())
                   + "), so these are not the counts of emulated mknods")
    else:
        # strace's attach and detach add a few calls per run, not per mknod.
        verdict = "met" if round(relative, 1) <= TARGET_RELATIVE else "not met"
    print(f"\ntarget: at most {TARGET_RELATIVE} syscalls per emulated relative-path mknod: "
          f"{relative:.1f} net ({verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
