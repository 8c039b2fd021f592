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
