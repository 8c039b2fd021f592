"""What acting through the actor costs per privileged step, against doing it in-thread.

The actor (lxc_notify_plugin/caller/actor.py) is a process in the caller's
cgroups that performs the one privileged step of a request (the mknodat of a
node; the superblock of a mount) so that the kernel checks the caller's
device cgroup.  Its price is one socket round trip with an fd passed and a
JSON message each way.  Measured here, alternated in rounds in the same run:

* ``in-thread``: ``mknodat`` by the benchmark's own thread, as the daemon
  did before the actor (the baseline);
* ``actor``: the same ``mknodat`` through an actor placed in this process's
  own cgroups;
each twice: on an existing name (EEXIST: the kernel's work is a lookup, so
the row is the mechanism) and made then unlinked (the real work).

Run as root from the repository: ``.venv/bin/python bench/actor_cost.py``.
Not a test: it asserts nothing and prints a table.
"""

from __future__ import annotations

import argparse
import os
import stat
import statistics
import tempfile
from collections.abc import Callable

from _common import timed_us  # first: it puts the repository on sys.path

from lxc_notify_plugin import kernel
from lxc_notify_plugin.caller.actor import Actor, Identity
from lxc_notify_plugin.host.cgroups import procs_files_by_hierarchy

NODE = stat.S_IFCHR | 0o600
DEV = os.makedev(1, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-follow", action="store_true",
                        help="leave the actor's CPU to the scheduler")
    args = parser.parse_args()
    with open("/proc/self/cgroup", "rb") as f:
        ours = f.read()
    with open("/proc/self/mountinfo") as text:
        files = procs_files_by_hierarchy(ours, text.read())
    actor = Actor(files, os.getpid())
    actor.follow_cpu = not args.no_follow
    who = Identity(0, 0, (), 0o022, 1 << kernel.CAP_MKNOD)
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(dir="/dev/shm") as work:
        dir_fd = os.open(work, os.O_PATH | os.O_DIRECTORY)
        os.mknod("exists", NODE, DEV, dir_fd=dir_fd)

        def eexist(via_actor: bool) -> Callable[[], None]:
            def step() -> None:
                try:
                    if via_actor:
                        actor.mknodat(dir_fd, b"exists", NODE, DEV, who)
                    else:
                        os.mknod("exists", NODE, DEV, dir_fd=dir_fd)
                except FileExistsError:
                    return
                raise AssertionError("made a node over an existing name")
            return step

        def make(via_actor: bool) -> Callable[[], None]:
            def step() -> None:
                if via_actor:
                    actor.mknodat(dir_fd, b"new", NODE, DEV, who)
                else:
                    os.mknod("new", NODE, DEV, dir_fd=dir_fd)
                os.unlink("new", dir_fd=dir_fd)
            return step

        cases = {"in-thread EEXIST": eexist(False), "actor EEXIST": eexist(True),
                 "in-thread make+unlink": make(False), "actor make+unlink": make(True)}
        for step in cases.values():
            timed_us(step, 200)  # warm up
        for _ in range(args.rounds):
            for name, step in cases.items():
                results.setdefault(name, []).extend(timed_us(step, args.calls))
        os.close(dir_fd)
    actor.close()
    base = {"EEXIST": statistics.median(results["in-thread EEXIST"]),
            "make+unlink": statistics.median(results["in-thread make+unlink"])}
    print(f"{'case':<24}{'p50 us':>10}{'p99 us':>10}{'x in-thread':>13}{'+us p50':>10}")
    for name, samples in results.items():
        samples.sort()
        p50 = statistics.median(samples)
        p99 = samples[int(len(samples) * 0.99)]
        kind = name.split(" ", 1)[1]
        print(f"{name:<24}{p50:>10.1f}{p99:>10.1f}{p50 / base[kind]:>13.2f}"
              f"{p50 - base[kind]:>10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
