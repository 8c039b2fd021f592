"""Per-call mknod latency inside real unprivileged containers, as ratios.

Three containers run side by side, and the runs are interleaved in rounds so
machine noise hits every configuration alike:

* ``kernel``: no interception; the kernel refuses mknod (EPERM).  The floor.
* ``responder``: the same seccomp policy, LXC's proxy hop to
  bench/minimal_responder.py, which answers EPERM without looking.  The
  least any supervisor behind LXC can cost.
* ``lxc-notify``: our daemon as a service runs it (audit log on); a denied
  device (handed back to the kernel), also through a second daemon with the
  audit log off (its own container), so the audit line's price is a row
  and an allowed one (emulated: the node is really made, and unlinked by the
  caller between calls), once in a host tmpfs bound into the container (the
  filesystem's own cost is ~3 us, so the row measures the supervisor) and
  once in the container's ext4 rootfs ``/tmp``, whose mknod costs vary a lot
  on this VM; the host's own mknod in that same directory is shown beside it.
  ``ok`` counts the calls that made their node (0 for refusals).

Run as root from the repository: ``.venv/bin/python bench/mknod_latency.py``.
Not a test: it asserts nothing and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# _common first: it puts the repository on sys.path for lxc_notify_plugin.
from _common import (
    REPO,
    Daemon,
    build_nodeprobe,
    host_mknod_us,
    nodeprobe_bench,
    shared_tmpfs,
    wait_for,
)

from lxc_notify_plugin.policy.effective import ContainerPolicy
from lxc_notify_plugin.policy.lxc_policy import compile_policy
from lxc_notify_plugin.policy.profile import load_profile
from lxc_notify_plugin.tools.sandbox import Sandbox

LXD_REFERENCE_US = {"emulated": 8800, "denied": 2500}  # LXD 5.0.2 here, from the issue


def _bench(box: Sandbox, calls: int, path: str, major: int, minor: int
           ) -> tuple[float, float, int]:
    """p50 and p99 in us, and how many calls succeeded (made the node)."""
    values = nodeprobe_bench(box, calls, path, major, minor)
    return values["median_ns"] / 1000, values["p99_ns"] / 1000, values["ok"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--baseline-repo", type=Path, default=None,
                        help="another checkout (e.g. a git worktree of main): its daemon, "
                             "audit log on and off, adds denied rows and (audit on) an "
                             "emulated row to the same run")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lxc-notify-bench-")))
        probe = build_nodeprobe(tmp)
        daemon = Daemon(tmp)
        quiet = Daemon(tmp / "quiet", audit=False)
        policy = tmp / "policy"
        policy.write_text(compile_policy(ContainerPolicy.from_profile(
            load_profile("default", daemon.paths.profile_search_path))))
        responder_socket = tmp / "responder.sock"
        _, bind_tmpfs = stack.enter_context(shared_tmpfs())

        responder_process = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "minimal_responder.py"),
             str(responder_socket)], stdout=subprocess.DEVNULL)
        stack.callback(responder_process.wait, 20)
        stack.callback(responder_process.terminate)
        stack.enter_context(daemon)
        stack.enter_context(quiet)
        others = {}
        if args.baseline_repo is not None:
            others = {f"baseline-{n}": Daemon(tmp / f"baseline-{n}", audit=n == "on",
                                               repo=args.baseline_repo.resolve())
                      for n in ("on", "off")}
            for other in others.values():
                stack.enter_context(other)
        wait_for(responder_socket.exists, "the minimal responder")
        # Entered last, so destroyed first: containers go before their supervisors.
        boxes = {name: stack.enter_context(Sandbox(prefix=f"bench-{name}"))
                 for name in ("kernel", "resp", "ours", "quiet", *others)}
        for box in boxes.values():
            box.create(bind_tmpfs)
            box.install(probe, "/bin/nodeprobe")
        boxes["kernel"].start()
        boxes["resp"].start({"lxc.seccomp.profile": str(policy),
                             "lxc.seccomp.notify.proxy": f"unix:{responder_socket}",
                             "lxc.seccomp.notify.cookie": "bench"})
        daemon.enable(boxes["ours"])
        boxes["ours"].start()
        quiet.enable(boxes["quiet"])
        boxes["quiet"].start()
        for name, other in others.items():
            other.enable(boxes[name])
            boxes[name].start()

        runs = {
            "kernel EPERM, no interception": (boxes["kernel"], "/bench/k", 1, 3),
            "minimal responder, EPERM via LXC": (boxes["resp"], "/bench/r", 1, 3),
            "lxc-notify, denied (c 4:1)": (boxes["ours"], "/bench/d", 4, 1),
            "lxc-notify, denied, audit off": (boxes["quiet"], "/bench/q", 4, 1),
            **{f"{name}, denied, audit {name[9:]}": (boxes[name], f"/bench/{name}", 4, 1)
               for name in others},
            "lxc-notify, emulated, tmpfs": (boxes["ours"], "/bench/e", 1, 3),
            "lxc-notify, emulated, ext4 /tmp": (boxes["ours"], "/tmp/e", 1, 3),
            # The other checkout's emulation too (audit on, as a service runs it).
            **({"baseline-on, emulated, tmpfs": (boxes["baseline-on"], "/bench/be", 1, 3)}
               if others else {}),
        }
        samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in runs}
        ext4_host: list[float] = []
        ext4_dir = boxes["ours"].rootfs / "tmp"
        for box, path, major, minor in runs.values():  # warm-up
            _bench(box, 200, path, major, minor)
        for _ in range(args.rounds):
            for name, (box, path, major, minor) in runs.items():
                samples[name].append(_bench(box, args.calls, path, major, minor))
            ext4_host.append(host_mknod_us(ext4_dir, args.calls))

    medians = {n: statistics.median(m for m, _, _ in s) for n, s in samples.items()}
    p99s = {n: statistics.median(p for _, p, _ in s) for n, s in samples.items()}
    made = {n: sum(ok for _, _, ok in s) for n, s in samples.items()}
    kernel = medians["kernel EPERM, no interception"]
    responder = medians["minimal responder, EPERM via LXC"]
    print(f"\nmknod latency, {args.rounds} interleaved rounds x {args.calls} calls "
          f"(median of per-round p50/p99), {os.cpu_count()} CPUs")
    print(f"{'configuration':36} {'p50 us':>8} {'p99 us':>8} {'/kernel':>8} {'/responder':>10} "
          f"{'ok':>7}")
    for name in runs:
        print(f"{name:36} {medians[name]:8.1f} {p99s[name]:8.1f} {medians[name] / kernel:8.1f} "
              f"{medians[name] / responder:10.2f} {made[name]:7}")
    print(f"{'(host root, mknod in that ext4 /tmp)':36} {statistics.median(ext4_host):8.1f}")
    denied = medians["lxc-notify, denied (c 4:1)"]
    quiet_denied = medians["lxc-notify, denied, audit off"]
    emulated = medians["lxc-notify, emulated, tmpfs"]
    print(f"\ntargets: denied <= 1.2x responder ({denied / responder:.2f}x with the audit log, "
          f"{quiet_denied / responder:.2f}x without), "
          f"emulated <= 2x responder ({emulated / responder:.2f}x)")
    # The same ratio per round (each round's rows run back to back), to show the spread.
    per_round = sorted(d[0] / r[0] for d, r in zip(samples["lxc-notify, denied (c 4:1)"],
                       samples["minimal responder, EPERM via LXC"], strict=True))
    print("denied/responder per round: " + " ".join(f"{x:.2f}" for x in per_round))
    for name in others:
        row = f"{name}, denied, audit {name[9:]}"
        print(f"{args.baseline_repo} (audit {name[9:]}): denied {medians[row] / responder:.2f}x "
              "responder")
    if others:
        before = medians["baseline-on, emulated, tmpfs"]
        print(f"{args.baseline_repo}: emulated {before / responder:.2f}x responder; this tree "
              f"{emulated - before:+.1f} us p50 against it")
        # Paired: each round's two emulated rows ran back to back, so machine noise
        # that moves a whole round (this VM's neighbours) cancels out of the difference.
        paired = sorted(ours[0] - theirs[0] for ours, theirs in zip(
            samples["lxc-notify, emulated, tmpfs"], samples["baseline-on, emulated, tmpfs"],
            strict=True))
        print(f"this tree - {args.baseline_repo}, emulated p50 per round: median "
              f"{statistics.median(paired):+.1f} us (" + " ".join(f"{x:+.0f}" for x in paired)
              + ")")
    unmade = [n for n in runs if "emulated" in n and made[n] != args.rounds * args.calls]
    if unmade:
        print(f"warning: {'; '.join(unmade)}: not every call made its node, so the daemon "
              "did not emulate them all and those rows do not time emulation")
    print(f"vs LXD 5.0.2 measured here earlier: emulated {LXD_REFERENCE_US['emulated']} us "
          f"({LXD_REFERENCE_US['emulated'] / emulated:.0f}x slower), denied "
          f"{LXD_REFERENCE_US['denied']} us ({LXD_REFERENCE_US['denied'] / denied:.0f}x slower)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
