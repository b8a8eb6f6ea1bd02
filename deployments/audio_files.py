"""Uploaded audio files to 16 kHz mono float32, decoded by FFmpeg through PyAV.

The container is recognised from its first bytes and FFmpeg is told which
demuxer to use, so it never probes: probing would also try demuxers such as
hls or concat, which open the other files or URLs a crafted upload names.
Channels are averaged and the rate converted with soxr, as POST
/v1/transcribe does, so a 16 kHz PCM wav gives exactly the samples
soundfile reads.
"""

from __future__ import annotations

from typing import BinaryIO

import av
import numpy as np

from deployments.protocol import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from engine.audio import resample
from engine.errors import BadAudioError


class UnsupportedFormat(BadAudioError):
    """Not a container this service decodes (HTTP 415)."""

    code = "unsupported_format"


# FFmpeg demuxer by leading bytes; mp3 (ID3 tag or a bare frame) is checked last.
_MAGIC: tuple[tuple[str, int, bytes, str], ...] = (
    # (name, offset, bytes, demuxer)
    ("wav", 8, b"WAVE", "wav"),
    ("flac", 0, b"fLaC", "flac"),
    ("ogg", 0, b"OggS", "ogg"),
    ("webm", 0, b"\x1a\x45\xdf\xa3", "matroska"),  # EBML: webm and mkv
    ("mp4", 4, b"ftyp", "mov"),  # mp4, m4a
    ("mp3", 0, b"ID3", "mp3"),
)
SUPPORTED = ", ".join(name for name, *_ in _MAGIC)


def sniff_demuxer(head: bytes) -> str:
    """The FFmpeg demuxer for a file starting with `head`, or UnsupportedFormat."""
    for _, offset, magic, demuxer in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return demuxer
    # A bare MPEG audio frame: 11 sync bits, then a layer field that is not 00
    # (00 is AAC's ADTS header, which has the same sync word).
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
        return "mp3"
    raise UnsupportedFormat(f"the file is not audio in a supported format ({SUPPORTED})")


def decode_file(file: BinaryIO) -> np.ndarray:
    """A whole uploaded file as 16 kHz mono float32 in [-1, 1]; UnsupportedFormat or BadAudioError."""
    demuxer = sniff_demuxer(file.read(16))
    file.seek(0)
    try:
        with av.open(file, mode="r", format=demuxer) as container:
            if not container.streams.audio:
                raise BadAudioError("the file has no audio stream")
            samples, rate = _decode_stream(container, container.streams.audio[0])
    except av.FFmpegError as exc:
        raise BadAudioError(f"cannot decode the uploaded audio: {exc}") from exc
    if len(samples) == 0:
        raise BadAudioError("the uploaded audio is empty")
    return to_engine_audio(samples, rate)


def to_engine_audio(samples: np.ndarray, rate: int) -> np.ndarray:
    """A decoded file's mono samples as 16 kHz float32 in [-1, 1], or BadAudioError.

    The rate is bounded as the socket's `start.sample_rate` is: a header claiming 1 Hz
    would make 16000 samples of each one, so a few KB asked for hours of audio. NaN
    and inf are refused here because clipping keeps NaN and the model would hear it.
    """
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise BadAudioError(f"the file's sample rate {rate} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}]")
    if not np.isfinite(samples).all():
        raise BadAudioError("the uploaded audio contains NaN or infinite samples")
    return np.clip(resample(samples, rate), -1.0, 1.0)


def _decode_stream(container: av.container.InputContainer, stream: av.AudioStream) -> tuple[np.ndarray, int]:
    """Mono float32 at the stream's own rate (channels averaged), and that rate."""
    rate = stream.rate
    # Planar float at the stream's rate: to_ndarray() is then (channels, samples).
    resampler = av.AudioResampler(format="fltp", rate=rate)
    parts: list[np.ndarray] = []
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            parts.append(out.to_ndarray().mean(axis=0))
    for out in resampler.resample(None):  # flush the resampler's tail
        parts.append(out.to_ndarray().mean(axis=0))
    return (np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)), rate
