"""udev's view of the host's devices, kept current by a pyudev monitor thread.

Device decisions must not query udev per request, so the daemon keeps an
index keyed by (type, major, minor): filled by enumerating udev's database at
start, then updated by a monitor on udev's netlink events (after udev's rules
ran, so tags and properties are the final ones).  The monitor is started
*before* the enumeration, so a device that appears in between is not missed.

The index is a dict replaced entry by entry; a request reads one entry, so
it sees the device as it was before or after an event, never half of one,
and the monitor never waits on a request (nor a request on the monitor).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pyudev

from ..paths import PACKAGE_UDEV_RULES
from ..policy.mknod import DeviceKey, UdevDevice

log = logging.getLogger(__name__)

DELEGATION_TAG = "lxc_notify"
PROFILES_PROPERTY = "LXC_NOTIFY_PROFILES"
UDEV_CONTROL = Path("/run/udev/control")
RULES_FILE = PACKAGE_UDEV_RULES
RULES_SUBSYSTEMS = ("misc", "drm", "block")  # what the shipped rules look at
_RECEIVE_BUFFER = 32 << 20


def udev_running(control: Path = UDEV_CONTROL) -> bool:
    """systemd-udevd listens on this socket while it runs."""
    return control.exists()


def device_record(device: pyudev.Device) -> UdevDevice | None:
    """Plain data for one pyudev device; None for devices without a node number."""
    number = device.device_number
    if not number:
        return None
    properties = dict(device.properties)
    # Since systemd 247 TAGS keeps every tag a device ever had; CURRENT_TAGS
    # (absent when empty) has those the rules set now, which is how a
    # delegation is revoked: drop the rule and re-trigger.
    tags = frozenset(t for t in properties.get("CURRENT_TAGS", "").split(":") if t)
    return UdevDevice(
        kind="b" if device.subsystem == "block" else "c",
        major=os.major(number), minor=os.minor(number),
        subsystem=device.subsystem or "", devnode=device.device_node,
        tags=tags, properties=properties)


class HostDeviceIndex:
    """The host's devices now, by (type, major, minor)."""

    def __init__(self) -> None:
        self._by_key: dict[DeviceKey, UdevDevice] = {}

    def get(self, key: DeviceKey) -> UdevDevice | None:
        return self._by_key.get(key)

    def put(self, device: UdevDevice) -> None:
        self._by_key[(device.kind, device.major, device.minor)] = device

    def remove(self, key: DeviceKey) -> None:
        self._by_key.pop(key, None)

    def replace(self, other: HostDeviceIndex) -> None:
        """Take ``other``'s devices, in one reference swap (requests see one or the other)."""
        self._by_key = other._by_key

    def __len__(self) -> int:
        return len(self._by_key)


def delegable(context: pyudev.Context) -> Iterator[UdevDevice]:
    """Devices tagged for delegation, present now (``lxc-notify udev list``)."""
    for device in context.list_devices(tag=DELEGATION_TAG):
        record = device_record(device)
        if record is not None:
            yield record


class UdevWatcher:
    """Fills a HostDeviceIndex and follows udev's events in a thread until stop()."""

    def __init__(self, index: HostDeviceIndex, control: Path = UDEV_CONTROL) -> None:
        self.index = index
        self.control = control
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self.running = False

    def start(self) -> bool:
        """Start following udev; False (said once, in the log) when udev is not running."""
        if not udev_running(self.control):
            log.warning("udev is not running (no %s): [[udev]] profile rules match nothing; "
                        "static [[devices]] entries still apply", self.control)
            return False
        try:
            context = pyudev.Context()
            monitor = pyudev.Monitor.from_netlink(context, source="udev")
            # A re-trigger of every device sends hundreds of events at once.
            _grow_receive_buffer(monitor)
            monitor.start()
            self._enumerate(context)
        except Exception:
            log.exception("udev could not be read: static [[devices]] entries only")
            return False
        thread = threading.Thread(target=self._follow, args=(monitor,), name="lxc-notify-udev")
        try:
            thread.start()
        except RuntimeError as err:  # no thread to be had (the unit's task limit)
            log.error("udev: %d device nodes known, but no thread to follow udev events "
                      "(%s): device rules see a frozen view", len(self.index), err)
            return False
        self._thread = thread
        log.info("udev: %d device nodes known; following udev events", len(self.index))
        self.running = True
        return True

    def _enumerate(self, context: pyudev.Context) -> None:
        for device in context.list_devices():
            record = device_record(device)
            if record is not None:
                self.index.put(record)

    def _follow(self, monitor: pyudev.Monitor) -> None:
        poller = select.poll()
        poller.register(monitor.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._stop_r in ready:
                    return
                try:
                    device = monitor.poll(timeout=0)
                except OSError as err:
                    if err.errno != errno.ENOBUFS:
                        raise
                    # Events were dropped: the database is the truth; read it again.
                    log.warning("udev events were lost (%s); re-reading udev's database", err)
                    self._rebuild()
                    continue
                if device is None:
                    continue
                self._apply(device)
        except Exception:
            self.running = False
            log.exception("udev monitor failed: device rules now see a frozen view")

    def _rebuild(self) -> None:
        fresh = HostDeviceIndex()
        for device in pyudev.Context().list_devices():
            record = device_record(device)
            if record is not None:
                fresh.put(record)
        self.index.replace(fresh)

    def _apply(self, device: pyudev.Device) -> None:
        record = device_record(device)
        if record is None:
            return
        if device.action == "remove":
            self.index.remove((record.kind, record.major, record.minor))
            log.debug("udev: %s %d:%d (%s) removed", record.kind, record.major, record.minor,
                      record.devnode)
        else:
            self.index.put(record)
            log.debug("udev: %s %d:%d (%s) %s", record.kind, record.major, record.minor,
                      record.devnode, device.action)

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join()
        os.close(self._stop_r)
        os.close(self._stop_w)


def _grow_receive_buffer(monitor: pyudev.Monitor) -> None:
    """A re-trigger of every device sends hundreds of events at once: ask for room.

    pyudev sets SO_RCVBUFFORCE, which needs CAP_NET_ADMIN, which the service's
    bounding set leaves out; then the plain SO_RCVBUF (capped by
    net.core.rmem_max) does.  Events lost to a full buffer are recovered
    anyway: the watcher re-reads the whole database when the socket overflows.
    """
    try:
        monitor.set_receive_buffer_size(_RECEIVE_BUFFER)
    except OSError as err:
        if err.errno != errno.EPERM:
            raise
        with socket.socket(fileno=os.dup(monitor.fileno())) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
