from pathlib import Path

import pytest

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
