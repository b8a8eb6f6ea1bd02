"""AlignAtt policy on synthetic attention (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.policy import PolicyConfig, Rows, Verdict, decide

CFG = PolicyConfig(border_s=0.4, rewind_s=1.0)


def rows(n, end, last, final=False, new_word=False, last_word=float("-inf"), same_token=False) -> Rows:
    full = lambda v, dtype=float: np.full(n, v, dtype)  # noqa: E731
    return Rows(audio_end_s=full(end), last_s=full(last), new_word=full(new_word, bool),
                last_word_s=full(last_word), same_token=full(same_token, bool), final=full(final, bool))


def run(head_times, end, last, final=False, cfg=CFG, **word):
    times = np.atleast_2d(np.asarray(head_times, dtype=float))
    verdict, attended = decide(times, rows(times.shape[0], end, last, final, **word), cfg)
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
    times = np.array([[1.0, 1.0], [4.9, 4.9], [0.2, 0.2], [2.0, 2.0]])
    state = Rows(
        audio_end_s=np.full(4, 5.0), last_s=np.array([0.5, 4.0, 3.0, 2.1]),
        new_word=np.array([True, True, False, True]), last_word_s=np.array([0.5, 4.0, 3.0, 2.1]),
        same_token=np.zeros(4, bool), final=np.zeros(4, bool),
    )
    verdict, _ = decide(times, state, CFG)
    assert [Verdict(v) for v in verdict] == [Verdict.CONTINUE, Verdict.BORDER, Verdict.REWIND, Verdict.REPEAT]


def test_a_word_never_starts_before_the_last_committed_word() -> None:
    """The committed timeline only moves forward: "south the south" cannot happen."""
    # A new word looking earlier than the last word's start: repeat, even once the stream ended.
    assert run([1.2] * 3, end=5.0, last=2.1, new_word=True, last_word=2.0)[0] == [Verdict.REPEAT]
    assert run([1.2] * 3, end=5.0, last=2.1, final=True, new_word=True, last_word=2.0)[0] == [Verdict.REPEAT]
    # A token inside the word being written may look a little back.
    assert run([1.9] * 3, end=5.0, last=2.1, new_word=False, last_word=2.0)[0] == [Verdict.CONTINUE]
    # The same word again at the same place ("strong strong") is a repeat ...
    assert run([2.0] * 3, end=5.0, last=2.1, new_word=True, last_word=2.0, same_token=True)[0] == [Verdict.REPEAT]
    # ... also one grid step (40 ms) earlier, whatever the float rounding of the times ...
    assert run([2.76] * 3, end=5.0, last=2.8, new_word=True, last_word=2.8, same_token=True)[0] == [Verdict.REPEAT]
    # ... another short word starting on the same encoder token is not.
    assert run([2.0] * 3, end=5.0, last=2.1, new_word=True, last_word=2.0)[0] == [Verdict.CONTINUE]


def test_invalid_thresholds() -> None:
    with pytest.raises(ValueError):
        PolicyConfig(border_s=-0.1)
    with pytest.raises(ValueError):
        PolicyConfig(rewind_s=0.0)
