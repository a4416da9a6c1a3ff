"""`kflow status` shows what a run cost against its budget."""

from __future__ import annotations

from kflow._progress import cost_line


def test_status_shows_cost_against_the_budget() -> None:
    assert (
        cost_line({"total_cost_usd": "0.5", "budget_limit_usd": None, "budget_remaining_usd": None})
        == "cost $0.5 (no budget)"
    )
    assert (
        cost_line({"total_cost_usd": "0.5", "budget_limit_usd": "2", "budget_remaining_usd": "1.5"})
        == "cost $0.5 of a $2 budget, $1.5 left"
    )
    over = cost_line(
        {"total_cost_usd": "2.5", "budget_limit_usd": "2", "budget_remaining_usd": "-0.5"}
    )
    assert over == "cost $2.5 of a $2 budget: [red]over by $0.5[/]"
