"""Validating and converting PCM before it reaches a stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.errors import BadAudioError
from engine.features import SAMPLE_RATE

ENCODINGS = {"pcm_s16le": np.dtype("<i2"), "pcm_f32le": np.dtype("<f4")}
# Float PCM is nominally within [-1, 1]; resamplers may overshoot a little.
_FLOAT_PEAK_LIMIT = 1.05


def validate_chunk(samples: object, sample_rate: int, max_samples: int) -> np.ndarray:
    """Float32 mono samples in [-1, 1] from int16 or float32 input, or BadAudioError."""
    if sample_rate != SAMPLE_RATE:
        raise BadAudioError(f"sample rate must be {SAMPLE_RATE} Hz at the engine, got {sample_rate}")
    if not isinstance(samples, np.ndarray):
        raise BadAudioError(f"samples must be a numpy array, got {type(samples).__name__}")
    if samples.ndim != 1:
        raise BadAudioError(f"samples must be mono (1-D), got shape {samples.shape}")
    if samples.size == 0:
        raise BadAudioError("empty audio chunk")
    if samples.size > max_samples:
        raise BadAudioError(
            f"audio chunk of {samples.size / SAMPLE_RATE:.1f} s exceeds the {max_samples / SAMPLE_RATE:.1f} s limit"
        )
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    if samples.dtype != np.float32:
        raise BadAudioError(f"samples must be int16 or float32, got {samples.dtype}")
    if not np.isfinite(samples).all():
        raise BadAudioError("audio contains NaN or infinite samples")
    peak = float(np.abs(samples).max())
    if peak > _FLOAT_PEAK_LIMIT:
        raise BadAudioError(f"float32 samples must lie within [-1, 1], peak is {peak:.3g}")
    return samples


def decode_pcm(data: bytes, encoding: str) -> np.ndarray:
    """Little-endian PCM bytes to a numpy array (int16 or float32), or BadAudioError."""
    if encoding not in ENCODINGS:
        raise BadAudioError(f"unknown encoding {encoding!r}")
    dtype = ENCODINGS[encoding]
    if len(data) % dtype.itemsize:
        raise BadAudioError(f"{encoding} payload of {len(data)} bytes is not a whole number of samples")
    return np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("="))


def resample(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Float32 samples at 16 kHz (soxr's high-quality band-limited resampler)."""
    if sample_rate == SAMPLE_RATE:
        return samples.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(samples.astype(np.float32), sample_rate, SAMPLE_RATE).astype(np.float32)


def read_audio_file(path: Path) -> np.ndarray:
    """A sound file as mono float32 at 16 kHz."""
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise BadAudioError(f"cannot read audio file {path}: {exc}") from exc
    return np.clip(resample(data.mean(axis=1), rate), -1.0, 1.0)
