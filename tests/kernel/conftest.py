import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxc_notify_plugin.caller.actor import Actor
from lxc_notify_plugin.host.cgroups import procs_files_by_hierarchy
from tests.conftest import require_root

KERNEL_TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees every item of the session, not only this folder's.
    for item in items:
        if KERNEL_TESTS in item.path.resolve().parents:
            item.add_marker(pytest.mark.kernel)


@pytest.fixture
def actor() -> Iterator[Actor]:
    """An actor in this process's own cgroups."""
    with open("/proc/self/cgroup", "rb") as cgroup, open("/proc/self/mountinfo") as mounts:
        files = procs_files_by_hierarchy(cgroup.read(), mounts.read())
    made = Actor(files, os.getpid())
    try:
        yield made
    finally:
        made.close()


def holds(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has an fd of ``path`` open."""
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            if os.readlink(f"{fd_dir}/{name}") == str(path):
                return True
        except FileNotFoundError:
            continue  # closed while we looked
    return False
