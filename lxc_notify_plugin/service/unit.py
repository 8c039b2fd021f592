"""The systemd unit: what it grants the daemon, and installing it.

The capability list is derived from what the handlers do, one reason each;
tests/lxc/test_service.py runs the real container tests with the daemon under
exactly this bounding set (the unit's ExecStart under ``setpriv``), so a
handler that starts to need another capability fails there, not in production.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Final

UNIT_NAME: Final = "lxc-notify.service"
UNIT_TEMPLATE: Final = Path(__file__).with_name(UNIT_NAME)
UNIT_DIR: Final = Path("/etc/systemd/system")

CAPABILITIES: Final = {
    "CAP_SYS_ADMIN": "setns into containers' namespaces, mounts and idmapped mounts, "
                     "trusted.* xattrs, seccomp ioctls on the listener",
    "CAP_MKNOD": "making the device nodes it emulates",
    "CAP_SETUID": "acting with the caller's uids (setresuid, setfsuid)",
    "CAP_SETGID": "acting with the caller's gids and supplementary groups",
    "CAP_SYS_CHROOT": "walking paths from the caller's root (chroot, setns to its mount ns)",
    "CAP_DAC_OVERRIDE": "lent on the path walk where the caller's own capabilities reach",
    "CAP_DAC_READ_SEARCH": "lent on the path walk; open_by_handle for twins",
    "CAP_FOWNER": "lent to a caller owning the inode's namespace (chmod, xattrs)",
    "CAP_FSETID": "keeping the mode bits the caller asked for",
    "CAP_CHOWN": "giving a usable twin node the owner of the node it stands for",
    "CAP_SYS_PTRACE": "reading and writing the caller's memory, its /proc/PID files",
    "CAP_SYS_NICE": "sched_setscheduler and sched_setparam for callers with CAP_SYS_NICE",
}


def exec_start() -> str:
    """This installation's daemon command: its own interpreter (a venv's, Debian's)."""
    return f"{shlex.quote(sys.executable)} -m lxc_notify_plugin"


def render(command: str | None = None) -> str:
    return (UNIT_TEMPLATE.read_text()
            .replace("@EXEC_START@", command or exec_start())
            .replace("@CAPABILITIES@", " ".join(CAPABILITIES)))


def systemd_is_init() -> bool:
    """Whether systemd runs this system (sd_booted(3): /run/systemd/system exists)."""
    return Path("/run/systemd/system").is_dir()


def install(unit_dir: Path = UNIT_DIR, start: bool = True) -> list[str]:
    """Write the unit, then enable and start it where systemd is init; what was done."""
    unit_dir.mkdir(parents=True, exist_ok=True)
    target = unit_dir / UNIT_NAME
    target.write_text(render())
    target.chmod(0o644)
    done = [f"installed {target}"]
    if not systemd_is_init():
        done.append("systemd is not this system's init: run the unit's ExecStart yourself "
                    f"({exec_start()} daemon)")
        return done
    subprocess.run(["systemctl", "daemon-reload"], check=True)
    subprocess.run(["systemctl", "enable", *(["--now"] if start else []), UNIT_NAME],
                   check=True)
    done.append(f"enabled{' and started' if start else ''} {UNIT_NAME}")
    return done


def remove(unit_dir: Path = UNIT_DIR) -> list[str]:
    """Undo install: stop and disable, remove the file."""
    target = unit_dir / UNIT_NAME
    done = []
    if systemd_is_init():
        subprocess.run(["systemctl", "disable", "--now", UNIT_NAME], check=False)
        done.append(f"stopped and disabled {UNIT_NAME}")
    if target.exists():
        target.unlink()
        done.append(f"removed {target}")
    if systemd_is_init():
        subprocess.run(["systemctl", "daemon-reload"], check=True)
    return done or [f"{target} was not installed"]
