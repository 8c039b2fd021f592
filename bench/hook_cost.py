"""What the audit log and metrics add to every request, on the request's thread.

Both are dispatcher hooks, called before the caller is answered; this measures
one call of each (the audit log's writer running into a file on tmpfs) against
a hook that does nothing, in the same run.  A request the daemon emulates costs
about 60 us in all (bench/mknod_latency.py); the hooks' share is the number to
watch.

Run: ``.venv/bin/python bench/hook_cost.py``.  Not a test.
"""

from __future__ import annotations

import sys
import tempfile
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lxc_notify_plugin.dispatch import Outcome  # noqa: E402
from lxc_notify_plugin.service.audit import AuditLog  # noqa: E402
from lxc_notify_plugin.service.metrics import Metrics  # noqa: E402

CALLS = 100_000


def per_call_ns(hook: object, event: Outcome) -> float:
    timer = timeit.Timer("hook(event)", globals={"hook": hook, "event": event})
    return min(timer.repeat(5, CALLS)) / CALLS * 1e9


def main() -> int:
    decision = Outcome("bench", 4242, "mknodat", "done", 0, 61_000,
                       {"path": "/dev/null", "dev": "c 1:3", "mode": "0666"})
    ignored = Outcome("bench", 4242, "setxattr", "ignored", 0, 9_000, {})
    with tempfile.TemporaryDirectory(dir="/run") as run:
        audit = AuditLog(Path(run) / "audit.log", 64 << 20, 1, 1 << 20)
        metrics = Metrics(Path(run) / "metrics.prom", 5.0)
        audit.start()
        metrics.start()
        try:
            baseline = per_call_ns(lambda event: None, decision)
            rows = [("no-op hook (baseline)", baseline),
                    ("audit log, a decision", per_call_ns(audit.record, decision)),
                    ("audit log, not ours", per_call_ns(audit.record, ignored)),
                    ("metrics", per_call_ns(metrics.record, decision))]
        finally:
            audit.close(60)
            metrics.close()
    print(f"{'hook':28} {'ns/call':>8} {'x baseline':>11}")
    for name, ns in rows:
        print(f"{name:28} {ns:8.0f} {ns / baseline:11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
