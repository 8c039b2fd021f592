"""Shared test rules.

Under CI (CI=true) a missing prerequisite is a failure, never a skip: a suite
that skips its real tests proves nothing.  Elsewhere, a developer without
root or LXC can still run the unit tier.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")
# Set by the VM tier's guest script (tests/vm/test_handlers.py): the handler tests run
# there under QEMU's TCG, where one fork and exec costs ~40 ms against ~1 ms here.
UNDER_TCG = os.environ.get("LXC_NOTIFY_UNDER_TCG") == "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--vm", action="store_true",
                     help="also run the real-hosts tier (tests/vm): Debian VMs under QEMU, slow")


def require(condition: bool, what: str) -> None:
    """Fail under CI, skip elsewhere, when a prerequisite is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing under CI: {what}", pytrace=False)
    pytest.skip(f"prerequisite missing: {what}")


def require_root() -> None:
    require(os.geteuid() == 0, "root")


def require_tools(*tools: str) -> None:
    for tool in tools:
        require(shutil.which(tool) is not None, f"the {tool} command")


def kernel_has_since(major: int, minor: int) -> bool:
    """Whether this kernel is Linux MAJOR.MINOR or later.  For tests only: they
    check a feature where the kernel has it and its fallback where it does not,
    with the release that added it as the expectation; the code itself probes
    (lxc_notify_plugin/kernel/features.py) and never reads the version."""
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def rounds(native: int, under_tcg: int) -> int:
    """How often a loop that hunts a race runs: NATIVE times, or UNDER_TCG in the VM
    tier's guests.  Each caller chooses UNDER_TCG from how often the race it hunts was
    seen, so that the guest's count still meets it many times over."""
    return under_tcg if UNDER_TCG else native
