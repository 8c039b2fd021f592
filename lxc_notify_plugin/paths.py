"""Where things live.  Every path can be overridden (tests use their own)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# Where Debian's package (debian/) puts profiles/ and udev/: architecture-independent
# data goes under /usr/share (FHS), not inside a Python package in dist-packages.
DATA_DIR = Path("/usr/share/lxc-notify")


def shipped(name: str, package: Path = _PACKAGE, data_dir: Path = DATA_DIR) -> Path:
    """A data folder shipped with the package (``profiles``, ``udev``).

    Installed from a wheel it lies inside the package (setup.cfg maps the
    top-level folder there); in a source tree or an editable install it is
    the top-level folder itself, beside the package (a source tree: setup.cfg
    is there too, so a stray ``profiles`` in dist-packages is never taken);
    installed from Debian's package, under ``data_dir``.
    """
    inside = package / name
    if inside.is_dir():
        return inside
    beside = package.parent / name
    if (package.parent / "setup.cfg").is_file() and beside.is_dir():
        return beside
    return data_dir / name


PACKAGE_PROFILES = shipped("profiles")
PACKAGE_UDEV_RULES = shipped("udev") / "70-lxc-notify.rules"


@dataclass(frozen=True)
class Paths:
    socket: Path = Path("/run/lxc-notify/seccomp.sock")
    state_dir: Path = Path("/var/lib/lxc-notify")
    admin_profiles: Path = Path("/etc/lxc-notify/profiles")
    shipped_profiles: Path = PACKAGE_PROFILES
    lxc_path: str | None = None  # python-lxc's default (/var/lib/lxc) when None
    udev_control: Path = Path("/run/udev/control")  # present while systemd-udevd runs
    oci_agent: Path | None = None  # the OCI runtimes' socket; None: beside ``socket``

    @property
    def profile_search_path(self) -> tuple[Path, ...]:
        # Admin profiles override shipped ones of the same name.
        return (self.admin_profiles, self.shipped_profiles)

    @property
    def agent_socket(self) -> Path:
        """Where OCI runtimes hand over listeners (``linux.seccomp.listenerPath``);
        in the socket's root-only directory unless set."""
        return self.oci_agent or self.socket.parent / "oci-agent.sock"

    @property
    def pid_file(self) -> Path:
        return self.socket.parent / "daemon.pid"

    @property
    def reload_file(self) -> Path:
        """The running daemon's answer to its last reload (written after each)."""
        return self.socket.parent / "reloads"

    @property
    def status_file(self) -> Path:
        """Written by the daemon on SIGUSR1 (`lxc-notify status`)."""
        return self.socket.parent / "status.json"

    @property
    def containers_dir(self) -> Path:
        return self.state_dir / "containers"


def read_regular_text(path: Path) -> str:
    """A regular file's text, refusing anything else without blocking on it
    (a FIFO named like a state file must not hang the daemon)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def atomic_write(path: Path, data: str, mode: int = 0o600) -> None:
    """Write, fsync, rename: a crash leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def claim_socket_path(path: Path, in_use: Callable[[Path], bool]) -> None:
    """Make ``path`` free for a listening socket of ours.

    Its directory is made 0700 if missing; one that exists must be root's and
    closed to everyone else, and is refused otherwise, never chmod'ed (it may be
    /run or /tmp, named by a daemon.toml).  A socket left by a dead daemon is
    removed; one a live daemon answers on is EADDRINUSE (one daemon per host).
    """
    directory = path.parent
    if not directory.is_dir():
        directory.mkdir(parents=True, mode=0o700)
        os.chmod(directory, 0o700)  # whatever the umask
    st = os.stat(directory)
    if st.st_uid != 0 or st.st_mode & 0o077:
        raise OSError(errno.EPERM, f"{directory} must be root's and 0700 (it is uid "
                      f"{st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}): the socket's "
                      "directory keeps others from it", str(directory))
    if path.exists() or path.is_symlink():
        if in_use(path):
            raise OSError(errno.EADDRINUSE, f"a supervisor already listens on {path}")
        path.unlink()
