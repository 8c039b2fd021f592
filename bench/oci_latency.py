"""Per-call mknod latency inside real runc containers, through the OCI agent, as ratios.

Three runc containers (user namespace, busybox, rootfs in a tmpfs so the
filesystem's own cost stays small) run side by side, and the runs are
interleaved in rounds so machine noise hits every configuration alike:

* ``kernel``: no seccomp filter; the kernel refuses mknod (EPERM).  The floor.
* ``agent``: the generated profile, its listener handed to
  bench/minimal_agent.c, which answers EPERM without looking.  The kernel's
  round trip: the least any OCI agent can cost.
* ``lxc-notify``: the same profile, handed to our daemon: a denied device
  (c 1:1, handed back to the kernel) and an allowed one (c 1:3, emulated:
  the node is really made, and unlinked between calls).

``nodeprobe bench`` runs through ``runc exec``, so each run is also an exec
whose listener the agent serves and releases.  For the same calls through
LXC's hop, run bench/mknod_latency.py.

Run as root from the repository: ``.venv/bin/python bench/oci_latency.py``.
Not a test: it asserts nothing and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# _common first: it puts the repository on sys.path for lxc_notify_plugin.
from _common import REPO, Daemon, build_nodeprobe, wait_for

from tests.oci.bundle import CONTAINER_ROOT, Bundle


def _bench(bundle: Bundle, calls: int, path: str, major: int, minor: int
           ) -> tuple[float, float, int]:
    """p50 and p99 in us, and how many calls made their node."""
    result = bundle.exec("/bin/nodeprobe", "bench", str(calls), path, "c", str(major),
                         str(minor), timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"nodeprobe in {bundle.id} exited {result.returncode}: "
                           f"{result.stderr.strip()}")
    fields = result.stdout.split()
    values = {k: int(v) for k, v in zip(fields[::2], fields[1::2], strict=False)}
    return values["median_ns"] / 1000, values["p99_ns"] / 1000, values["ok"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lxcn-oci-bench-")))
        probe = build_nodeprobe(tmp)
        agent_binary = tmp / "minimal_agent"
        subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(agent_binary),
                        str(REPO / "bench" / "minimal_agent.c")], check=True)
        # Bundles in a tmpfs: mknod's own cost there is a few us.
        shm = Path(tempfile.mkdtemp(prefix="lxcn-oci-bench-", dir="/dev/shm"))
        stack.callback(shutil.rmtree, shm, True)
        shm.chmod(0o711)
        daemon = Daemon(tmp)
        stack.enter_context(daemon)
        agent_socket = tmp / "minimal-agent.sock"
        agent = subprocess.Popen([str(agent_binary), str(agent_socket)],
                                 stdout=subprocess.DEVNULL)
        stack.callback(agent.wait, 20)
        stack.callback(agent.terminate)
        wait_for(agent_socket.exists, "the minimal agent")

        ours = json.loads(daemon.cli("oci", "seccomp", "--base", "minimal"))
        theirs = {**ours, "listenerPath": str(agent_socket)}
        bundles: dict[str, Bundle] = {}
        for name, seccomp in (("kernel", None), ("agent", theirs), ("ours", ours)):
            bundle = Bundle(shm, prefix=f"bench-{name}")
            stack.callback(bundle.remove)  # removed before the supervisors stop
            bundle.create(["sleep", "100000"], seccomp)
            shutil.copy2(probe, bundle.rootfs / "bin" / "nodeprobe")
            os.chown(bundle.rootfs / "bin" / "nodeprobe", CONTAINER_ROOT, CONTAINER_ROOT)
            bundle.start()
            bundles[name] = bundle

        runs = {
            "kernel EPERM, no filter": (bundles["kernel"], "/tmp/k", 1, 3),
            "minimal C agent, EPERM": (bundles["agent"], "/tmp/a", 1, 3),
            "lxc-notify, denied (c 1:1)": (bundles["ours"], "/tmp/d", 1, 1),
            "lxc-notify, emulated (c 1:3)": (bundles["ours"], "/tmp/e", 1, 3),
        }
        samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in runs}
        for bundle, path, major, minor in runs.values():  # warm-up
            _bench(bundle, 200, path, major, minor)
        for _ in range(args.rounds):
            for name, (bundle, path, major, minor) in runs.items():
                samples[name].append(_bench(bundle, args.calls, path, major, minor))

    medians = {n: statistics.median(m for m, _, _ in s) for n, s in samples.items()}
    p99s = {n: statistics.median(p for _, p, _ in s) for n, s in samples.items()}
    made = {n: sum(ok for _, _, ok in s) for n, s in samples.items()}
    baseline = medians["minimal C agent, EPERM"]
    print(f"\nmknod latency in runc containers, {args.rounds} interleaved rounds x "
          f"{args.calls} calls (median of per-round p50/p99), {os.cpu_count()} CPUs")
    print(f"{'configuration':32} {'p50 us':>8} {'p99 us':>8} {'/C agent':>9} {'ok':>7}")
    for name in runs:
        print(f"{name:32} {medians[name]:8.1f} {p99s[name]:8.1f} "
              f"{medians[name] / baseline:9.2f} {made[name]:7}")
    denied = medians["lxc-notify, denied (c 1:1)"]
    emulated = medians["lxc-notify, emulated (c 1:3)"]
    print(f"\ntargets: denied <= 1.5x the C agent ({denied / baseline:.2f}x), "
          f"emulated <= 3x ({emulated / baseline:.2f}x)")
    if made["lxc-notify, emulated (c 1:3)"] != args.rounds * args.calls:
        print("warning: not every emulated call made its node: that row does not time "
              "emulation alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
