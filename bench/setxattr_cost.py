"""What an untouched ``user.*`` setxattr costs when setxattr is trapped, as ratios.

A seccomp filter cannot compare strings, so with setxattr intercepted (the
``docker`` profile) every setxattr of the container reaches the supervisor,
which hands the names it does not emulate back to the kernel (CONTINUE).
Two containers run side by side, in interleaved rounds so machine noise hits
both alike:

* ``untrapped``: the ``default`` profile (setxattr not intercepted): the
  kernel sets ``user.bench`` itself.  The floor.
* ``trapped``: the ``docker`` profile: the same call makes the round trip
  through LXC's proxy to lxc-notify and back, then the kernel sets it.
  Beside it, an emulated ``trusted.overlay.opaque`` in the same container.

Run as root from the repository: ``.venv/bin/python bench/setxattr_cost.py``.
Not a test: it asserts nothing and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

# _common first: it puts the repository on sys.path for lxc_notify_plugin.
from _common import Daemon, build_nodeprobe, request_delta

from lxc_notify_plugin.tools.sandbox import Sandbox


def _bench(box: Sandbox, calls: int, path: str, name: str) -> tuple[float, float, int]:
    """p50 and p99 in us, and how many calls succeeded."""
    out = box.attach("/bin/nodeprobe", "xattrbench", str(calls), path, name)
    words = out.split()
    values = {key: int(value) for key, value in zip(words[::2], words[1::2], strict=False)}
    return values["median_ns"] / 1000, values["p99_ns"] / 1000, values["ok"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lxc-notify-bench-")))
        probe = build_nodeprobe(tmp)
        daemon = stack.enter_context(Daemon(tmp))
        # Entered last, so destroyed first: containers go before their supervisor.
        boxes = {name: stack.enter_context(Sandbox(prefix=f"bench-{name}"))
                 for name in ("plain", "trapped")}
        for name, box in boxes.items():
            box.create()
            box.install(probe, "/bin/nodeprobe")
            daemon.enable(box, "default" if name == "plain" else "docker")
            box.start()
            box.attach("/bin/sh", "-c", "touch /tmp/f && mkdir /tmp/d")

        runs = {
            "untrapped user.* (kernel only)": (boxes["plain"], "/tmp/f", "user.bench"),
            "trapped user.* (handed back)": (boxes["trapped"], "/tmp/f", "user.bench"),
            "trapped trusted.overlay.opaque (emulated)": (boxes["trapped"], "/tmp/d",
                                                          "trusted.overlay.opaque"),
        }
        before = daemon.requests(boxes["trapped"])
        for box, path, name in runs.values():  # warm-up
            _bench(box, 200, path, name)
        samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for label, (box, path, name) in runs.items():
                samples[label].append(_bench(box, args.calls, path, name))
        after = daemon.requests(boxes["trapped"])

    medians = {n: statistics.median(m for m, _, _ in s) for n, s in samples.items()}
    p99s = {n: statistics.median(p for _, p, _ in s) for n, s in samples.items()}
    made = {n: sum(ok for _, _, ok in s) for n, s in samples.items()}
    floor = medians["untrapped user.* (kernel only)"]
    print(f"\nsetxattr latency, {args.rounds} interleaved rounds x {args.calls} calls "
          f"(median of per-round p50/p99), {os.cpu_count()} CPUs")
    print(f"{'configuration':44} {'p50 us':>8} {'p99 us':>8} {'/untrapped':>10} {'ok':>7}")
    for name in runs:
        print(f"{name:44} {medians[name]:8.1f} {p99s[name]:8.1f} {medians[name] / floor:10.1f} "
              f"{made[name]:7}")
    print(f"\nan untouched user.* setxattr costs "
          f"{medians['trapped user.* (handed back)'] / floor:.1f}x when setxattr is trapped")
    print(f"daemon requests of the trapped container meanwhile: {request_delta(before, after)}")
    failed = [n for n in runs if made[n] != args.rounds * args.calls]
    if failed:
        print(f"warning: {'; '.join(failed)}: not every call succeeded, so those rows do not "
              "time what they say")
    return 0


if __name__ == "__main__":
    sys.exit(main())
