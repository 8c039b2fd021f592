"""Overlay whiteouts (mknod c 0:0) in a supervised container, as a ratio to none.

Since Linux 5.8 the kernel lets an unprivileged caller make a whiteout itself,
so a supervised container should pay (nearly) nothing for them: overlayfs
and tools that unpack image layers make many.  Two containers run side by
side, interleaved in rounds so machine noise hits both alike:

* ``plain``: no seccomp interception at all; the kernel makes the whiteout.
* ``lxc-notify``: enabled with ``lxc-notify enable`` (``default`` profile)
  against a private daemon.

Each run is ``nodeprobe bench``: every mknod timed alone, the whiteout unlinked
after each success.  Nodes go to a host tmpfs bound into both containers (the
filesystem's own cost is small and the same for both), and, as a second pair,
to each container's ext4 rootfs ``/tmp``.  The daemon's request counts for the
supervised container show whether whiteouts reached the supervisor at all.

Target: lxc-notify within 1.5x of plain (p50 per whiteout, tmpfs).

Run as root from the repository: ``.venv/bin/python bench/whiteouts.py``
(defaults: 5 rounds x 2,000 = 10,000 whiteouts per configuration).
Not a test: it asserts nothing and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
from pathlib import Path

# _common first: it puts the repository on sys.path for lxc_notify_plugin.
from _common import Daemon, build_nodeprobe, nodeprobe_bench, request_delta, shared_tmpfs

from lxc_notify_plugin.tools.sandbox import Sandbox

TARGET_RATIO = 1.5
WHITEOUT = (0, 0)
CONTROL_DEVICE = (1, 3)  # allowed by the default profile: always emulated
CONTROL_CALLS = 200
PLAIN_TMPFS = "plain, no interception, tmpfs"
OURS_TMPFS = "lxc-notify (default), tmpfs"
PLAIN_EXT4 = "plain, no interception, ext4 /tmp"
OURS_EXT4 = "lxc-notify (default), ext4 /tmp"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="whiteouts per run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lxc-notify-bench-")))
        probe = build_nodeprobe(tmp)
        _, bind_tmpfs = stack.enter_context(shared_tmpfs())
        daemon = stack.enter_context(Daemon(tmp))
        # Entered after the daemon, so destroyed before it.
        plain = stack.enter_context(Sandbox(prefix="bench-plain"))
        ours = stack.enter_context(Sandbox(prefix="bench-ours"))
        for box in (plain, ours):
            box.create(bind_tmpfs)
            box.install(probe, "/bin/nodeprobe")
        plain.start()
        daemon.enable(ours)
        ours.start()

        # name: (container, path, the row it is compared with)
        runs = {
            PLAIN_TMPFS: (plain, "/bench/w-plain", PLAIN_TMPFS),
            OURS_TMPFS: (ours, "/bench/w-ours", PLAIN_TMPFS),
            PLAIN_EXT4: (plain, "/tmp/w", PLAIN_EXT4),
            OURS_EXT4: (ours, "/tmp/w", PLAIN_EXT4),
        }
        for box, path, _ in runs.values():  # warm-up
            nodeprobe_bench(box, 200, path, *WHITEOUT)
        # Proof that the container is supervised: allowed devices reach the daemon.
        control_before = daemon.requests(ours)
        control = nodeprobe_bench(ours, CONTROL_CALLS, "/bench/control", *CONTROL_DEVICE)
        before = daemon.requests(ours)
        samples: dict[str, list[dict[str, int]]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, (box, path, _) in runs.items():
                samples[name].append(nodeprobe_bench(box, args.calls, path, *WHITEOUT))
        after = daemon.requests(ours)

    per_config = args.rounds * args.calls
    print(f"\nwhiteouts (mknod c 0:0), {args.rounds} interleaved rounds x {args.calls} calls "
          f"= {per_config} per configuration (median of per-round p50/p99), "
          f"{os.cpu_count()} CPUs")
    print(f"{'configuration':36} {'p50 us':>8} {'p99 us':>8} {'ok':>8} {'/plain':>8}")
    p50 = {n: statistics.median(s["median_ns"] for s in r) / 1000 for n, r in samples.items()}
    p99 = {n: statistics.median(s["p99_ns"] for s in r) / 1000 for n, r in samples.items()}
    for name, rows in samples.items():
        baseline = runs[name][2]
        ok = sum(s["ok"] for s in rows)
        print(f"{name:36} {p50[name]:8.1f} {p99[name]:8.1f} {ok:8} "
              f"{p50[name] / p50[baseline]:8.2f}")
    print(f"\nrequests the daemon counted for {ours.name} during the rounds "
          f"({2 * per_config} whiteouts made there): {request_delta(before, after)}")
    print(f"control, {CONTROL_CALLS} mknod c 1:3 in the same container just before "
          f"({control['ok']} ok, p50 {control['median_ns'] / 1000:.1f} us): "
          f"{request_delta(control_before, before)}")
    ratio = p50[OURS_TMPFS] / p50[PLAIN_TMPFS]
    print(f"target: lxc-notify within {TARGET_RATIO}x of plain (tmpfs, p50): {ratio:.2f}x "
          f"({'met' if ratio <= TARGET_RATIO else 'not met'})")
    if control["ok"] != CONTROL_CALLS:
        print(f"warning: only {control['ok']} of the {CONTROL_CALLS} control mknods were made: "
              "the daemon is not emulating what the profile allows, so this run shows "
              "what the filter traps, not a working supervisor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
