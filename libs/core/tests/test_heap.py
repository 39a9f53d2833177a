"""Freezing start-up objects: garbage is collected first, everything alive is frozen."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from sous_core.heap import freeze_startup_objects


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_live_objects_are_frozen_and_garbage_is_collected_first() -> None:
    alive = Node()
    cycle_a, cycle_b = Node(), Node()
    cycle_a.other, cycle_b.other = cycle_b, cycle_a  # garbage only a collection finds
    garbage = weakref.ref(cycle_a)
    del cycle_a, cycle_b
    assert gc.get_freeze_count() == 0

    frozen = freeze_startup_objects()

    # Frozen objects may be freed afterwards (by another thread too), never added to.
    assert 0 < gc.get_freeze_count() <= frozen
    assert garbage() is None, "start-up garbage was frozen instead of collected"
    # What is alive now sits in the permanent generation, out of every collection's walk.
    assert not any(candidate is alive for candidate in gc.get_objects(generation=2))
