"""When pruning rounds happen and how much each removes, on plain numbers."""

from __future__ import annotations

import pytest

from core.stages.prune import PruneSchedule


@pytest.mark.parametrize("ratio, steps", [(0.5, 1), (0.5, 2), (0.7, 3), (0.3, 4)])
def test_rounds_compound_to_the_configured_ratio(ratio, steps):
    s = PruneSchedule(ratio, steps, epochs=12)
    kept = 1.0
    for i in range(steps):
        r = s.round_ratio(i)
        assert 0 < r < 1
        kept *= 1 - r
        assert kept == pytest.approx(1 - ratio * (i + 1) / steps)  # round i reaches ratio * (i+1)/steps
    assert kept == pytest.approx(1 - ratio)


def test_rounds_start_evenly_and_split_the_fine_tune_epochs():
    s = PruneSchedule(0.5, steps=3, epochs=7)
    assert s.starts == [0, 2, 5]
    assert [s.rounds_due(e) for e in range(7)] == [1, 1, 2, 2, 2, 3, 3]
    assert [s.phase_epochs(r) for r in (1, 2, 3)] == [2, 3, 2]
    assert sum(s.phase_epochs(r) for r in (1, 2, 3)) == 7
    one = PruneSchedule(0.5, steps=1, epochs=4)
    assert one.starts == [0] and one.phase_epochs(1) == 4
