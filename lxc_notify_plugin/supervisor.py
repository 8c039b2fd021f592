"""The supervisor: the daemon's life, its containers, and what admins ask of it.

It owns the transports (LXC's proxy socket, ``transport/lxc.py``, and the OCI
runtimes' seccomp agent socket, ``transport/agent.py``), the
one dispatcher they all hand requests to, the registry of containers it
serves (by the cookie LXC sends), the udev watcher, and the wake pipe that
signals turn into work on the main thread: stop, reload, status.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import threading
import time
from pathlib import Path

from . import kernel
from .dispatch import Container, Dispatcher, HostViews
from .errors import ConfigError
from .host.udev import HostDeviceIndex, UdevWatcher
from .paths import Paths, atomic_write
from .state import StateStore
from .transport import lxc as protocol
from .transport.agent import OciAgent, StatePolicies
from .transport.lxc import LxcProxy

log = logging.getLogger(__name__)

class ContainerRegistry:
    """cookie -> Container, read from the state directory when a cookie is new."""

    def __init__(self, paths: Paths) -> None:
        self._store = StateStore(paths)
        self._paths = paths
        self._by_cookie: dict[bytes, Container] = {}
        self._lock = threading.Lock()

    def lookup(self, cookie: bytes) -> Container | None:
        with self._lock:
            known = self._find(cookie)
            if known is None:
                self._rescan()
                known = self._find(cookie)
            return known

    def containers(self) -> list[Container]:
        with self._lock:
            return list(self._by_cookie.values())

    def _find(self, cookie: bytes) -> Container | None:
        for candidate, container in self._by_cookie.items():
            if protocol.cookie_matches(candidate, cookie):
                return container
        return None

    def _rescan(self) -> None:
        try:
            records, errors = self._store.all()
        except OSError as err:
            log.error("cannot read container state: %s", err)
            return
        for error in errors:
            log.error("container state refused: %s", error)
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
            self._by_cookie[cookie] = Container(record, policy)

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


class Supervisor:
    def __init__(self, paths: Paths, registry: ContainerRegistry | None = None,
                 proc_root: str = "/proc") -> None:
        self.paths = paths
        self.registry = registry or ContainerRegistry(paths)
        self.proc_root = proc_root
        self.sizes = kernel.notif_sizes()
        kernel.check_struct_sizes(self.sizes)
        self.host_devices = HostDeviceIndex()
        self.dispatcher = Dispatcher(HostViews(devices=self.host_devices))
        self.lxc = LxcProxy(paths.socket, self.dispatcher, self.registry.lookup, self.sizes,
                            proc_root)
        self.oci_policies = StatePolicies(paths)
        self.agent = OciAgent(paths.agent_socket, self.dispatcher, self.oci_policies, proc_root)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._reloads = 0
        self._udev = UdevWatcher(self.host_devices, paths.udev_control)
        self._bound = False

    # --- lifecycle ------------------------------------------------------------------

    def bind(self) -> None:
        self.lxc.bind()
        self.agent.bind()
        self._bound = True
        atomic_write(self.paths.pid_file, f"{os.getpid()}\n", mode=0o644)
        log.info("listening on %s, OCI agent on %s (pid %d)", self.paths.socket,
                 self.paths.agent_socket, os.getpid())
        for backend in self.dispatcher.host.shifter.backends:
            why = backend.unavailable()
            log.info("mount shifting with %s: %s", backend.name,
                     "available" if why is None else f"unavailable ({why})")

    def serve(self) -> None:
        """Accept connections until stop(); then wait for every connection thread."""
        if not self._bound:
            self.bind()
        poller = select.poll()
        poller.register(self.lxc.fileno(), select.POLLIN)
        poller.register(self.agent.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            self._udev.start()
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._wake_r in ready:
                    wanted = os.read(self._wake_r, 64)
                    if b"x" in wanted:
                        break
                    if b"r" in wanted:
                        self._reload()
                    if b"s" in wanted:
                        self._write_status()
                    continue
                if self.agent.fileno() in ready:
                    self.agent.accept()
                if self.lxc.fileno() in ready:
                    self.lxc.accept()
        finally:
            self.lxc.close()
            self.agent.close()
            self.paths.pid_file.unlink(missing_ok=True)
            self.paths.reload_file.unlink(missing_ok=True)
            self.paths.status_file.unlink(missing_ok=True)
            self._udev.stop()
            os.close(self._wake_r)
            os.close(self._wake_w)
            log.info("stopped")

    def _reload(self) -> None:
        started = time.monotonic_ns()
        try:
            refused = self.registry.reload()
            self.agent.reload(self.oci_policies.rebuild)
        except Exception:
            log.exception("reload failed; every container keeps its policy")
            refused = ["*"]
        self._reloads += 1
        self._answer_admin(self.paths.reload_file, started,
                           {"reloads": self._reloads, "refused": refused})

    def _write_status(self) -> None:
        """What an admin sees with `lxc-notify status`."""
        self._answer_admin(self.paths.status_file, time.monotonic_ns(), {
            "pid": os.getpid(), "reloads": self._reloads,
            "udev": {"running": self._udev.running, "devices": len(self.host_devices)},
            "containers": [{
                "name": c.record.name, "profile": c.record.profile,
                "connected": c.connections > 0,
                "intercept": sorted(c.policy.intercept), "requests": dict(c.stats),
            } for c in [*self.registry.containers(), *self.agent.containers()]],
        })

    def _answer_admin(self, path: Path, stamp_ns: int, body: dict[str, object]) -> None:
        """Answer a signal from `lxc-notify`: JSON beside the socket, stamped with
        CLOCK_MONOTONIC (one clock for every process of a boot) when the work
        began, so the command can tell this answer from an older one."""
        try:
            atomic_write(path, json.dumps({"stamp_ns": stamp_ns, **body}, indent=1) + "\n",
                         mode=0o600)
        except OSError as err:
            log.error("cannot answer in %s: %s", path, err)

    def request_status(self) -> None:
        """Ask serve() to write its status (signal-safe: SIGUSR1)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"s")

    def request_reload(self) -> None:
        """Ask serve() to reload every container's policy (signal-safe: SIGHUP)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"r")

    def stop(self) -> None:
        """Ask serve() to finish (signal-safe); serve() then ends every connection."""
        with contextlib.suppress(OSError):  # already stopping: the pipe may be closed
            os.write(self._wake_w, b"x")
