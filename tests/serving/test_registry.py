"""The promotion rule: when a new version takes the champion alias, and the line that says why."""

from __future__ import annotations

import pytest

from sheldon.serving.registry import Margin, Rival, judge


def test_with_no_margin_any_gain_wins_and_a_tie_does_not():
    assert judge(0.951, 0.9, Rival(3, 0.95), Margin()) == (
        True,
        "champion: 0.9510 beats v3's 0.9500 by +0.0010 (rule: > the champion)",
    )
    assert judge(0.95, 0.9, Rival(3, 0.95), Margin()) == (
        False,
        "not champion: 0.9500 against v3's 0.9500 is +0.0000 (rule: > the champion)",
    )


@pytest.mark.parametrize(
    "challenger, promoted",
    [(0.969, False), (0.970, True), (0.971, True)],  # 0.970 - 0.965 equals the margin but for rounding
)
def test_an_absolute_margin_is_a_gain_of_at_least_that_much(challenger, promoted):
    wins, why = judge(challenger, 0.9, Rival(3, 0.965), Margin(absolute=0.005))
    assert wins is promoted
    assert why.startswith("champion: " if promoted else "not champion: ")
    assert why.endswith("(rule: >= +0.005 absolute)")


def test_a_relative_margin_is_a_share_of_the_champions_score_and_both_must_hold():
    margin = Margin(absolute=0.005, relative=0.02)  # of 0.8: +0.016, the larger
    assert judge(0.815, 0.5, Rival(1, 0.8), margin)[0] is False
    wins, why = judge(0.817, 0.5, Rival(1, 0.8), margin)
    assert (
        wins
        and why
        == "champion: 0.8170 beats v1's 0.8000 by +0.0170 (rule: >= +0.005 absolute and >= +2.00% relative)"
    )
    assert judge(0.5, 0.5, Rival(1, 0.49), Margin(relative=0.01))[0] is True  # +0.0049 needed, +0.01 got


def test_below_min_accuracy_never_wins_and_the_first_passing_version_does():
    assert judge(0.99, 0.995, Rival(1, 0.5), Margin()) == (
        False,
        "not champion: 0.9900 is below evaluate.min_accuracy=0.995",
    )
    assert judge(0.9, 0.5, None, Margin(absolute=0.5)) == (
        True,
        "champion, the first: 0.9000 passes evaluate.min_accuracy=0.5",
    )


def test_a_champion_registered_on_other_test_data_is_said_to_be():
    wins, why = judge(0.97, 0.5, Rival(2, 0.96, other_split="9f8e7d6c5b4a3f2e1d"), Margin())
    assert wins
    assert why.endswith(
        "(rule: > the champion); different test data: v2 was registered on split 9f8e7d6c5b4a, "
        "and scored again on this one"
    )
