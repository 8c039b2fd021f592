"""The systemd unit: what it grants the daemon, and installing it.

The bounding set is what the supervisor itself needs (``CORE``) and what each
family's handler needs (``Family.capabilities``), each with its reasons;
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

from ..errors import ServiceError
from ..paths import Paths
from ..policy.catalog import built

UNIT_NAME: Final = "lxc-notify.service"
SOCKET_NAME: Final = "lxc-notify.socket"
UNIT_DIR: Final = Path("/etc/systemd/system")

# What serving any family takes: entering the caller's context and reading it.
CORE: Final = {
    "CAP_SYS_ADMIN": "setns into containers' namespaces, seccomp ioctls on the listener",
    "CAP_SETUID": "acting with the caller's uids (setresuid, setfsuid)",
    "CAP_SETGID": "acting with the caller's gids and supplementary groups",
    "CAP_SYS_CHROOT": "walking paths from the caller's root (chroot, setns to its mount ns)",
    "CAP_DAC_OVERRIDE": "lent on the path walk where the caller's own capabilities reach",
    "CAP_DAC_READ_SEARCH": "lent on the path walk",
    "CAP_SYS_PTRACE": "reading and writing the caller's memory, its /proc/PID files",
}


def capabilities() -> dict[str, str]:
    """Capability -> every reason the daemon holds it: the core's, then each family's."""
    reasons: dict[str, list[str]] = {name: [why] for name, why in CORE.items()}
    for family in built().values():
        for name, why in family.capabilities.items():
            reasons.setdefault(name, []).append(f"{family.name}: {why}")
    return {name: "; ".join(why) for name, why in reasons.items()}


def exec_start() -> str:
    """This installation's daemon command: its own interpreter (a venv's, Debian's)."""
    return f"{shlex.quote(sys.executable)} -m lxc_notify_plugin"


def render(command: str | None = None, config: Path | None = None,
           options: tuple[str, ...] = ()) -> str:
    """The service unit; ``config`` is a daemon.toml other than the default one,
    ``options`` the common options install was given (``--socket X`` ...): the
    daemon and the socket unit must name the same paths."""
    start = command or exec_start()
    if config is not None:
        start += f" --config {shlex.quote(str(config.resolve()))}"
    start += "".join(f" {shlex.quote(option)}" for option in options)
    return (Path(__file__).with_name(UNIT_NAME).read_text()
            .replace("@EXEC_START@", start)
            .replace("@CAPABILITIES@", " ".join(capabilities())))


def render_socket(paths: Paths) -> str:
    """The socket unit, listening where the daemon's configuration says."""
    return (Path(__file__).with_name(SOCKET_NAME).read_text()
            .replace("@SOCKET@", str(paths.socket))
            .replace("@AGENT_SOCKET@", str(paths.agent_socket)))


def systemd_is_init() -> bool:
    """Whether systemd runs this system (sd_booted(3): /run/systemd/system exists)."""
    return Path("/run/systemd/system").is_dir()


def write(paths: Paths, unit_dir: Path, config: Path | None = None,
          options: tuple[str, ...] = ()) -> list[Path]:
    """Write both units into ``unit_dir``: what install installs, and what Debian's
    package ships (debian/rules calls this at build time with Debian's python3)."""
    unit_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in ((UNIT_NAME, render(config=config, options=options)),
                       (SOCKET_NAME, render_socket(paths))):
        target = unit_dir / name
        target.write_text(text)
        target.chmod(0o644)
        written.append(target)
    return written


def install(paths: Paths, unit_dir: Path = UNIT_DIR, start: bool = True,
            config: Path | None = None, options: tuple[str, ...] = ()) -> list[str]:
    """Write the units, then enable and start them where systemd is init; what was done."""
    done = [f"installed {target}" for target in write(paths, unit_dir, config, options)]
    if not systemd_is_init():
        done.append("systemd is not this system's init: run the unit's ExecStart yourself "
                    f"({exec_start()} daemon)")
        return done
    systemctl("daemon-reload")
    # The files, not the names: systemctl finds a unit by name only in its search
    # path (/etc/systemd/system, /run/systemd/system, /usr/lib/systemd/system, ...),
    # so a --unit-dir outside it failed with "Unit file lxc-notify.socket does not
    # exist".  Given the file, enable links one outside the search path into
    # /etc/systemd/system first, and treats one inside it as its name.
    folder = unit_dir.resolve()
    done += systemctl("enable", *(["--now"] if start else []), str(folder / SOCKET_NAME),
                      str(folder / UNIT_NAME))
    done.append(f"enabled{' and started' if start else ''} {SOCKET_NAME} and {UNIT_NAME}")
    return done


def remove(unit_dir: Path = UNIT_DIR) -> list[str]:
    """Undo install: stop and disable, remove the files."""
    done = []
    if systemd_is_init():
        # By name (disable takes no paths): it also removes the links that enable
        # made for units outside the search path.  Not checked: removing what is
        # half installed must go on to the files.
        done += systemctl("disable", "--now", UNIT_NAME, SOCKET_NAME, check=False)
        done.append(f"stopped and disabled {UNIT_NAME} and {SOCKET_NAME}")
    for name in (UNIT_NAME, SOCKET_NAME):
        target = unit_dir / name
        if target.exists():
            target.unlink()
            done.append(f"removed {target}")
    if systemd_is_init():
        systemctl("daemon-reload")
    return done or [f"{unit_dir / UNIT_NAME} was not installed"]


def systemctl(*args: str, check: bool = True) -> list[str]:
    """Run systemctl; what it said, one line each.  A failure is a ServiceError with
    systemd's own reason, never a traceback."""
    command = ["systemctl", *args]
    try:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, check=False)
    except OSError as err:  # no systemctl at all
        raise ServiceError(command, -1, str(err)) from err
    said = (result.stdout + result.stderr).splitlines()
    if check and result.returncode != 0:
        raise ServiceError(command, result.returncode, "\n".join(said))
    return [line for line in said if line.strip()]
