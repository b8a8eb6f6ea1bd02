"""Client PCM to 16 kHz float32 for one socket: decode, resample (streaming), validate."""

from __future__ import annotations

import numpy as np
import soxr

from engine.audio import decode_pcm, validate_chunk
from engine.features import SAMPLE_RATE


class AudioDecoder:
    """Stateful per socket: soxr's streaming resampler keeps the filter state between frames."""

    def __init__(self, sample_rate: int, encoding: str, max_chunk_s: float) -> None:
        self.encoding = encoding
        self.max_samples = int(max_chunk_s * SAMPLE_RATE)
        self._resampler = (
            None if sample_rate == SAMPLE_RATE else soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1, dtype="float32")
        )

    def decode(self, data: bytes) -> np.ndarray:
        """Float32 samples at 16 kHz (possibly empty while the resampler fills), or BadAudioError."""
        samples = decode_pcm(data, self.encoding)
        if self._resampler is not None:
            if samples.dtype == np.int16:
                samples = samples.astype(np.float32) / 32768.0
            samples = self._resampler.resample_chunk(samples.astype(np.float32))
        if len(samples) == 0:
            return samples.astype(np.float32)
        # validate_chunk scales int16 itself and skips the float checks it always passes (half the time per frame).
        return validate_chunk(samples, SAMPLE_RATE, self.max_samples)
