"""The README's two commands and the project's own tests, inside stock Debian 12 and 13.

One boot per image: the tree (tracked files, and new ones not ignored) is
copied in as a newcomer's checkout, and the README's commands run there as
root: ``./demo.sh`` (setup.sh, then the demo) and ``./test.sh`` with the
kernel tier (each feature where the kernel has it, its fallback where not:
tests.conftest.kernel_has_since), the handler modules of tests/lxc, Docker
inside a supervised Debian container (test_docker.py, its root filesystem
shared in from this host's cache, unconfined as nesting needs) and the podman
test of tests/oci: about 20 minutes a guest under QEMU's TCG (the unit tier,
which needs no kernel of its own, and the rest of the host tier run on this
host).
The guests have no network: pip finds the project's pinned wheels in a
shared directory (PIP_NO_INDEX, PIP_FIND_LINKS), apt needs nothing (the images
carry setup.sh's packages).
CI=true makes a missing prerequisite fail, and every container runs under
LXC's ``generated`` AppArmor profile, as Debian confines containers.
The stock kernel, systemd's cgroup v2 and lxcfs are the guest's.  What the
kernel has is asked the way the daemon asks it (``lxc-notify features``),
and the answers are checked against what each kernel is known to have: the
probes must be right where the code does not look at versions.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lxc.test_docker import rootfs_tar
from tests.vm.conftest import SUMMARY
from tests.vm.image import REPO, SUITES
from tests.vm.runner import VMResult, run_in_vm, wheels

# The handler tests of tests/lxc: each handler's real test, as the host tier runs it.
MODULES = ("tests/kernel", "tests/lxc/test_mknod.py", "tests/lxc/test_setxattr.py",
           "tests/lxc/test_sysinfo.py", "tests/lxc/test_sched.py", "tests/lxc/test_mount.py",
           "tests/lxc/test_caller_context.py", "tests/lxc/test_docker.py",
           "tests/oci/test_podman.py")

SCRIPT = r"""
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
fact() { printf 'fact %s %s\n' "$1" "$2"; }
export PIP_NO_INDEX=1 PIP_FIND_LINKS=/mnt/wheels
cp -a /mnt/src /root/lxc-notify-plugin && cd /root/lxc-notify-plugin
# Docker's Debian root filesystem, as this host's run of test_docker.py cached it (the
# guest has no network for debootstrap): read in place from the share.
mkdir -p /var/cache/lxc-notify-tests
ln -s /mnt/dockercache/docker-*.tar /var/cache/lxc-notify-tests/
./demo.sh > /mnt/share/demo.txt 2>&1
fact demo $?
.venv/bin/lxc-notify features > /mnt/share/features.txt 2>&1
fact features $?
LXC_NOTIFY_SANDBOX_APPARMOR=generated timeout 2400 ./test.sh -p no:cacheprovider -q -rfEs \
    --junitxml=/mnt/share/junit.xml @MODULES@ > /mnt/share/pytest.txt 2>&1
fact pytest $?
exit 0
"""

# What each stock kernel has, from its release notes: the probes must agree.
KNOWN = {
    "bookworm": {"new-mount-api": "yes", "mount_setattr": "yes", "openat2": "yes",
                 "statx-mount-root": "yes", "statx-unique-mount-id": "no",
                 "time-namespace": "yes", "seccomp-wait-killable-recv": "yes"},
    "trixie": {"new-mount-api": "yes", "mount_setattr": "yes", "openat2": "yes",
               "statx-mount-root": "yes", "statx-unique-mount-id": "yes",
               "time-namespace": "yes", "seccomp-wait-killable-recv": "yes"},
}


def extras_for_tests() -> list[str]:
    """setup.cfg's test extra, as setup.sh installs it (`pip install -e ".[test]"`)."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return [line.strip() for line in cfg["options.extras_require"]["test"].splitlines()
            if line.strip()]


def source_tree(into: Path) -> Path:
    """The checkout's tracked files and its new, unignored ones (no venv, no caches)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], check=True, capture_output=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


@dataclass(frozen=True)
class GuestRun:
    suite: str
    result: VMResult
    share: Path

    def fact(self, name: str) -> str:
        for line in self.result.stdout.splitlines():
            if line.startswith(f"fact {name} "):
                return line.split(" ", 2)[2]
        raise AssertionError(f"{self.suite}: the script never reported {name}\n"
                             f"stderr:\n{self.result.stderr[-3000:]}")

    def text(self, name: str) -> str:
        path = self.share / name
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module", params=sorted(SUITES))
def guest(request: pytest.FixtureRequest, vm_image: object,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestRun]:
    suite = request.param
    img = vm_image(suite)  # type: ignore[operator]
    src = source_tree(tmp_path_factory.mktemp(f"src-{suite}"))
    docker_rootfs = rootfs_tar()  # made here if this host's tier has not made it yet
    share = tmp_path_factory.mktemp(f"vm-handlers-{suite}")
    result = run_in_vm(img, SCRIPT.replace("@MODULES@", " ".join(MODULES)), share, 3000,
                       shares={"wheels": wheels(img.suite.python, extras_for_tests()), "src": src,
                               "dockercache": docker_rootfs.parent},
                       env={"CI": "true"})
    SUMMARY.append(f"{suite}: handler tests: boot to script {result.boot_seconds:.1f} s, "
                   f"QEMU {result.total_seconds:.1f} s")
    yield GuestRun(suite, result, share)


def test_the_readme_demo_runs(guest: GuestRun) -> None:
    demo = guest.text("demo.txt")
    assert guest.fact("demo") == "0", demo[-4000:]
    assert "setup: ready" in demo, demo[-4000:]
    # The demo's own verdict: each allowed node made through the plugin, each
    # forbidden one refused, as it expected.
    assert "Demo passed." in demo, demo[-4000:]


def test_feature_probes_match_the_kernel(guest: GuestRun) -> None:
    assert guest.fact("features") == "0", guest.text("features.txt")
    found = {}
    for line in guest.text("features.txt").splitlines()[1:]:
        name, answer = line.split()[:2]
        found[name] = answer
    expected = KNOWN[guest.suite]
    assert {name: found.get(name) for name in expected} == expected, guest.text("features.txt")


def test_handler_tests_pass_under_apparmor(guest: GuestRun) -> None:
    junit = guest.share / "junit.xml"
    assert junit.exists(), f"pytest wrote no report:\n{guest.text('pytest.txt')[-5000:]}"
    suite = ElementTree.parse(junit).getroot()
    if suite.tag == "testsuites":
        suite = suite[0]
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    SUMMARY.append(f"{guest.suite}: {counts['tests']} handler tests in the guest, "
                   f"{counts['failures']} failed, {counts['errors']} errors, "
                   f"{counts['skipped']} skipped, in {float(suite.get('time', '0')):.0f} s")
    bad = [f"{case.get('classname')}::{case.get('name')}: "
           f"{(outcome.get('message') or '')[:300]}"
           for case in suite.iter("testcase")
           for outcome in case if outcome.tag in ("failure", "error", "skipped")]
    assert counts["tests"] > 0 and not bad, "\n".join(bad) + "\n" + guest.text("pytest.txt")[-4000:]
    assert guest.fact("pytest") == "0", guest.text("pytest.txt")[-4000:]
