"""``lxc-notify demo``: the product in one minute, on a real unprivileged container.

Creates a throw-away busybox container, shows mknod failing without the
plugin, then runs the supervisor, enables interception and shows allowed
device nodes being made (and usable, even in /dev) while forbidden ones and
unprivileged users still fail cleanly.  Everything it creates is removed at
the end, whatever happens.  Exit status 0 means every expectation held.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..admin.daemon import daemon_running
from ..paths import Paths
from .sandbox import Sandbox, SandboxError


def _say(text: str) -> None:
    print(text, flush=True)


class _Demo:
    def __init__(self, workdir: Path) -> None:
        self.paths = Paths(socket=workdir / "seccomp.sock", state_dir=workdir / "state",
                           admin_profiles=workdir / "profiles")
        self.log = workdir / "daemon.log"
        # The demo's audit log stays with it, not in /var/log with a real service's.
        self.audit = workdir / "audit.log"
        self.config = workdir / "daemon.toml"
        self.config.write_text(f'[audit]\npath = "{self.audit}"\n[metrics]\npath = ""\n')
        self.failures = 0

    def options(self) -> list[str]:
        return ["--config", str(self.config), "--socket", str(self.paths.socket),
                "--state-dir", str(self.paths.state_dir), "--profile-dir",
                str(self.paths.admin_profiles)]

    def cli(self, *args: str) -> None:
        command = [sys.executable, "-m", "lxc_notify_plugin", *self.options(), *args]
        _say("$ lxc-notify " + " ".join(args))
        sys.stdout.flush()
        subprocess.run(command, check=True)

    def expect(self, box: Sandbox, script: str, expected: str, uid: int = 0) -> None:
        who = "" if uid == 0 else f" (as uid {uid})"
        output = box.attach("/bin/sh", "-c", script + " 2>&1; true", uid=uid, gid=uid).strip()
        ok = expected in output
        self.failures += not ok
        _say(f"  [{box.name}]{who} $ {script}\n    {output or '(no output)'}"
             f"\n    {'as expected' if ok else 'UNEXPECTED, wanted: ' + expected}")


def run() -> int:
    with tempfile.TemporaryDirectory(prefix="lxc-notify-demo-") as tmp:
        demo = _Demo(Path(tmp))
        daemon: subprocess.Popen[bytes] | None = None
        box = Sandbox(prefix="lxcnotify-demo")
        try:
            _say(f"Creating an unprivileged busybox container {box.name} (root inside = "
                 "uid 100000 outside)")
            box.create()
            box.start()
            _say("\n1. Without the plugin, the kernel refuses device nodes in a user namespace:")
            demo.expect(box, "mknod /tmp/null c 1 3", "Operation not permitted")
            box.stop()

            _say("\n2. Start the supervisor and enable interception for the container:")
            with open(demo.log, "wb") as log:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "lxc_notify_plugin", *demo.options(), "-v",
                     "daemon"], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while not daemon_running(demo.paths):
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise SandboxError("the supervisor did not start:\n" + demo.log.read_text())
                time.sleep(0.05)
            demo.cli("enable", box.name)
            _say(f"$ lxc-start -n {box.name}")
            box.start()

            _say("\n3. Allowed devices (the default profile: what LXD allows) are made by the "
                 "supervisor:")
            demo.expect(box, "mknod /tmp/null c 1 3 && ls -l /tmp/null", "1,   3")
            demo.expect(box, "mknod -m 600 /dev/zero2 c 1 5 && ls -l /dev/zero2", "crw-------")
            demo.expect(box, "echo hello > /dev/zero2 && head -c 4 /dev/zero2 | od -An -c",
                        "\\0")
            _say("\n4. Forbidden devices and unprivileged users fail exactly as before:")
            demo.expect(box, "mknod /tmp/mem c 1 1", "Operation not permitted")
            demo.expect(box, "mknod /tmp/sda b 8 0", "Operation not permitted")
            demo.expect(box, "cd /tmp && mknod mine c 1 3", "Operation not permitted", uid=1000)
            _say("\n5. FIFOs never reach the supervisor; the kernel makes them as always:")
            demo.expect(box, "mknod /tmp/fifo p && ls -l /tmp/fifo", "prw")
            _say("\n6. What an admin sees of the running supervisor:")
            demo.cli("status")
        except (SandboxError, subprocess.SubprocessError, OSError) as err:
            _say(f"demo failed: {err}")
            demo.failures += 1
        finally:
            box.destroy()
            if daemon is not None:
                daemon.terminate()
                daemon.wait(20)
                _say("\nWhat the supervisor logged:")
                for line in demo.log.read_text().splitlines():
                    _say("  " + line.split(" ", 2)[-1])
                if demo.audit.exists():
                    _say("\nIts audit log (a service's is /var/log/lxc-notify/audit.log):")
                    for line in demo.audit.read_text().splitlines():
                        _say("  " + line)
        _say("\nDemo " + ("passed." if demo.failures == 0 else f"FAILED ({demo.failures})."))
        return 0 if demo.failures == 0 else 1
