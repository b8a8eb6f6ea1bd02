"""Alignment-heads files and defaults (no model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.heads import HEADS_FILE, default_heads, read_heads_file, resolve_heads, write_heads_file
from engine.loader import ModelSpec

SPEC = ModelSpec(
    n_layers=8, n_heads=4, n_kv_heads=2, head_dim=16, hidden=64, vocab_size=100, n_mels=128,
    n_window=50, n_window_infer=800, audio_token_id=5,
)


def test_default_is_the_third_quarter_of_layers() -> None:
    heads = default_heads(SPEC, max_heads=100)
    assert {layer for layer, _ in heads} == {4, 5}
    assert default_heads(SPEC, max_heads=3) == [(4, 0), (4, 1), (4, 2)]


def test_file_round_trip_is_sorted_by_score(tmp_path: Path) -> None:
    path = tmp_path / HEADS_FILE
    write_heads_file(path, "m", [((1, 2), 0.5), ((7, 3), 0.9), ((0, 0), 0.1)], {"tolerance_s": 0.1})
    assert read_heads_file(path, SPEC) == [(7, 3), (1, 2), (0, 0)]
    heads, source = resolve_heads(None, tmp_path, SPEC, max_heads=2)
    assert heads == [(7, 3), (1, 2)] and source == str(path)
    assert resolve_heads(None, None, SPEC, 2) == (default_heads(SPEC, 2), "default")


def test_bad_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    write_heads_file(path, "m", [((9, 0), 0.5)], {})
    with pytest.raises(ValueError, match="outside"):
        read_heads_file(path, SPEC)
