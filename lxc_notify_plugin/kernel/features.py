"""What this kernel has, found by asking it, never by its version.

Debian 12 runs 6.1, Debian 13 6.12, this project's CI 6.18; distributions
backport.  So each feature the daemon relies on is probed once, with a call
that has no effect (an fd that is not one, a NULL pointer the kernel checks
after the flags), and its absence chooses the fallback the user of the
feature names.  A few can only be seen on a real object (a listener's flags):
those are *observed* at their first use and reported as unknown until then.

``lxc-notify status`` lists the table (the daemon's view, in its status file).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from . import _ctypeslib
from .fs import AT_EMPTY_PATH, STATX_ATTR_MOUNT_ROOT, STATX_MNT_ID_UNIQUE, openat2, statx_raw
from .mount import fsopen, mount_setattr

__all__ = ["Feature", "FEATURES", "REQUIRED", "have", "missing_required", "observe", "report"]

_seccomp = _ctypeslib.syscall("seccomp")

_SECCOMP_SET_MODE_FILTER: Final = 1
_SECCOMP_FILTER_FLAG_NEW_LISTENER: Final = 1 << 3
_SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: Final = 1 << 5


@dataclass(frozen=True)
class Feature:
    name: str
    since: str  # the mainline release that added it: for people, never for decisions
    used_for: str
    without: str  # what the daemon does where the kernel lacks it
    probe: Callable[[], bool] | None  # None: observed at first use


def _exists_unless_enosys(call: Callable[[], object]) -> bool:
    """A call made with a bad fd: EBADF (or any errno but ENOSYS) means the syscall exists."""
    try:
        call()
    except OSError as err:
        return err.errno != errno.ENOSYS
    return True


def _new_mount_api() -> bool:
    try:
        os.close(fsopen(b"tmpfs"))
    except OSError as err:
        if err.errno in (errno.ENOSYS, errno.ENODEV):
            return False
        raise
    return True


def _openat2() -> bool:
    try:
        os.close(openat2(-100, b"/", os.O_PATH | os.O_CLOEXEC, 0))
    except OSError as err:
        if err.errno == errno.ENOSYS:
            return False
        raise
    return True


def _statx_bit(mask_bit: int = 0, attribute: int = 0) -> Callable[[], bool]:
    def probe() -> bool:
        fd = os.open("/", os.O_PATH | os.O_CLOEXEC)
        try:
            mask, attributes_mask = statx_raw(fd, AT_EMPTY_PATH, mask_bit)
        finally:
            os.close(fd)
        return bool(mask & mask_bit) if mask_bit else bool(attributes_mask & attribute)
    return probe


def _wait_killable_recv() -> bool:
    # The flags are checked before the filter is read: EINVAL for a flag this
    # kernel lacks, EFAULT for the NULL filter otherwise.  Nothing is loaded.
    try:
        _seccomp(_SECCOMP_SET_MODE_FILTER,
                 _SECCOMP_FILTER_FLAG_NEW_LISTENER | _SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, None)
    except OSError as err:
        return err.errno == errno.EFAULT
    raise AssertionError("seccomp accepted a NULL filter")


REQUIRED: Final = "required: the daemon refuses to start"

FEATURES: Final = (
    Feature("new-mount-api", "5.2", "mount emulation, the node store (fsopen, move_mount)",
            REQUIRED, _new_mount_api),
    Feature("mount_setattr", "5.12", "idmapped mounts (mount shift), locked flags",
            "shifted mounts refused (EPERM) unless the policy allows them unshifted",
            lambda: _exists_unless_enosys(lambda: mount_setattr(-1, b"", AT_EMPTY_PATH))),
    Feature("openat2", "5.6", "every path a caller names (RESOLVE_IN_ROOT)", REQUIRED,
            _openat2),
    Feature("statx-mount-root", "5.8", "a mount's root told from a directory in it",
            "mount targets checked by mount id only", _statx_bit(attribute=STATX_ATTR_MOUNT_ROOT)),
    Feature("statx-unique-mount-id", "6.8", "the device-node usability cache's key",
            "mount id plus the superblock's device number", _statx_bit(STATX_MNT_ID_UNIQUE)),
    Feature("time-namespace", "5.6", "the FUSE program joins the caller's time namespace",
            "no time namespace to join", lambda: os.path.exists("/proc/self/ns/time")),
    Feature("seccomp-wait-killable-recv", "6.0",
            "`lxc-notify oci seccomp --wait-killable` (crun)", "the profile without the flag",
            _wait_killable_recv),
    Feature("seccomp-sync-wake-up", "6.6", "a listener wakes the daemon on the caller's CPU",
            "ordinary wake-ups (a few us more per call)", None),
)

_lock = threading.Lock()
_known: dict[str, bool] = {}


def have(name: str) -> bool | None:
    """Whether this kernel has the feature; probed on first ask.  None: not
    observed yet (a feature without a probe)."""
    with _lock:
        if name in _known:
            return _known[name]
    feature = next(f for f in FEATURES if f.name == name)
    if feature.probe is None:
        return None
    present = feature.probe()
    with _lock:
        _known[name] = present
    return present


def missing_required() -> list[Feature]:
    """The features the daemon cannot run without that this kernel lacks."""
    return [f for f in FEATURES if f.without == REQUIRED and not have(f.name)]


def observe(name: str, present: bool) -> None:
    """The answer of a feature's first real use."""
    assert any(f.name == name for f in FEATURES), name
    with _lock:
        _known[name] = present


def report() -> list[dict[str, object]]:
    """Every feature, probed now where it can be: for the status file."""
    rows: list[dict[str, object]] = []
    for feature in FEATURES:
        try:
            present: bool | str | None = have(feature.name)
        except OSError as err:
            present = f"probe failed: {err}"
        rows.append({"name": feature.name, "since": feature.since, "present": present,
                     "used_for": feature.used_for, "without": feature.without})
    return rows
