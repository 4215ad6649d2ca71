"""A WebSocket client's frame budget (gateway/proxy/wsbudget.py)."""

from __future__ import annotations

import pytest

from gateway.proxy.wsbudget import REFILL_SLICE, FrameBudget


def test_a_burst_at_once_then_the_rate() -> None:
    budget = FrameBudget(200, 200, now=0.0)
    assert budget.available(0.0) == 200
    budget.spend(200)
    assert budget.available(0.0) == 0
    assert budget.available(0.5) == 100  # refilled at 200 a second
    budget.spend(100)
    assert budget.available(100.0) == 200  # never past the burst


def test_the_wait_is_for_a_batch_not_one_frame() -> None:
    """One timer per batch of frames: waking for each frame would cost more than it."""
    budget = FrameBudget(2000, 2000, now=0.0)
    budget.spend(budget.available(0.0))
    assert budget.wait() == pytest.approx(REFILL_SLICE)
    assert budget.available(REFILL_SLICE) == round(2000 * REFILL_SLICE)
    small = FrameBudget(2000, 10, now=0.0)  # a batch is at most the burst
    small.spend(small.available(0.0))
    assert small.wait() == pytest.approx(10 / 2000)


def test_nothing_to_wait_for_with_frames_left() -> None:
    budget = FrameBudget(100, 100, now=0.0)
    budget.spend(10)
    assert budget.wait() == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0, 10), (-1, 10), (10, 0)])
def test_a_budget_that_allows_nothing_is_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="positive rate"):
        FrameBudget(rate, burst, now=0.0)
