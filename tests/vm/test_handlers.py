"""The README's two commands and the project's own tests, inside stock Debian 12 and 13.

The last part of each image's shared boot (tests/vm/boot.py): the tree (tracked
files, and new ones not ignored) is copied in as a newcomer's checkout, and the
README's commands run there as root: ``./demo.sh`` (setup.sh, then the demo)
and ``./test.sh`` with the kernel tier (each feature where the kernel has it,
its fallback where not: tests.conftest.kernel_has_since), the handler modules
of tests/lxc, Docker inside a supervised Debian container (test_docker.py, its
root filesystem from this host's cached tar as a read-only disk; unconfined, as nesting needs)
and the podman test of tests/oci: about 20 minutes a guest under QEMU's TCG
(the unit tier, which needs no kernel of its own, and the rest of the host tier
run on this host).
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
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

import pytest

from tests.lxc.test_docker import rootfs_tar
from tests.vm.boot import Part, PartResult
from tests.vm.conftest import SUMMARY, StockBoot
from tests.vm.image import REPO, SUITES
from tests.vm.runner import facts

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
# guest has no network for debootstrap): read in place from a read-only disk.
mkdir -p /var/cache/lxc-notify-tests
udevadm settle
ln -s /dev/disk/by-id/virtio-dockerrootfs /var/cache/lxc-notify-tests/@DOCKER_TAR@
SECONDS=0
./demo.sh > $SHARE/demo.txt 2>&1
fact demo $?
fact demo_seconds $SECONDS
.venv/bin/lxc-notify features > $SHARE/features.txt 2>&1
fact features $?
SECONDS=0
# UNDER_TCG: loops that hunt a race run fewer rounds (tests.conftest.rounds).
export LXC_NOTIFY_UNDER_TCG=1
LXC_NOTIFY_SANDBOX_APPARMOR=generated timeout 2400 ./test.sh -p no:cacheprovider -q -rfEs \
    --junitxml=$SHARE/junit.xml @MODULES@ > $SHARE/pytest.txt 2>&1
fact pytest $?
fact tests_seconds $SECONDS
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


def boot_part(tmp_path_factory: pytest.TempPathFactory) -> Part:
    docker_rootfs = rootfs_tar()  # made here if this host's tier has not made it yet
    script = SCRIPT.replace("@MODULES@", " ".join(MODULES))
    return Part("handlers", script.replace("@DOCKER_TAR@", docker_rootfs.name), timeout=2700,
                files={"dockerrootfs": docker_rootfs}, extras=extras_for_tests())


@dataclass(frozen=True)
class GuestRun:
    suite: str
    result: PartResult

    def fact(self, name: str) -> str:
        found = facts(self.result.stdout)
        if name not in found:
            raise AssertionError(f"{self.suite}: the script never reported {name}\n"
                                 f"stderr:\n{self.result.stderr[-3000:]}")
        return found[name]

    def text(self, name: str) -> str:
        return self.result.text(name)


@pytest.fixture(scope="module", params=sorted(SUITES))
def guest(request: pytest.FixtureRequest, stock_boot: StockBoot) -> GuestRun:
    result = stock_boot(request.param, "handlers")
    found = facts(result.stdout)
    SUMMARY.append(f"{request.param}: handler part {result.seconds} s: setup and demo "
                   f"{found.get('demo_seconds')} s, test.sh {found.get('tests_seconds')} s")
    return GuestRun(request.param, result)


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
    junit = guest.result.share / "junit.xml"
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
