"""Validation of client audio before it reaches a stream."""

from __future__ import annotations

import numpy as np
import pytest

from engine.audio import decode_pcm, validate_chunk
from engine.errors import BadAudioError

LIMIT = 16_000 * 30


def test_int16_is_scaled() -> None:
    out = validate_chunk(np.array([0, 16384, -32768], np.int16), 16_000, LIMIT)
    assert out.dtype == np.float32 and out.tolist() == [0.0, 0.5, -1.0]


@pytest.mark.parametrize(
    "samples, rate, message",
    [
        (np.array([0.1, np.nan], np.float32), 16_000, "NaN"),
        (np.array([0.1, np.inf], np.float32), 16_000, "NaN or infinite"),
        (np.array([0.1, 0.2]), 16_000, "int16 or float32"),
        (np.array([1, 2], np.int32), 16_000, "int16 or float32"),
        (np.zeros(10, np.float32), 44_100, "sample rate"),
        (np.zeros(0, np.float32), 16_000, "empty"),
        (np.zeros(LIMIT + 1, np.float32), 16_000, "exceeds"),
        (np.zeros((2, 10), np.float32), 16_000, "mono"),
        (np.array([3.0], np.float32), 16_000, "within"),
        ([0.1, 0.2], 16_000, "numpy array"),
    ],
)
def test_bad_chunks_raise(samples, rate: int, message: str) -> None:
    with pytest.raises(BadAudioError, match=message):
        validate_chunk(samples, rate, LIMIT)


def test_decode_pcm() -> None:
    assert decode_pcm(np.array([1, -2], "<i2").tobytes(), "pcm_s16le").tolist() == [1, -2]
    assert decode_pcm(np.array([0.5], "<f4").tobytes(), "pcm_f32le").tolist() == [0.5]
    with pytest.raises(BadAudioError, match="whole number"):
        decode_pcm(b"\x00\x01\x02", "pcm_s16le")
    with pytest.raises(BadAudioError, match="unknown encoding"):
        decode_pcm(b"", "mp3")
