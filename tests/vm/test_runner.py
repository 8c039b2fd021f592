"""The runner's own failure path: a guest that overruns is killed, and says where it was."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.vm.image import Image
from tests.vm.runner import VMError, run_in_vm


def test_hard_timeout_kills_qemu_and_reports_the_console(
        vm_image: Callable[[str], Image], tmp_path: Path) -> None:
    with pytest.raises(VMError) as caught:
        run_in_vm(vm_image("bookworm"), "sleep 1000\n", tmp_path, timeout=15)
    assert caught.value.what.startswith("hard timeout: QEMU killed after 15 s")
    assert "Linux version 6.1." in caught.value.console  # the guest's kernel had started
    assert "--- serial console, last" in str(caught.value)
    assert not (tmp_path / ".vm/status").exists()
