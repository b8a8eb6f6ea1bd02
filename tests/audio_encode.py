"""Encode test audio into the containers clients upload (PyAV, FFmpeg's encoders)."""

from __future__ import annotations

import io

import av
import numpy as np

# container -> (FFmpeg muxer, codec, sample rate the codec is given)
FORMATS: dict[str, tuple[str, str, int]] = {
    "wav": ("wav", "pcm_s16le", 16_000),
    "flac": ("flac", "flac", 16_000),
    "mp3": ("mp3", "libmp3lame", 16_000),
    "ogg": ("ogg", "libopus", 48_000),  # Opus runs at 48 kHz
    "webm": ("webm", "libopus", 48_000),
    "m4a": ("mp4", "aac", 16_000),
}


def encode(samples: np.ndarray, sample_rate: int, kind: str) -> bytes:
    """Mono float32 `samples` at `sample_rate` as a `kind` file (see FORMATS)."""
    muxer, codec, codec_rate = FORMATS[kind]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=muxer) as container:
        stream = container.add_stream(codec, rate=codec_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None, :], format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        resampler = av.AudioResampler(format=stream.codec_context.format, layout="mono", rate=codec_rate)
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(chunk):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()
