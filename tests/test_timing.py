"""Encoder time-grid arithmetic against qwen-asr's own length formula."""

from __future__ import annotations

import pytest
import torch
from qwen_asr.core.transformers_backend.processing_qwen3_asr import _get_feat_extract_output_lengths

from engine.timing import AudioGrid

GRID = AudioGrid.from_spec(n_window=50, n_window_infer=800)


@pytest.mark.parametrize("frames", [1, 7, 99, 100, 101, 799, 800, 801, 1234, 5000])
def test_tokens_match_qwen_formula(frames: int) -> None:
    assert GRID.tokens(frames) == int(_get_feat_extract_output_lengths(torch.tensor(frames)))


def test_window_sizes() -> None:
    assert GRID.tokens_per_chunk == 13
    assert GRID.tokens_per_window == 104
    assert GRID.window_s == 8.0


def test_token_time() -> None:
    assert GRID.token_time(0) == 0.0
    assert GRID.token_time(1) == pytest.approx(0.08)
    assert GRID.token_time(13) == pytest.approx(1.0)  # first token of the second chunk
    assert GRID.token_time(104 + 13 * 2 + 5) == pytest.approx(8.0 + 2.0 + 0.4)


def test_window_must_hold_whole_chunks() -> None:
    with pytest.raises(ValueError):
        AudioGrid.from_spec(n_window=50, n_window_infer=750)
