"""The tiers select by marker: ``-m "not kernel"`` must not drop the unit tests too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def collected(marker: str, *options: str) -> list[str]:
    # A module that fails to import is its own tests' failure, not this one's:
    # collection goes on past it (status 1) and the selection is still checked.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "--continue-on-collection-errors", *options, "-m", marker, "tests"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    # 5: nothing selected, a valid answer for a tier that runs only when asked.
    assert result.returncode in (0, 1, 5), result.stdout[-3000:] + result.stderr
    return [line for line in result.stdout.splitlines()
            if "::" in line and not line.startswith("ERROR ")]


def test_not_kernel_and_not_lxc_selects_the_unit_tier_only() -> None:
    items = collected("not kernel and not lxc and not oci")
    assert any(item.startswith("tests/unit/") for item in items), items
    assert not [item for item in items
                if item.startswith(("tests/kernel/", "tests/lxc/", "tests/oci/"))]


def test_kernel_selects_the_kernel_tier_only() -> None:
    items = collected("kernel")
    assert items
    assert all(item.startswith("tests/kernel/") for item in items), items


def test_oci_selects_the_oci_tier_only() -> None:
    items = collected("oci")
    assert items
    assert all(item.startswith("tests/oci/") for item in items), items


def test_vm_tier_runs_only_when_asked() -> None:
    assert collected("vm") == []
    assert not [item for item in collected("not kernel and not lxc and not oci")
                if item.startswith("tests/vm/")]
    items = collected("vm", "--vm")
    assert items
    assert all(item.startswith("tests/vm/") for item in items), items
