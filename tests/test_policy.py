"""AlignAtt policy on synthetic attention (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.policy import PolicyConfig, Verdict, decide

CFG = PolicyConfig(border_s=0.4, rewind_s=1.0)


def run(head_times, end, last, final=False, cfg=CFG):
    times = np.atleast_2d(np.asarray(head_times, dtype=float))
    n = times.shape[0]
    verdict, attended = decide(
        times, np.full(n, end, float), np.full(n, last, float), np.full(n, final), cfg
    )
    return [Verdict(v) for v in verdict], attended


def test_continue_far_from_border() -> None:
    verdict, attended = run([2.0, 2.1, 1.9], end=5.0, last=1.5)
    assert verdict == [Verdict.CONTINUE] and attended[0] == pytest.approx(2.0)


def test_border_uses_seconds_not_buffer_fraction() -> None:
    # 0.3 s from the end stops, whatever the buffer length (short or long).
    for end in (1.0, 30.0):
        assert run([end - 0.3] * 3, end=end, last=end - 1.0)[0] == [Verdict.BORDER]
        assert run([end - 0.6] * 3, end=end, last=end - 1.0)[0] == [Verdict.CONTINUE]


def test_final_is_plain_greedy() -> None:
    assert run([4.9] * 3, end=5.0, last=4.5, final=True)[0] == [Verdict.CONTINUE]
    assert run([1.0] * 3, end=5.0, last=2.5, final=True)[0] == [Verdict.CONTINUE]


def test_rewind_on_backward_jump() -> None:
    assert run([1.0] * 3, end=5.0, last=2.5)[0] == [Verdict.REWIND]
    assert run([1.8] * 3, end=5.0, last=2.5)[0] == [Verdict.CONTINUE]


def test_first_token_has_no_rewind() -> None:
    assert run([0.1] * 3, end=5.0, last=float("-inf"))[0] == [Verdict.CONTINUE]


def test_median_over_heads_ignores_an_outlier_head() -> None:
    # One head looks at the end of the audio, most look early: no border stop.
    assert run([1.0, 1.1, 4.95], end=5.0, last=0.5)[0] == [Verdict.CONTINUE]
    assert run([4.7, 4.8, 1.0], end=5.0, last=0.5)[0] == [Verdict.BORDER]


def test_vectorised_rows_are_independent() -> None:
    times = np.array([[1.0, 1.0], [4.9, 4.9], [0.2, 0.2]])
    verdict, _ = decide(
        times, np.array([5.0, 5.0, 5.0]), np.array([0.5, 4.0, 3.0]), np.array([False, False, False]), CFG
    )
    assert [Verdict(v) for v in verdict] == [Verdict.CONTINUE, Verdict.BORDER, Verdict.REWIND]


def test_invalid_thresholds() -> None:
    with pytest.raises(ValueError):
        PolicyConfig(border_s=-0.1)
    with pytest.raises(ValueError):
        PolicyConfig(rewind_s=0.0)
