"""What `lxc-notify enable`, `disable`, `start`, `config` and `prune` do to LXC containers.

``enable`` writes three keys into the container's LXC config, between marker
lines, so a plain ``lxc-start`` is supervised; ``disable`` removes exactly
those lines.  ``start`` sets the same keys for one start only, through
python-lxc, and starts the container.  Each keeps the container's record
(``state.py``) and compiled policy beside it; the running daemon is told
through ``admin/daemon.py``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..errors import ContainerError
from ..paths import Paths, atomic_write
from ..policy import keys as lxd
from ..policy.effective import ContainerPolicy
from ..policy.lxc_policy import check_with_libseccomp, compile_policy
from ..policy.profile import is_file_name
from ..state import ContainerRecord, StateStore, check_container_name
from .daemon import ensure_daemon, signal_reload

log = logging.getLogger(__name__)

BEGIN = "# BEGIN lxc-notify: managed by `lxc-notify enable`, removed by `lxc-notify disable`"
END = "# END lxc-notify"
_STOCK_PROFILES = ("/usr/share/lxc/config/common.seccomp",)


def _container(name: str, paths: Paths) -> Any:
    import lxc  # python3-lxc, from Debian; imported here so policy code needs no LXC

    check_container_name(name)
    container = lxc.Container(name, paths.lxc_path) if paths.lxc_path else lxc.Container(name)
    if not container.defined:
        raise ContainerError(name, "no such container")
    return container


def config_items(record: ContainerRecord, policy_path: Path, paths: Paths) -> dict[str, str]:
    return {
        "lxc.seccomp.profile": str(policy_path),
        "lxc.seccomp.notify.proxy": f"unix:{paths.socket}",
        "lxc.seccomp.notify.cookie": record.cookie,
    }


def prepare(name: str, profile_name: str | None, paths: Paths,
            lxc_path: str | None = None) -> tuple[ContainerRecord, Path]:
    """Make (or refresh) the container's record and compiled policy; reuse its cookie
    and keys.  Every check (profile, keys, libseccomp) runs before anything is written."""
    store = StateStore(paths)
    existing = store.get(name)
    if profile_name and is_file_name(profile_name):
        # The daemon runs elsewhere: a file given relative to here must not move.
        profile_name = str(Path(profile_name).resolve())
    record = ContainerRecord(
        name, existing.cookie if existing else store.new_cookie(),
        profile_name or (existing.profile if existing else "default"), lxc_path,
        dict(existing.config) if existing else {})
    policy_path = store.policy_path(name)
    atomic_write(policy_path, compiled(store.policy(record)), mode=0o600)
    store.put(record)
    return record, policy_path


def compiled(policy: ContainerPolicy) -> str:
    """The LXC policy text, after libseccomp accepted every rule of it."""
    check_with_libseccomp(policy)
    return compile_policy(policy)


def _split_managed(text: str) -> tuple[list[str], bool]:
    """The config's lines without our block, and whether the block was there."""
    kept: list[str] = []
    inside = found = False
    for line in text.splitlines():
        if line == BEGIN:
            inside = found = True
        elif line == END and inside:
            inside = False
        elif not inside:
            kept.append(line)
    return kept, found


def enable(name: str, profile_name: str | None, paths: Paths) -> ContainerRecord:
    container = _container(name, paths)
    config = Path(container.config_file_name)
    kept, _ = _split_managed(config.read_text())
    for line in kept:
        key = line.split("=", 1)[0].strip()
        value = line.split("=", 1)[1].strip() if "=" in line else ""
        if key.startswith("lxc.seccomp.notify") or (
                key == "lxc.seccomp.profile" and value not in _STOCK_PROFILES):
            raise ContainerError(name, f"{config} already sets {key}; remove it first "
                                       "(lxc-notify would replace it)")
    record, policy_path = prepare(name, profile_name, paths, paths.lxc_path)
    block = [BEGIN] + [f"{k} = {v}" for k, v in config_items(record, policy_path, paths).items()]
    text = "\n".join(kept + block + [END]) + "\n"
    # The cookie is a secret: the config must not be readable by others.
    mode = os.stat(config).st_mode & 0o7777 & ~0o007
    atomic_write(config, text, mode=mode)
    if container.running:
        log.warning("container %s is running: interception starts at its next start", name)
    return record


def disable(name: str, paths: Paths) -> bool:
    """Remove our block and state; True if there was anything to remove."""
    container = _container(name, paths)
    config = Path(container.config_file_name)
    kept, found = _split_managed(config.read_text())
    if found:
        mode = os.stat(config).st_mode & 0o7777
        atomic_write(config, "\n".join(kept) + "\n", mode=mode)
    store = StateStore(paths)
    had_state = store.get(name) is not None
    store.remove(name)
    return found or had_state


# --- containers that come and go -------------------------------------------------------

DESTROYED = "destroyed"  # its LXC config is gone
NOT_ENABLED = "not enabled"  # its LXC config no longer sends its calls to us


def _lxc_path(record: ContainerRecord) -> Path:
    """Where the record's container lives: the path it was enabled under (None is
    LXC's default), never this command's --lxc-path, which may name another tree."""
    if record.lxc_path:
        return Path(record.lxc_path)
    try:
        import lxc

        return Path(lxc.default_config_path)
    except ImportError:  # the daemon does not need python-lxc to tell
        return Path("/var/lib/lxc")


def container_state(record: ContainerRecord, connected: bool) -> str:
    """What `status` says of an enabled container: running or stopped (as far as the
    supervisor knows: connected or not), or destroyed / not enabled (prunable)."""
    config = _lxc_path(record) / record.name / "config"
    try:
        text = config.read_text(errors="replace")
    except FileNotFoundError:
        return "running, destroyed" if connected else DESTROYED
    except OSError:
        text = ""
    ours = any(key.strip() == "lxc.seccomp.notify.cookie" and value.strip() == record.cookie
               for key, _, value in (line.partition("=") for line in text.splitlines()))
    if connected:
        return "running" if ours else "running (this start only)"
    return "stopped" if ours else NOT_ENABLED


def prune(paths: Paths) -> list[tuple[str, str]]:
    """Remove the state of containers that were destroyed or no longer point at us
    and are not running; (name, why) for each one removed."""
    store = StateStore(paths)
    records, _ = store.all()
    removed = []
    for record in records:
        state = container_state(record, False)
        if state not in (DESTROYED, NOT_ENABLED):
            continue
        if _running(record):
            continue  # started by `lxc-notify start` and still running: not stale
        store.remove(record.name)
        removed.append((record.name, state))
    return removed


def _running(record: ContainerRecord) -> bool:
    try:
        import lxc

        return bool(lxc.Container(record.name, str(_lxc_path(record))).running)
    except Exception:
        return True  # cannot tell: keep it


def _set_config_item(container: Any, key: str, value: str) -> bool:
    """Set one key in the container's in-memory config.

    python-lxc's wrapper reads each value back and undoes the change when the
    read differs; LXC 5.0 reads ``lxc.seccomp.notify.proxy`` back as an empty
    string, so the wrapper always undoes it.  The C binding underneath sets
    the value and reports LXC's own verdict.
    """
    import lxc

    return bool(lxc._lxc.Container.set_config_item(container, key, value))


def start(name: str, profile_name: str | None, paths: Paths, log_file: Path,
          config_file: str | None = None) -> None:
    """Start ``name`` supervised for this start only (its config file is not changed)."""
    container = _container(name, paths)
    if container.running:
        raise ContainerError(name, "already running")
    record, policy_path = prepare(name, profile_name, paths, paths.lxc_path)
    for key, value in config_items(record, policy_path, paths).items():
        if not _set_config_item(container, key, value):
            raise ContainerError(name, f"LXC refused {key} = {value}")
    ensure_daemon(paths, log_file, config_file=config_file)
    if not container.start():
        raise ContainerError(name, "LXC could not start it (see lxc-start --logfile)")
    if not container.wait("RUNNING", 10):
        raise ContainerError(name, "did not reach RUNNING within 10 s")


# --- LXD keys ---------------------------------------------------------------------------


def config_set(name: str, key: str, value: str | None, paths: Paths) -> str:
    """Set (or, with value None, unset) one key; returns what the admin should know.

    Every check runs first; the record is then replaced atomically, the
    compiled policy refreshed for the next start, and a running daemon told.
    """
    _container(name, paths)
    store = StateStore(paths)
    file = str(store.record_path(name))
    existing = store.get(name)
    record = existing or ContainerRecord(name, store.new_cookie(), "default", paths.lxc_path)
    config = dict(record.config)
    spec = lxd.spec(key, file)
    if value is None:
        config.pop(key, None)
    else:
        value = lxd.normalize(key, value, file)
        lxd.check_buildable(key, value, file)
        config[key] = value
    new = ContainerRecord(record.name, record.cookie, record.profile, record.lxc_path, config)
    text = compiled(store.policy(new))  # the whole policy must still check out
    if store.policy_path(name).exists():
        atomic_write(store.policy_path(name), text, mode=0o600)
    store.put(new)
    told = signal_reload(paths) is not None
    if spec.live:
        return f"{key}: applied{' to the running supervisor' if told else ''}"
    return (f"{key}: changes which calls are trapped; takes effect at {name}'s next start"
            + (" (the supervisor already follows it for calls trapped now)" if told else ""))


def config_get(name: str, key: str, paths: Paths) -> str:
    store = StateStore(paths)
    lxd.spec(key, str(store.record_path(name)))
    record = store.get(name)
    return record.config.get(key, "") if record else ""


def config_show(name: str, paths: Paths, effective: bool) -> list[str]:
    store = StateStore(paths)
    record = store.get(name)
    if record is None:
        return []
    if not effective:
        return [f"{key}: {value}" for key, value in sorted(record.config.items())]
    policy = store.policy(record)
    lines = [f"profile: {record.profile} ({policy.profile.source})"]
    lines += [f"{s.name}: {s.value}    [{s.source}]" for s in policy.settings]
    return lines
