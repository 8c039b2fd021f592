"""The supervisor: the daemon's life, its containers, and what admins ask of it.

It owns the transports (LXC's proxy socket, ``transport/lxc.py``, and the OCI
runtimes' seccomp agent socket, ``transport/oci_agent.py``), the one
dispatcher they all hand requests to, the registry of LXC containers it
serves (``container_registry``: by the cookie LXC sends), the udev watcher,
and the wake pipe that signals turn into work on the main thread: stop,
reload, status.  What that work is lives in ``service/``: daemon.toml applied
again (``config_reload``), the status document and the answer files
(``status``), and systemd's side (``activation``: its sockets, its fd store,
sd_notify).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import time

from . import kernel
from .admin import daemon
from .container_registry import ContainerRegistry
from .dispatch import Dispatcher, HostViews
from .errors import DaemonError
from .host.udev import HostDeviceIndex, UdevWatcher
from .paths import atomic_write
from .service import activation, status
from .service.audit import AuditLog
from .service.config import DaemonConfig
from .service.config_reload import ConfigReload
from .service.metrics import Metrics
from .transport.lxc import LxcProxy
from .transport.oci_agent import OciAgent
from .transport.oci_policy import StatePolicies

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, config: DaemonConfig | None = None,
                 registry: ContainerRegistry | None = None, proc_root: str = "/proc",
                 log_level_given: bool = False) -> None:
        self.config = config or DaemonConfig()
        self._config_reload = ConfigReload(self.config, log_level_given)
        paths = self.paths = self.config.paths
        self.registry = registry or ContainerRegistry(paths)
        self.proc_root = proc_root
        self.sizes = kernel.notif_sizes()
        kernel.check_struct_sizes(self.sizes)
        audit = self.config.audit
        self.audit = AuditLog(audit.path, audit.max_bytes, audit.backups, audit.queue) \
            if audit.path is not None and audit.max_bytes > 0 else None
        self.metrics = Metrics(self.config.metrics.path, self.config.metrics.interval,
                               audit_dropped=self._audit_dropped)
        hooks = (self.metrics.record,) + ((self.audit.record,) if self.audit else ())
        self.host_devices = HostDeviceIndex()
        self.dispatcher = Dispatcher(HostViews(devices=self.host_devices), hooks=hooks)
        self.dispatcher.keeps_details = self.audit is not None
        limit = self.config.connections
        self.lxc = LxcProxy(paths.socket, self.dispatcher, self.registry.lookup, self.sizes,
                            proc_root, max_connections=limit)
        self.oci_policies = StatePolicies(paths)
        self.agent = OciAgent(paths.agent_socket, self.dispatcher, self.oci_policies, proc_root,
                              max_connections=limit)
        self.agent.on_gone = self.metrics.forget
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._reloads = 0
        self._udev = UdevWatcher(self.host_devices, paths.udev_control)
        self._bound = False
        self._started = time.time()

    def _audit_dropped(self) -> int:
        return self.audit.dropped if self.audit is not None else 0

    # --- lifecycle ------------------------------------------------------------------

    def bind(self) -> None:
        """Take the sockets (one daemon per host: a second one is refused) and
        open the audit log, so that what fails, fails before anything is served."""
        inherited, stored = activation.inherited_fds()  # under lxc-notify.socket
        for transport, path, kind in (
                (self.lxc, self.paths.socket, socket.SOCK_SEQPACKET),
                (self.agent, self.paths.agent_socket, socket.SOCK_STREAM)):
            held = activation.take(inherited, path, kind)
            if held is not None:
                log.info("serving %s, held by systemd across restarts", path)
            try:
                transport.bind(held)
            except OSError as err:
                self.lxc.close()
                if err.errno == errno.EADDRINUSE:
                    pid = daemon.daemon_pid(self.paths)
                    raise DaemonError(f"a supervisor{f' (pid {pid})' if pid else ''} already "
                                      f"listens on {path}: one per host") from None
                raise DaemonError(f"cannot listen on {path}: {err.strerror or err}") from None
        stray = activation.unused(inherited)
        if stray is not None:
            self.lxc.close()
            self.agent.close()
            raise DaemonError(f"systemd passed sockets on {stray} that the configuration "
                              f"does not name (it names {self.paths.socket} and "
                              f"{self.paths.agent_socket}): make lxc-notify.socket and "
                              "daemon.toml agree (`lxc-notify service install` again)")
        self._bound = True
        try:
            if self.audit is not None:
                self.audit.start()
            self.metrics.start()
        except OSError as err:
            self.lxc.close()
            self.agent.close()
            raise DaemonError(f"cannot open {err.filename or 'the audit log'}: "
                              f"{err.strerror or err}") from None
        try:
            atomic_write(self.paths.pid_file, f"{os.getpid()}\n", mode=0o644)
        except OSError as err:
            self.lxc.close()
            self.agent.close()
            raise DaemonError(f"cannot write {self.paths.pid_file}: {err.strerror or err}"
                              ) from None
        log.info("listening on %s, OCI agent on %s (pid %d); audit log %s; metrics %s",
                 self.paths.socket, self.paths.agent_socket, os.getpid(),
                 self.config.audit.path if self.audit else "off",
                 self.config.metrics.path or "off")
        self._adopt(stored)
        for backend in self.dispatcher.host.shifter.backends:
            why = backend.unavailable()
            log.info("mount shifting with %s: %s", backend.name,
                     "available" if why is None else f"unavailable ({why})")

    def _adopt(self, stored: dict[str, int]) -> None:
        """Under systemd, OCI listeners also go to its fd store; those an earlier
        daemon kept there are served again (service/activation.py: FdStore)."""
        if not os.environ.get("NOTIFY_SOCKET"):
            for fd in stored.values():
                os.close(fd)
            return
        directory = self.paths.socket.parent / "oci-listeners"
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
        except OSError as err:
            log.error("cannot keep OCI listeners across restarts: %s", err)
            return
        store = activation.FdStore(directory, activation.sd_notify)
        for orphan in directory.glob(f"{activation.STORED_PREFIX}*.json"):
            if orphan.stem not in stored:  # its fd did not come back: nothing to serve
                orphan.unlink(missing_ok=True)
        self.agent.keeper = store
        for name, fd, state in store.restored(stored):
            self.agent.adopt(name, fd, state)

    def serve(self) -> None:
        """Accept connections until stop(); then answer what is in flight, and end."""
        if not self._bound:
            self.bind()
        poller = select.poll()
        poller.register(self.lxc.fileno(), select.POLLIN)
        poller.register(self.agent.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            self._udev.start()
            self.registry.refresh()  # status shows enabled containers before their first call
            activation.sd_notify("READY=1")
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._wake_r in ready:
                    try:
                        wanted = os.read(self._wake_r, 64)
                    except BlockingIOError:
                        wanted = b""
                    if b"x" in wanted:
                        break
                    if b"r" in wanted:
                        self._reload()
                    if b"s" in wanted:
                        try:
                            self._write_status()
                        except Exception:
                            # An admin's question must never stop the daemon: its
                            # containers' calls would all get ENOSYS from then on.
                            log.exception("status could not be written; still serving")
                    continue
                if self.agent.fileno() in ready:
                    self.agent.accept()
                if self.lxc.fileno() in ready:
                    self.lxc.accept()
        finally:
            activation.sd_notify("STOPPING=1")
            # Each transport stops taking requests, answers what it holds, and waits
            # for its threads: no caller is left to LXC's 30 s timeout.  Each step
            # runs whatever the one before did: a failure in one must not leave the
            # others (the agent's listeners, the writers) running.
            for step in (self.lxc.close, self.agent.close, self.dispatcher.close,
                         lambda: self.paths.pid_file.unlink(missing_ok=True),
                         lambda: self.paths.reload_file.unlink(missing_ok=True),
                         lambda: self.paths.status_file.unlink(missing_ok=True),
                         self._udev.stop, self.metrics.close,
                         self.audit.close if self.audit is not None else lambda: None,
                         lambda: os.close(self._wake_r), lambda: os.close(self._wake_w)):
                try:
                    step()
                except Exception:
                    log.exception("while stopping")
            log.info("stopped")

    def _reload(self) -> None:
        started = time.monotonic_ns()
        activation.sd_notify("RELOADING=1")
        refused: list[str] = []
        try:
            self.config, refused = self._config_reload.apply(self.config, self.audit,
                                                              self.metrics)
            refused += self.registry.reload()
            self.registry.refresh()
            self._forget_gone()
            self.agent.reload(self.oci_policies.rebuild)
        except Exception:
            log.exception("reload failed; every container keeps its policy")
            refused = ["*"]
        self._reloads += 1
        activation.sd_notify("READY=1")
        status.write_answer(self.paths.reload_file, started,
                            {"reloads": self._reloads, "refused": refused})

    def _forget_gone(self) -> None:
        while self.registry.forgotten:
            self.metrics.forget(self.registry.forgotten.pop())

    def _write_status(self) -> None:
        """What an admin sees with `lxc-notify status` (service/status.py): the daemon's
        own state, then one row per container, every enabled one included."""
        records = self.registry.refresh()
        self._forget_gone()
        rows = status.container_rows(records, self.registry.containers(),
                                     self.agent.containers(), self.metrics.latency_quantiles)
        status.write_answer(self.paths.status_file, time.monotonic_ns(), {
            "pid": os.getpid(), "reloads": self._reloads, "since": self._started,
            "udev": {"running": self._udev.running, "devices": len(self.host_devices)},
            "audit": {"path": str(self.config.audit.path) if self.audit else None,
                      "written": self.audit.written if self.audit else 0,
                      "dropped": self._audit_dropped()},
            "metrics": str(self.config.metrics.path) if self.config.metrics.path else None,
            "containers": rows,
            "host": status.host_report(self.proc_root),
        })

    def request_status(self) -> None:
        """Ask serve() to write its status (signal-safe: SIGUSR1)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"s")

    def request_reload(self) -> None:
        """Ask serve() to reload the configuration and every container's policy
        (signal-safe: SIGHUP)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"r")

    def stop(self) -> None:
        """Ask serve() to finish (signal-safe); serve() then ends every connection."""
        with contextlib.suppress(OSError):  # already stopping: the pipe may be closed
            os.write(self._wake_w, b"x")

