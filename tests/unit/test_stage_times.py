from __future__ import annotations

from datetime import UTC, datetime, timedelta

from leadstage_api.schemas import TransitionView
from leadstage_api.service import stage_times

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def move(to_stage: str, hours: int, from_stage: str | None = None) -> TransitionView:
    return TransitionView(
        from_stage=from_stage,
        to_stage=to_stage,
        kind="advanced",
        rule="r",
        source="s",
        event_id=f"e{hours}",
        event_type="t",
        occurred_at=T0 + timedelta(hours=hours),
    )


def test_every_visit_counts_and_the_current_one_runs_until_now() -> None:
    history = [move("Awareness", 0), move("Action", 2), move("Lost", 5), move("Action", 9)]
    times = {t.stage: t for t in stage_times(history, now=T0 + timedelta(hours=10))}
    assert times["Awareness"].cumulative_seconds == 2 * 3600
    assert times["Action"].cumulative_seconds == (3 + 1) * 3600  # 2h-5h, then 9h-now
    assert times["Action"].first_entered_at == T0 + timedelta(hours=2)
    assert times["Action"].last_exited_at is None  # there now
    assert times["Lost"].last_exited_at == T0 + timedelta(hours=9)
    assert list(times) == ["Awareness", "Action", "Lost"]


def test_no_history_no_times() -> None:
    assert stage_times([], now=T0) == []
