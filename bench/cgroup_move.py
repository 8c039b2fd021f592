"""What an actor's move out of a caller's cgroup and back costs, per call.

An actor leaves, before it answers, every cgroup of the caller's that does not
hold the container's init (caller/actor.py: its owner may remove it as soon as
the caller exits), and joins it again for the next call: one write of its pid
to a ``cgroup.procs`` each way per hierarchy, through fds kept open as the
actor keeps them.  Measured here, alternated in rounds in the same run:

* ``stay``: the write that puts this process where it already is (the baseline:
  the syscall and the kernel's lookups, no migration);
* ``v2 out and back``: the move through a child cgroup of ours in cgroup v2
  alone, as on a host with only the unified hierarchy (Debian 12, 13);
* ``every hierarchy``: the same through every hierarchy this host mounts (on a
  hybrid host, each v1 controller's as well).

Run as root from the repository: ``.venv/bin/python bench/cgroup_move.py``.
Makes a cgroup ``lxc-notify-bench-PID`` beside this process's own in each
hierarchy and removes them.  Not a test: it asserts nothing and prints a table.
"""

from __future__ import annotations

import argparse
import os
import statistics

from _common import timed_us  # first: it puts the repository on sys.path

from lxc_notify_plugin.host.cgroups import procs_files_by_hierarchy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with open("/proc/self/cgroup", "rb") as cgroup:
        ours = cgroup.read()
    with open("/proc/self/mountinfo") as mounts:
        homes = procs_files_by_hierarchy(ours, mounts.read())
    pid = str(os.getpid()).encode()
    made: list[str] = []
    fds: list[int] = []
    try:
        home_fds: list[int] = []
        away_fds: list[int] = []
        v2 = -1
        for hierarchy, home in homes:
            away = os.path.join(os.path.dirname(home), f"lxc-notify-bench-{os.getpid()}")
            os.mkdir(away)
            made.append(away)
            for name in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset child starts empty
                if os.path.exists(os.path.join(away, name)):
                    with open(os.path.join(os.path.dirname(home), name)) as parent, \
                            open(os.path.join(away, name), "w") as child:
                        child.write(parent.read())
            for path, into in ((home, home_fds), (os.path.join(away, "cgroup.procs"), away_fds)):
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                fds.append(fd)
                into.append(fd)
            if hierarchy.startswith("0:"):
                v2 = len(home_fds) - 1

        def stay() -> None:
            os.write(home_fds[v2], pid)

        def v2_out_and_back() -> None:
            os.write(away_fds[v2], pid)
            os.write(home_fds[v2], pid)

        def everywhere() -> None:
            for fd in away_fds:
                os.write(fd, pid)
            for fd in home_fds:
                os.write(fd, pid)

        cases = {"stay": stay, "v2 out and back": v2_out_and_back,
                 f"every hierarchy ({len(homes)})": everywhere}
        results: dict[str, list[float]] = {name: [] for name in cases}
        for step in cases.values():
            timed_us(step, 20)  # warm up
        for _ in range(args.rounds):
            for name, step in cases.items():
                results[name].extend(timed_us(step, args.calls))
    finally:
        for fd in fds:
            os.close(fd)
        for _, home in homes:  # home again in each, then the bench's cgroups can go
            with open(home, "wb") as procs:
                procs.write(pid)
        for away in made:
            os.rmdir(away)
    base = statistics.median(results["stay"])
    print(f"{'case':<26}{'p50 us':>10}{'p99 us':>10}{'x stay':>10}")
    for name, samples in results.items():
        samples.sort()
        p50 = statistics.median(samples)
        print(f"{name:<26}{p50:>10.1f}{samples[int(len(samples) * 0.99)]:>10.1f}"
              f"{p50 / base:>10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
