"""Per-call mount(2) latency inside real unprivileged containers, as ratios.

Interleaved in rounds, like bench/mknod_latency.py:

* ``kernel``: no interception; the kernel refuses the mount (EPERM).  The floor.
* ``responder``: the same seccomp policy, LXC's proxy hop to
  bench/minimal_responder.py, which answers EPERM without looking.  The
  least any supervisor behind LXC can cost.
* ``lxc-notify``: our daemon mounts the ext4 image for real (idmapped into
  the container, flags locked); the caller unmounts it between calls (not
  timed).  Each call makes a new superblock: the kernel's own work (reading
  the image's superblock, the journal) is in the row.
* ``host``: host root mounting and unmounting the same image in a private
  mount namespace: the kernel's own cost of that work, for comparison.

Run as root from the repository: ``.venv/bin/python bench/mount_latency.py``.
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
import time
from pathlib import Path

# _common first: it puts the repository on sys.path for lxc_notify_plugin.
from _common import REPO, Daemon, wait_for

from lxc_notify_plugin.policy.effective import ContainerPolicy
from lxc_notify_plugin.policy.lxc_policy import compile_policy
from lxc_notify_plugin.policy.profile import parse_profile
from lxc_notify_plugin.tools.sandbox import Sandbox

MOUNTPROBE_SOURCE = REPO / "tests" / "helpers" / "mountprobe.c"
CONTAINER_ROOT = 100000
KEY = "security.syscalls.intercept."


def _bench(box: Sandbox, calls: int, target: str) -> tuple[float, float, int]:
    out = box.attach("/bin/mountprobe", "bench", str(calls), "/blk/disk", target, "ext4", "0")
    fields = out.split()
    values = {k: int(v) for k, v in zip(fields[::2], fields[1::2], strict=False)}
    return values["median_ns"] / 1000, values["p99_ns"] / 1000, values["ok"]


def _host_us(loop: str, calls: int, work: Path) -> float:
    """Host root's own mount + timing of the mount alone, in a private namespace."""
    script = (
        "import os, time, statistics, ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.unshare(0x20000) == 0  # CLONE_NEWNS\n"
        "libc.mount(None, b'/', None, (1 << 14) | (1 << 18), None)\n"
        f"t = []\n"
        f"for _ in range({calls}):\n"
        "    a = time.perf_counter_ns()\n"
        f"    rc = libc.mount({loop.encode()!r}, {str(work).encode()!r}, b'ext4', 0, None)\n"
        "    t.append(time.perf_counter_ns() - a)\n"
        "    assert rc == 0, ctypes.get_errno()\n"
        f"    libc.umount2({str(work).encode()!r}, 0)\n"
        "print(statistics.median(t) / 1000)\n")
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                         text=True).stdout
    return float(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lxc-notify-bench-")))
        probe = tmp / "mountprobe"
        subprocess.run(["gcc", "-O2", "-static", "-o", str(probe), str(MOUNTPROBE_SOURCE)],
                       check=True)
        image = tmp / "ext4.img"
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image), "16M"], check=True)
        loop = subprocess.run(["losetup", "-f", "--show", str(image)], check=True,
                              capture_output=True, text=True).stdout.strip()
        stack.callback(subprocess.run, ["losetup", "-d", loop], check=False)
        rdev = os.stat(loop).st_rdev
        daemon = Daemon(tmp)
        policy = tmp / "policy"
        profile = parse_profile('[intercept]\nmount = true\n[mount]\nallowed = ["ext4"]\n',
                                "bench.toml")
        policy.write_text(compile_policy(ContainerPolicy.from_profile(profile)))
        responder_socket = tmp / "responder.sock"
        responder_process = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "minimal_responder.py"),
             str(responder_socket)], stdout=subprocess.DEVNULL)
        stack.callback(responder_process.wait, 20)
        stack.callback(responder_process.terminate)
        stack.enter_context(daemon)
        wait_for(responder_socket.exists, "the minimal responder")
        boxes = {name: stack.enter_context(Sandbox(prefix=f"mbench-{name}"))
                 for name in ("kernel", "resp", "ours")}
        for box in boxes.values():
            box.create()
            box.install(probe, "/bin/mountprobe")
            node = box.rootfs / "blk" / "disk"
            node.parent.mkdir(exist_ok=True)
            os.mknod(node, 0o660 | 0o060000, rdev)
            os.chown(node, CONTAINER_ROOT, CONTAINER_ROOT)
            (box.rootfs / "mnt" / "b").mkdir(parents=True, exist_ok=True)
        boxes["kernel"].start()
        boxes["resp"].start({"lxc.seccomp.profile": str(policy),
                             "lxc.seccomp.notify.proxy": f"unix:{responder_socket}",
                             "lxc.seccomp.notify.cookie": "bench"})
        daemon.enable(boxes["ours"])
        for key, value in (("mount", "true"), ("mount.allowed", "ext4"),
                           ("mount.shift", "true")):
            daemon.cli("config", "set", boxes["ours"].name, KEY + key, value)
        boxes["ours"].start()
        host_dir = tmp / "host-target"
        host_dir.mkdir()

        runs = {
            "kernel EPERM, no interception": boxes["kernel"],
            "minimal responder, EPERM via LXC": boxes["resp"],
            "lxc-notify, emulated ext4 mount": boxes["ours"],
        }
        samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in runs}
        host: list[float] = []
        for box in runs.values():  # warm-up
            _bench(box, 20, "/mnt/b")
        started = time.monotonic()
        for _ in range(args.rounds):
            for name, box in runs.items():
                samples[name].append(_bench(box, args.calls, "/mnt/b"))
            host.append(_host_us(loop, args.calls, host_dir))

    medians = {n: statistics.median(m for m, _, _ in s) for n, s in samples.items()}
    p99s = {n: statistics.median(p for _, p, _ in s) for n, s in samples.items()}
    made = {n: sum(ok for _, _, ok in s) for n, s in samples.items()}
    responder = medians["minimal responder, EPERM via LXC"]
    print(f"\nmount latency, {args.rounds} interleaved rounds x {args.calls} calls "
          f"(median of per-round p50/p99), {os.cpu_count()} CPUs, "
          f"{time.monotonic() - started:.0f} s")
    print(f"{'configuration':36} {'p50 us':>8} {'p99 us':>8} {'/responder':>10} {'ok':>7}")
    for name in runs:
        print(f"{name:36} {medians[name]:8.1f} {p99s[name]:8.1f} "
              f"{medians[name] / responder:10.2f} {made[name]:7}")
    host_us = statistics.median(host)
    emulated = medians["lxc-notify, emulated ext4 mount"]
    print(f"{'(host root, the same mount)':36} {host_us:8.1f}")
    print(f"\nemulated - host's own mount = {emulated - host_us:.0f} us of supervision "
          f"({(emulated - host_us) / responder:.1f}x the responder's whole round trip)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
