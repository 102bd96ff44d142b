from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from leadstage.gc_tuning import YOUNG_THRESHOLD, tune_garbage_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    gc.unfreeze()
    _, older, oldest = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    tune_garbage_collector()
    assert gc.get_freeze_count() > 0  # the imported modules, at least
    assert gc.get_threshold() == (YOUNG_THRESHOLD, older, oldest)
    tune_garbage_collector(young_threshold=2_000)
    assert gc.get_threshold()[0] == 2_000
