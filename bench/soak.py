"""Soak: many containers and processes mixing allowed and denied mknod for a long time.

N supervised containers x P processes each run ``nodeprobe mix``: for D
seconds, alternately an allowed mknod (``c 1:3``, made by the daemon, then
unlinked) and a denied one (``c 1:1``, /dev/mem, which the default profile
hands back to the kernel: EPERM), each call timed alone.  All go through one
private daemon.  Reported:

* calls/s, p50/p99 latency (all calls, and allowed and denied apart), from
  histograms merged across processes (buckets 3 % wide: the figures are a
  bucket's lower bound);
* wrong answers (anything but ok / EPERM) and ENOSYS, which must be 0;
* the daemon's CPU time per call (utime + stime of all its threads over the
  run) and, beside it, the LXC monitors' (which carry every call too);
* the daemon's RSS, fd and thread counts sampled through the run, after a
  warm-up: first, last, max; and its fds once the run's connections are
  gone, against before;
* a baseline from the same run: one unsupervised container, P processes,
  the same mix, where the kernel refuses both calls: the floor, as ratios.

Run as root from the repository: ``.venv/bin/python bench/soak.py``.  Not a
test: it asserts nothing.  ``--json FILE`` also writes the figures as JSON;
tests/lxc/test_soak.py runs this script small and asserts on that file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final

# _common first: it puts the repository on sys.path for lxc_notify_plugin.
from _common import BIND_TARGET, Daemon, build_nodeprobe, request_delta, shared_tmpfs

from lxc_notify_plugin.tools.sandbox import Sandbox, lxc_attach_error

CLOCK_TICK: Final = os.sysconf("SC_CLK_TCK")
ATTEMPTS: Final = 3  # lxc-attach runs that never reached nodeprobe, or ran it unsupervised
BASELINE_SECONDS: Final = 5


# --- one nodeprobe mix process ----------------------------------------------------------------


@dataclass
class Mix:
    """One ``nodeprobe mix`` in a container, through lxc-attach.

    lxc-attach sometimes exits before running anything, or runs the command
    unsupervised (NOTES.md): mix then says "unsupervised" before it starts
    timing.  Both are retried (counted in ``retries``); anything else it says
    first is a failure, reported."""

    box: Sandbox
    path: str
    seconds: int
    answer: str = "ok"  # what the allowed call must return
    retries: int = 0
    failure: str | None = None
    result: dict[str, Any] | None = None
    process: subprocess.Popen[bytes] | None = None
    _stderr: IO[bytes] | None = None

    def launch(self) -> None:
        self.close()
        # A file, not a pipe: a pipe nobody reads could block it.  Closed by close().
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            ["lxc-attach", "-n", self.box.name, "-P", self.box.lxc_path, "--clear-env", "--",
             "/bin/nodeprobe", "mix", self.path, str(self.seconds), self.answer],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr)

    def started(self, timeout: float) -> bool | None:
        """True once mix runs supervised; False to retry; None when it failed."""
        assert self.process is not None and self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline().decode().strip() if ready else ""
        if line == "started":
            return True
        self.kill()
        if line in ("", "unsupervised") and self.retries < ATTEMPTS - 1:
            self.retries += 1
            return False
        self.failure = (f"printed {line!r} first (lxc-attach exited {self.process.returncode}); "
                        f"stderr: {self.stderr().strip()}")
        return None

    def finish(self, timeout: float) -> None:
        """Wait for its one result line."""
        assert self.process is not None and self.process.stdout is not None
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.failure = f"still running {timeout:.0f} s after its end"
            return
        line = next((ln for ln in out.decode().splitlines() if ln.startswith("mix ")), "")
        if self.process.returncode != 0 or not line:
            self.failure = (f"exited {self.process.returncode} with {out.decode()!r}; stderr: "
                            f"{self.stderr().strip()}")
            return
        if (error := lxc_attach_error(self.stderr())) is not None:
            self.failure = f"lxc-attach logged {error}: it may have run unsupervised"
        self.result = parse_mix(line)

    def stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def kill(self) -> None:
        """End lxc-attach (the attached mix ends at its own deadline)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()

    def close(self) -> None:
        self.kill()
        self.process = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def parse_mix(line: str) -> dict[str, Any]:
    """``mix calls N ok K ... hist_allowed LOW:COUNT,... hist_denied ...`` as a dict."""
    words = line.split()[1:]
    out: dict[str, Any] = {}
    for key, value in zip(words[::2], words[1::2], strict=True):
        if key.startswith("hist_"):
            out[key] = Counter() if value == "-" else Counter(
                {int(low): int(count) for low, count in (pair.split(":") for pair in
                                                         value.split(","))})
        elif key == "first_wrong":
            out[key] = value
        else:
            out[key] = int(value)
    return out


def run_mixes(mixes: list[Mix], seconds: int) -> None:
    """Start every mix at once, retry the ones lxc-attach failed, wait for all."""
    pending = list(mixes)
    for _ in range(ATTEMPTS):
        for mix in pending:
            mix.launch()
        pending = [mix for mix in pending if mix.started(timeout=60) is False]
        if not pending:
            break
    for mix in mixes:
        if mix.failure is None:
            mix.finish(timeout=seconds + 60)


@contextlib.contextmanager
def killed_on_exit(mixes: list[Mix]) -> Iterator[list[Mix]]:
    try:
        yield mixes
    finally:
        for mix in mixes:
            mix.close()


# --- the daemon, seen from /proc -------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def settled_fds(pid: int, want: int, timeout: float = 15) -> int:
    """The fd count once it is ``want`` again, or the last one after ``timeout``
    (connections LXC re-opens, and ended callers' caches, go asynchronously)."""
    deadline = time.monotonic() + timeout
    count = fd_count(pid)
    while count != want and time.monotonic() < deadline:
        time.sleep(0.2)
        count = fd_count(pid)
    return count


def stable_fds(pid: int, timeout: float = 10) -> int:
    """The fd count once two readings 0.2 s apart agree."""
    count = fd_count(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        again = fd_count(pid)
        if again == count:
            break
        count = again
    return count


@dataclass
class Samples:
    rss_kib: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)


class Sampler:
    """Samples the daemon every ``interval`` seconds in a thread of its own,
    until ``stop``; the thread waits on an Event, so it ends at once."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self.samples = Samples()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):  # the daemon died: the report says so
                self.samples.rss_kib.append(rss_kib(self.pid))
                self.samples.fds.append(fd_count(self.pid))
                self.samples.threads.append(thread_count(self.pid))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- figures ------------------------------------------------------------------------------


def quantile(hist: Counter[int], q: float) -> int:
    """The lower bound of the bucket holding quantile ``q`` (0 for no calls)."""
    total = sum(hist.values())
    want, seen = int(total * q), 0
    for low in sorted(hist):
        seen += hist[low]
        if seen > want:
            return low
    return 0


@dataclass
class Totals:
    """What a set of mix processes reported, summed."""

    expected: int
    reported: int = 0
    calls: int = 0
    ok: int = 0
    denied: int = 0
    wrong: int = 0
    enosys: int = 0
    retries: int = 0
    calls_per_s: float = 0.0
    p50_ns: int = 0
    p99_ns: int = 0
    allowed_p50_ns: int = 0
    allowed_p99_ns: int = 0
    denied_p50_ns: int = 0
    denied_p99_ns: int = 0
    failures: list[str] = field(default_factory=list)
    first_wrong: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, mixes: Iterable[Mix]) -> Totals:
        mixes = list(mixes)
        totals = cls(expected=len(mixes))
        allowed: Counter[int] = Counter()
        denied: Counter[int] = Counter()
        for mix in mixes:
            totals.retries += mix.retries
            if mix.failure is not None:
                totals.failures.append(f"{mix.box.name} {mix.path}: {mix.failure}")
            if mix.result is None:
                continue
            r = mix.result
            totals.reported += 1
            for key in ("calls", "ok", "denied", "wrong", "enosys"):
                setattr(totals, key, getattr(totals, key) + r[key])
            totals.calls_per_s += r["calls"] / (r["elapsed_ns"] / 1e9) if r["elapsed_ns"] else 0
            if r["first_wrong"] != "-":
                totals.first_wrong.append(r["first_wrong"])
            allowed += r["hist_allowed"]
            denied += r["hist_denied"]
        both = allowed + denied
        totals.p50_ns, totals.p99_ns = quantile(both, 0.5), quantile(both, 0.99)
        totals.allowed_p50_ns, totals.allowed_p99_ns = quantile(allowed, 0.5), quantile(
            allowed, 0.99)
        totals.denied_p50_ns, totals.denied_p99_ns = quantile(denied, 0.5), quantile(denied,
                                                                                     0.99)
        return totals


def soak(containers: int, procs: int, seconds: int, warmup: int) -> dict[str, Any]:
    """Everything measured, as plain data (the report and the JSON file)."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lxc-notify-soak-")))
        probe = build_nodeprobe(tmp)
        _, bind_tmpfs = stack.enter_context(shared_tmpfs())
        daemon = stack.enter_context(Daemon(tmp))
        # Entered after the daemon, so destroyed before it stops.
        kernel_box = stack.enter_context(Sandbox(prefix="soak-kernel"))
        boxes = [stack.enter_context(Sandbox(prefix=f"soak{i}")) for i in range(containers)]
        for box in [kernel_box, *boxes]:
            box.create(bind_tmpfs)
            box.install(probe, "/bin/nodeprobe")
        kernel_box.start()
        for box in boxes:
            daemon.enable(box)
            box.start()
        at = f"/{BIND_TARGET}"

        def mixes(prefix: str, where: list[Sandbox], length: int, answer: str = "ok"
                  ) -> list[Mix]:
            return stack.enter_context(killed_on_exit(
                [Mix(box, f"{at}/{prefix}{b}-{p}", length, answer)
                 for b, box in enumerate(where) for p in range(procs)]))

        baseline_seconds = min(seconds, BASELINE_SECONDS)
        baseline = mixes("k", [kernel_box], baseline_seconds, "EPERM")
        run_mixes(baseline, baseline_seconds)
        warm = mixes("w", boxes, warmup)
        run_mixes(warm, warmup)

        pid = daemon.pid
        monitors = [parent_pid(box.init_pid()) for box in boxes]
        requests_before = {box.name: daemon.requests(box) for box in boxes}
        fds_before = stable_fds(pid)
        rss_before, threads_before = rss_kib(pid), thread_count(pid)
        cpu_before = cpu_seconds(pid)
        monitors_before = sum(cpu_seconds(m) for m in monitors)
        run = mixes("r", boxes, seconds)
        started = time.monotonic()
        with Sampler(pid, interval=min(1.0, seconds / 10)) as sampler:
            run_mixes(run, seconds)
        wall = time.monotonic() - started
        cpu = cpu_seconds(pid) - cpu_before
        monitors_cpu = sum(cpu_seconds(m) for m in monitors) - monitors_before
        served = [request_delta(requests_before[box.name], daemon.requests(box))
                  for box in boxes]
        fds_after = settled_fds(pid, fds_before)
        alive = daemon.process is not None and daemon.process.poll() is None
        log = daemon.log_path.read_text()

    totals, floor = Totals.of(run), Totals.of(baseline)
    calls = max(totals.calls, 1)
    samples = sampler.samples
    return {
        "containers": containers, "procs": procs, "seconds": seconds, "warmup": warmup,
        "cpus": os.cpu_count(), "wall_s": round(wall, 2), "daemon_alive": alive,
        "run": asdict(totals), "baseline": asdict(floor), "baseline_seconds": baseline_seconds,
        "daemon_served": served,
        "daemon_cpu_s": round(cpu, 2), "daemon_cpu_us_per_call": round(cpu / calls * 1e6, 2),
        "monitors_cpu_us_per_call": round(monitors_cpu / calls * 1e6, 2),
        "rss_kib": {"before": rss_before, "first": samples.rss_kib[:1],
                    "last": samples.rss_kib[-1:], "max": max(samples.rss_kib, default=0)},
        "fds": {"before": fds_before, "after": fds_after, "first": samples.fds[:1],
                "last": samples.fds[-1:], "max": max(samples.fds, default=0)},
        "threads": {"before": threads_before, "first": samples.threads[:1],
                    "last": samples.threads[-1:], "max": max(samples.threads, default=0)},
        "traceback_in_log": "Traceback" in log,
        "log_tail": log[-4000:] if (totals.wrong or totals.enosys or totals.failures
                                    or not alive or "Traceback" in log) else "",
    }


def _us(ns: int) -> str:
    return f"{ns / 1000:.1f}"


def report(r: dict[str, Any]) -> str:
    run, base = r["run"], r["baseline"]
    ratio = run["p50_ns"] / base["p50_ns"] if base["p50_ns"] else float("nan")

    def first(key: str) -> object:
        return (r[key]["first"] or ["-"])[0]

    def last(key: str) -> object:
        return (r[key]["last"] or ["-"])[0]

    lines = [
        f"soak: {r['containers']} containers x {r['procs']} processes x {r['seconds']} s "
        f"(after a {r['warmup']} s warm-up), {r['cpus']} CPUs, wall {r['wall_s']} s",
        f"processes reported: {run['reported']}/{run['expected']} "
        f"(lxc-attach retries {run['retries']})",
        f"calls: {run['calls']} ({run['calls_per_s']:.0f}/s): ok {run['ok']}, "
        f"denied {run['denied']}, wrong {run['wrong']} "
        f"({'wrong == 0' if run['wrong'] == 0 else 'WRONG ANSWERS'}), ENOSYS {run['enosys']}",
        f"latency us: all p50 {_us(run['p50_ns'])} p99 {_us(run['p99_ns'])}; allowed p50 "
        f"{_us(run['allowed_p50_ns'])} p99 {_us(run['allowed_p99_ns'])}; denied p50 "
        f"{_us(run['denied_p50_ns'])} p99 {_us(run['denied_p99_ns'])}",
        f"baseline (1 unsupervised container x {r['procs']} processes, {r['baseline_seconds']} s,"
        f" the kernel refuses both): {base['calls_per_s']:.0f} calls/s, p50 "
        f"{_us(base['p50_ns'])} p99 {_us(base['p99_ns'])} us; wrong {base['wrong']}",
        f"supervised / kernel: p50 x{ratio:.1f}, throughput x"
        f"{run['calls_per_s'] / base['calls_per_s'] if base['calls_per_s'] else 0:.3g}",
        f"daemon CPU: {r['daemon_cpu_s']} s, {r['daemon_cpu_us_per_call']} us per call; LXC "
        f"monitors: {r['monitors_cpu_us_per_call']} us per call",
        f"daemon served (status): {'; '.join(r['daemon_served'])}",
        f"daemon RSS KiB: before {r['rss_kib']['before']}, first {first('rss_kib')}, "
        f"last {last('rss_kib')}, max {r['rss_kib']['max']}",
        f"daemon fds: before {r['fds']['before']}, during first {first('fds')} last "
        f"{last('fds')} max {r['fds']['max']}, after {r['fds']['after']}",
        f"daemon threads: before {r['threads']['before']}, during first {first('threads')} "
        f"last {last('threads')} max {r['threads']['max']}",
        f"daemon alive: {r['daemon_alive']}; Traceback in its log: {r['traceback_in_log']}",
    ]
    for failure in run["failures"] + base["failures"]:
        lines.append(f"failure: {failure}")
    if run["first_wrong"]:
        lines.append(f"first wrong answers: {', '.join(run['first_wrong'][:10])}")
    if r["log_tail"]:
        lines.append("--- daemon log tail ---\n" + r["log_tail"])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--containers", type=int, default=8)
    parser.add_argument("--procs", type=int, default=4, help="processes per container")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3, help="seconds of mix before measuring")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    result = soak(args.containers, args.procs, args.seconds, args.warmup)
    print(report(result), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
