"""Issue 20, part 3: every notification gets an answer, and counts stay right under threads.

Each test here failed before its fix; fakes stand in for the kernel and the
runtimes (no privileges needed).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from tests.unit.test_dispatch import make_container


@pytest.fixture
def fine_switching() -> Iterator[None]:
    """Threads switch every microsecond, not every 5 ms: races show up in a short test."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


# --- 5: one lock per container ---------------------------------------------------------------

def test_each_container_has_its_own_lock() -> None:
    """A container's threads never wait for another container's (it was one class-wide lock)."""
    busy, other = make_container(), make_container()
    with busy._lock:
        thread = threading.Thread(target=other.add_connection, args=(1,))
        thread.start()
        thread.join(2.0)
        blocked = thread.is_alive()
    thread.join()
    assert not blocked and other.connections == 1 and busy.connections == 0
