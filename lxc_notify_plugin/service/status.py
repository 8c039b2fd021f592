"""What `lxc-notify status` shows, and how the daemon answers an admin's signal.

The daemon answers SIGUSR1 (status) and SIGHUP (reload) with a JSON file
beside its socket, stamped with CLOCK_MONOTONIC (one clock for every process of
a boot) when the work began, so the command (``admin/daemon.py``) can tell this
answer from an older one.  The rows are built from copies of what the serving
threads count, so reading them never races the requests going on.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ..admin.lxc_config import container_state
from ..dispatch import SupervisedContainer
from ..host.memory import lxcfs_running
from ..kernel import features
from ..paths import atomic_write
from ..state import ContainerRecord

log = logging.getLogger(__name__)

# The metrics' p50 and p99 for a container, in microseconds (service/metrics.py).
Latency = Callable[[str], Mapping[str, float | None]]


def write_answer(path: Path, stamp_ns: int, body: Mapping[str, object]) -> None:
    """Answer a signal from `lxc-notify`: ``body`` stamped with when the work began.
    Logged, never raised: an admin's question must not stop the daemon."""
    try:
        atomic_write(path, json.dumps({"stamp_ns": stamp_ns, **body}, indent=1) + "\n",
                     mode=0o600)
    except OSError as err:
        log.error("cannot answer in %s: %s", path, err)


def container_row(name: str, profile: str, state: str, connected: bool,
                  intercept: frozenset[str] | None, containers: Iterable[SupervisedContainer],
                  latency: Latency) -> dict[str, object]:
    """One row: a container's state and its requests summed over its connections."""
    requests: Counter[str] = Counter()
    for container in containers:
        requests.update(container.counts())  # a copy: their threads count on
    return {"name": name, "profile": profile, "state": state, "connected": connected,
            "intercept": sorted(intercept) if intercept is not None else None,
            "requests": dict(requests), "latency_us": dict(latency(name))}


def container_rows(records: Iterable[ContainerRecord], served: Iterable[SupervisedContainer],
                   oci: Iterable[SupervisedContainer], latency: Latency) -> list[dict[str, object]]:
    """Every enabled LXC container (``records``, served or not), those still served
    under a record that is gone, then every OCI container the agent serves."""
    by_name: dict[str, list[SupervisedContainer]] = {}
    for container in served:
        by_name.setdefault(container.name, []).append(container)
    rows = []
    for record in records:
        containers = by_name.pop(record.name, [])
        connected = any(c.connections > 0 for c in containers)
        current = [c for c in containers if c.record.cookie == record.cookie]
        rows.append(container_row(record.name, record.profile,
                                  container_state(record, connected), connected,
                                  current[0].policy.intercept if current else None,
                                  containers, latency))
    for name, containers in by_name.items():  # disabled, still running with the old cookie
        rows.append(container_row(name, containers[0].record.profile, "disabled (running)",
                                  True, containers[0].policy.intercept, containers, latency))
    for container in oci:
        rows.append(container_row(container.name, container.record.profile, "oci", True,
                                  container.policy.intercept, [container], latency))
    return rows


def host_report(proc_root: str = "/proc") -> dict[str, object]:
    """What the host offers the daemon: its kernel, the features probed, lxcfs."""
    return {"release": os.uname().release, "features": features.report(),
            "lxcfs": lxcfs_running(proc_root)}
