"""Whisper-style log-mel features, offline and incremental.

Offline features are exactly `WhisperFeatureExtractor` (its torch path): a
centred STFT (n_fft 400, hop 160, reflect padding, last frame dropped, so N
samples give N // 160 frames), 128 mel bins, log10, a floor 8 below the
clip's maximum, then (x + 4) / 4.

Streaming differs in one documented way, the floor. Offline uses the maximum
of the whole clip, which a live stream does not know yet. `StreamingMel` uses
the running maximum over the frames computed so far (the new frames included)
and never revisits a frame once emitted, so encoder caches stay valid. A frame
therefore differs from offline only where its log-mel value is below
`clip_max - 8` (offline clamps it up to that floor) and the running maximum
was still lower than the clip maximum when it was computed; everywhere else
it is identical. In speech the loudest frames come early, so the difference
is confined to near-silent frames at the start of a stream
(tests/test_features.py measures it).

Frame i covers padded samples [160 i, 160 i + 400). It is emitted once those
samples exist (12.5 ms of look-ahead); `flush()` computes the last frames with
the right-hand reflect padding, as offline does at the end of a clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
PAD = N_FFT // 2
FRAMES_PER_S = SAMPLE_RATE // HOP
# Whisper's dynamic range: values more than 8 (log10 units) below the maximum are floored.
DYNAMIC_RANGE = 8.0


class MelFrontend:
    """Holds the mel filter bank; turns padded samples into log10 mel frames."""

    def __init__(self, mel_filters: np.ndarray) -> None:
        # mel_filters: [n_fft // 2 + 1, n_mels], as WhisperFeatureExtractor stores it.
        self.filters_t = torch.from_numpy(np.ascontiguousarray(mel_filters.T)).float()
        self.window = torch.hann_window(N_FFT)
        self.n_mels = mel_filters.shape[1]

    def log_mel(self, padded: np.ndarray) -> np.ndarray:
        """log10 mel of every full frame of `padded` (already reflect-padded), [n_mels, F]."""
        return self.log_mel_many([padded])[0]

    def log_mel_many(self, segments: list[np.ndarray]) -> list[np.ndarray]:
        """log_mel of several padded segments (e.g. of many streams) in one STFT call."""
        width = max(N_FFT, *(len(seg) for seg in segments))
        batch = np.zeros((len(segments), width), np.float32)
        for i, seg in enumerate(segments):
            batch[i, : len(seg)] = seg
        stft = torch.stft(torch.from_numpy(batch), N_FFT, HOP, window=self.window, center=False, return_complex=True)
        # |z|^2 as re^2 + im^2: Whisper's abs() ** 2 without the square root.
        mel = torch.clamp(self.filters_t @ torch.view_as_real(stft).pow(2).sum(-1), min=1e-10).log10().numpy()
        return [mel[i, :, : max(0, (len(seg) - N_FFT) // HOP + 1)] for i, seg in enumerate(segments)]

    def offline(self, samples: np.ndarray) -> np.ndarray:
        """Features of a whole clip, equal to WhisperFeatureExtractor's: [n_mels, N // 160]."""
        n_frames = len(samples) // HOP
        if len(samples) <= PAD:
            return np.zeros((self.n_mels, n_frames), np.float32)
        logmel = self.log_mel(np.pad(samples.astype(np.float32), (PAD, PAD), mode="reflect"))[:, :n_frames]
        return normalize(logmel, float(logmel.max()) if n_frames else 0.0)


def normalize(logmel: np.ndarray, running_max: float) -> np.ndarray:
    """Floor at running_max - 8 and rescale as Whisper does."""
    return ((np.maximum(logmel, running_max - DYNAMIC_RANGE) + 4.0) / 4.0).astype(np.float32)


@dataclass
class StreamingMel:
    """Incremental features of one stream; each frame is computed exactly once."""

    frontend: MelFrontend
    # Padded samples from the start of the next frame on (empty until the left
    # reflect padding can be built, which needs PAD + 1 samples).
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    # Raw samples received before the left padding could be built.
    head: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    n_samples: int = 0
    n_frames: int = 0
    running_max: float = -np.inf
    flushed: bool = False

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add samples; return the frames whose STFT window is now complete."""
        return self.emit(self.add(samples))

    def flush(self) -> np.ndarray:
        """End of stream: emit the remaining frames with right reflect padding."""
        return self.emit(self.end())

    def add(self, samples: np.ndarray) -> int:
        """Take samples in; return how many new frames are complete (not computed yet)."""
        if self.flushed:
            raise RuntimeError("StreamingMel.add after flush")
        self.n_samples += len(samples)
        if self.n_frames == 0 and len(self.tail) == 0:
            self.head = np.concatenate([self.head, samples.astype(np.float32)])
            if len(self.head) <= PAD:
                return 0
            left = self.head[1 : PAD + 1][::-1]
            self.tail, self.head = np.concatenate([left, self.head]), self.head[:0]
        else:
            self.tail = np.concatenate([self.tail, samples.astype(np.float32)])
        # Never emit beyond N // 160 frames: the frame after that exists only
        # in the centred STFT that Whisper drops.
        limit = self.n_samples // HOP - self.n_frames
        return max(0, min((len(self.tail) - N_FFT) // HOP + 1, limit))

    def end(self) -> int:
        """End of stream: pad the right edge; return how many frames remain."""
        self.flushed = True
        if len(self.tail) == 0:
            # The stream never reached PAD + 1 samples; as offline, too short to pad.
            return 0
        # tail holds the last >= 240 real samples, so the reflection is available.
        right = self.tail[-PAD - 1 : -1][::-1]
        self.tail = np.concatenate([self.tail, right])
        return self.n_samples // HOP - self.n_frames

    def segment(self, count: int) -> np.ndarray:
        """The padded samples under the next `count` frames."""
        return self.tail[: (count - 1) * HOP + N_FFT] if count > 0 else self.tail[:0]

    def emit(self, count: int, logmel: np.ndarray | None = None) -> np.ndarray:
        """Advance past `count` frames and return them normalised.

        `logmel` is their log-mel when already computed (batched over streams).
        """
        if count <= 0:
            return np.zeros((self.frontend.n_mels, 0), np.float32)
        if logmel is None:
            logmel = self.frontend.log_mel(self.segment(count))
        self.tail = self.tail[count * HOP :]
        self.n_frames += count
        self.running_max = max(self.running_max, float(logmel.max()))
        return normalize(logmel, self.running_max)
