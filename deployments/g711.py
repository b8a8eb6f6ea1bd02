"""G.711 telephony audio (8 kHz, one byte a sample) to 16-bit PCM, with FFmpeg's decoders (PyAV).

Realtime clients bridging phone calls send μ-law or A-law (OpenAI's
`audio/pcmu`, `audio/pcma`); the rest of the path takes PCM16.
"""

from __future__ import annotations

import av
import numpy as np

G711_RATE = 8_000
_CODECS = {"ulaw": "pcm_mulaw", "alaw": "pcm_alaw"}


class G711Decoder:
    """Stateless per byte, but one codec context per socket avoids re-creating it per append."""

    def __init__(self, law: str) -> None:
        self._codec = av.CodecContext.create(_CODECS[law], "r")
        self._codec.sample_rate = G711_RATE
        self._codec.layout = "mono"

    def decode(self, data: bytes) -> bytes:
        """Little-endian PCM16 bytes, two for each input byte."""
        if not data:
            return b""
        frames = self._codec.decode(av.Packet(data))
        return b"".join(frame.to_ndarray().astype("<i2").tobytes() for frame in frames)


def encode_g711(pcm16: np.ndarray, law: str) -> bytes:
    """16-bit samples at 8 kHz as G.711 bytes (FFmpeg's encoder; for tests and tools)."""
    codec = av.CodecContext.create(_CODECS[law], "w")
    codec.sample_rate, codec.layout, codec.format = G711_RATE, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(pcm16.astype(np.int16)[None, :], format="s16", layout="mono")
    frame.sample_rate = G711_RATE
    return b"".join(bytes(packet) for packet in [*codec.encode(frame), *codec.encode(None)])
