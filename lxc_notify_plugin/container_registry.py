"""The LXC containers the daemon serves, by the cookie LXC's monitor sends.

A cookie is looked up here for each new connection; the container behind it
is built from its record in the state directory (``state.py``) the first time
that cookie is seen, and dropped once its record is gone and nothing is
connected for it.  OCI containers are not here: the agent keeps its own
(``transport/oci_agent.py``), their policy from ``transport/oci_policy.py``.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from .dispatch import SupervisedContainer
from .errors import ConfigError
from .paths import Paths
from .state import ContainerRecord, StateStore
from .transport import lxc as protocol

log = logging.getLogger(__name__)


class ContainerRegistry:
    """cookie -> SupervisedContainer, read from the state directory when a cookie is new."""

    def __init__(self, paths: Paths) -> None:
        self._store = StateStore(paths)
        self._paths = paths
        self._by_cookie: dict[bytes, SupervisedContainer] = {}
        self._lock = threading.Lock()
        self.forgotten: list[str] = []  # names dropped by a rescan, for the metrics to forget
        self._scanned: int | None = None  # the state directory's mtime at the last rescan

    def lookup(self, cookie: bytes) -> SupervisedContainer | None:
        with self._lock:
            known = self._find(cookie)
            if known is None and self._changed():
                # Only if a record was written since: a peer sending unknown cookies
                # must not make every lookup read the whole directory.
                self._rescan()
                known = self._find(cookie)
            return known

    def _changed(self) -> bool:
        try:
            mtime = os.stat(self._paths.containers_dir).st_mtime_ns
        except OSError:
            return True
        # mtime moves in clock ticks: a record renamed in during the tick of the last
        # scan leaves it unchanged, so a directory changed in the last second counts.
        return mtime != self._scanned or time.time_ns() - mtime < 1_000_000_000

    def containers(self) -> list[SupervisedContainer]:
        with self._lock:
            return list(self._by_cookie.values())

    def _find(self, cookie: bytes) -> SupervisedContainer | None:
        for candidate, container in self._by_cookie.items():
            if protocol.cookie_matches(candidate, cookie):
                return container
        return None

    def refresh(self) -> list[ContainerRecord]:
        """Re-read the state directory: serve new records, forget records that are
        gone (disabled, pruned) once nothing is connected for them; every record read."""
        with self._lock:
            return self._rescan()

    def _rescan(self) -> list[ContainerRecord]:
        try:
            self._scanned = os.stat(self._paths.containers_dir).st_mtime_ns
        except OSError:
            self._scanned = None
        try:
            records, errors = self._store.all()
        except OSError as err:
            log.error("cannot read container state: %s", err)
            return []
        for error in errors:
            log.error("container state refused: %s", error)
        current = {record.cookie.encode() for record in records}
        names = {record.name for record in records}
        for cookie, container in list(self._by_cookie.items()):
            # A container still connected keeps the cookie it started with.
            if cookie not in current and container.connections <= 0:
                del self._by_cookie[cookie]
                if container.name not in names:  # re-enabled: its series go on
                    self.forgotten.append(container.name)
        for record in records:
            cookie = record.cookie.encode()
            if cookie in self._by_cookie:
                continue
            try:
                policy = self._store.policy(record)
            except ConfigError as err:
                log.error("container %s: policy refused, its calls get ENOSYS: %s",
                          record.name, err)
                continue
            except Exception:
                log.exception("container %s: policy could not be built", record.name)
                continue
            self._by_cookie[cookie] = SupervisedContainer(record, policy)
        return records

    def reload(self) -> list[str]:
        """Re-read every known container's record and profiles.

        All or nothing per container: a record or profile that fails any
        check leaves that container on the policy it had, and says why.
        Swapping ``container.policy`` is one reference assignment and a request
        reads it once, so it runs under the old policy or the new, never a mix.
        """
        with self._lock:
            containers = list(self._by_cookie.values())
        changed = 0
        refused: list[str] = []
        for container in containers:
            name = container.record.name
            try:
                record = self._store.get(name)
                if record is None or record.cookie != container.record.cookie:
                    continue  # disabled or re-enabled: it keeps its policy until it stops
                policy = self._store.policy(record)
            except (OSError, ConfigError) as err:
                log.error("container %s: reload refused, old policy kept: %s", name, err)
                refused.append(name)
                continue
            except Exception:
                log.exception("container %s: reload failed, old policy kept", name)
                refused.append(name)
                continue
            if policy.intercept != container.policy.intercept:
                log.warning("container %s: intercepted calls changed (%s -> %s): the "
                            "container's filter changes at its next start", name,
                            ",".join(sorted(container.policy.intercept)) or "none",
                            ",".join(sorted(policy.intercept)) or "none")
            container.policy = policy
            changed += 1
        log.info("reloaded: %d of %d containers have a new policy", changed, len(containers))
        return refused
