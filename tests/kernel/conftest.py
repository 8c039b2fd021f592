import pytest

from tests.conftest import require_root


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.kernel)
