"""vmcd's idle collections: young generations collected while nothing is open, never during."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from vmc import gc_pauses


@pytest.fixture
def manual_gc() -> Iterator[None]:
    """The automatic collections held off, so that the counts move only as the test says."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def young() -> int:
    return gc.get_count()[0]


def test_an_idle_tick_collects_the_young_generation(manual_gc: None) -> None:
    gc.collect(1)
    kept: list[dict[int, int]] = [{} for _ in range(gc_pauses.YOUNG_AT_IDLE * 4)]
    assert young() >= gc_pauses.YOUNG_AT_IDLE
    gc_pauses.collect_while_idle(busy=False)
    assert young() < gc_pauses.YOUNG_AT_IDLE
    assert len(kept) == gc_pauses.YOUNG_AT_IDLE * 4


def test_a_busy_tick_collects_nothing(manual_gc: None) -> None:
    gc.collect(1)
    kept: list[dict[int, int]] = [{} for _ in range(gc_pauses.YOUNG_AT_IDLE * 4)]
    before = gc.get_count()
    gc_pauses.collect_while_idle(busy=True)
    assert gc.get_count() == before
    assert kept


def test_a_few_young_objects_are_left_for_later(manual_gc: None) -> None:
    gc.collect(1)
    before = gc.get_count()
    gc_pauses.collect_while_idle(busy=False)
    assert gc.get_count() == before


def test_taking_over_freezes_start_up_and_raises_the_automatic_limit() -> None:
    threshold = gc.get_threshold()
    try:
        gc_pauses.take_over()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (gc_pauses.YOUNG_LIMIT, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_the_middle_generation_goes_once_enough_young_collections_came(manual_gc: None) -> None:
    gc.collect(1)
    for _ in range(gc_pauses.MIDDLE_AT_IDLE):
        gc.collect(0)
    assert gc.get_count()[1] >= gc_pauses.MIDDLE_AT_IDLE
    gc_pauses.collect_while_idle(busy=False)
    assert gc.get_count()[1] == 0
