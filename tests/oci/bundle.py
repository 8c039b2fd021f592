"""Throw-away OCI bundles for the OCI tier and its benchmark: busybox in a user namespace.

Not the product.  A bundle is a busybox-static root filesystem owned by the
container's root (100000 on the host, as /etc/subuid maps it) and the
config ``runc spec --rootless`` writes, changed where a root-started
user-namespaced container needs it: a writable root, the 65536 ids mapped,
no terminal, and CAP_MKNOD (which a rootless spec leaves out, and without
which the kernel, and so our handler, refuses every device node).

Facts seen on this machine: runc 1.1.5 runs such a bundle as is.  crun
1.8.1 refuses this host's hybrid cgroup layout ("cgroups in hybrid mode not
supported, drop all controllers from cgroupv2": the empty cgroup2 at
/sys/fs/cgroup/unified still lists hugetlb), even with
``--cgroup-manager=disabled``; run in a private mount namespace where that
cgroup2 mount is gone, it sees a plain cgroup v1 host and runs the bundle.
The namespace is the crun command's only: nothing changes for anyone else.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

CONTAINER_ROOT = 100000  # root in the container's user namespace, on the host
ID_RANGE = 65536
APPLETS = ("sh", "mknod", "ls", "cat", "echo", "sleep", "stat", "rm", "mkdir", "true", "test")

# crun as it runs on this host: in a mount namespace of its own without the
# unified cgroup2 mount, so it treats the host as cgroup v1 (see above).
CRUN_WRAPPER = ("unshare", "--mount", "--propagation", "private", "sh", "-c",
                "umount /sys/fs/cgroup/unified 2>/dev/null; exec crun \"$@\"", "crun")


def runtime_command(runtime: str) -> list[str]:
    return list(CRUN_WRAPPER) if runtime == "crun" else [runtime]


class Bundle:
    """One bundle and the container run from it; ``remove()`` undoes both."""

    def __init__(self, parent: Path, runtime: str = "runc", prefix: str = "lxcn-oci") -> None:
        self.id = f"{prefix}-{secrets.token_hex(4)}"
        self.dir = parent / self.id
        self.runtime = runtime
        self.config: dict[str, Any] = {}

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    def create(self, args: list[str], seccomp: dict[str, Any] | None = None,
               annotations: dict[str, str] | None = None) -> None:
        rootfs = self.rootfs
        (rootfs / "bin").mkdir(parents=True)
        for name in ("proc", "dev", "sys", "tmp", "etc"):
            (rootfs / name).mkdir()
        busybox = shutil.which("busybox")
        if busybox is None:
            raise FileNotFoundError("busybox (busybox-static) is not installed")
        shutil.copy2(busybox, rootfs / "bin" / "busybox")
        for applet in APPLETS:
            # Relative: the host's /usr/bin/busybox is not inside the rootfs.
            (rootfs / "bin" / applet).symlink_to("busybox")
        for path in [rootfs, *rootfs.rglob("*")]:
            os.lchown(path, CONTAINER_ROOT, CONTAINER_ROOT)
        subprocess.run(["runc", "spec", "--rootless"], cwd=self.dir, check=True,
                       capture_output=True)
        config = json.loads((self.dir / "config.json").read_text())
        config["root"]["readonly"] = False
        config["process"]["terminal"] = False
        config["process"]["args"] = args
        for capabilities in config["process"]["capabilities"].values():
            capabilities.append("CAP_MKNOD")
        ids = [{"containerID": 0, "hostID": CONTAINER_ROOT, "size": ID_RANGE}]
        config["linux"]["uidMappings"] = ids
        config["linux"]["gidMappings"] = ids
        if seccomp is not None:
            config["linux"]["seccomp"] = seccomp
        if annotations:
            config["annotations"] = annotations
        self.config = config
        (self.dir / "config.json").write_text(json.dumps(config, indent=1))

    def _runtime(self, *argv: str, timeout: float = 30, check: bool = False
                 ) -> subprocess.CompletedProcess[str]:
        # Only run and create read the bundle from the working directory.
        return subprocess.run([*runtime_command(self.runtime), *argv],
                              cwd=self.dir if self.dir.is_dir() else None,
                              capture_output=True, text=True, timeout=timeout, check=check,
                              stdin=subprocess.DEVNULL)

    def run(self, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run the container's process in the foreground; its output and status."""
        try:
            return self._runtime("run", self.id, timeout=timeout)
        finally:
            self._runtime("delete", "--force", self.id)

    def start(self) -> None:
        """Run it detached.  Its stdio are files: the container inherits them, so
        a pipe would stay open after the runtime exits and never reach EOF."""
        with tempfile.TemporaryFile() as errors:
            result = subprocess.run([*runtime_command(self.runtime), "run", "--detach", self.id],
                                    cwd=self.dir, timeout=30, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=errors)
            if result.returncode != 0:
                errors.seek(0)
                raise RuntimeError(f"{self.runtime} run --detach {self.id} exited "
                                   f"{result.returncode}: {errors.read().decode(errors='replace')}")

    def exec(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self._runtime("exec", self.id, *argv, timeout=timeout)

    def init_pid(self) -> int:
        state = json.loads(self._runtime("state", self.id, check=True).stdout)
        return int(state["pid"])

    def remove(self) -> None:
        """Delete the container (if it runs) and the bundle; safe to call twice."""
        self._runtime("delete", "--force", self.id)
        shutil.rmtree(self.dir, ignore_errors=True)
