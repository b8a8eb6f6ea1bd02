"""Arithmetic of the audio encoder's time grid (pure functions).

The encoder cuts the mel spectrogram (100 frames per second) into chunks of
`2 * n_window` frames, downsamples each chunk 8x with three stride-2
convolutions (a 100-frame chunk gives 13 tokens), and attends within windows
of `n_window_infer` frames. Token k of a chunk is centred on mel frame 8 k of
that chunk. Everything a stream's state stores about audio is in mel frames;
these helpers turn frames into token counts and token indices into seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.features import FRAMES_PER_S

CONV_STRIDE = 8


def conv_tokens(n_frames: int) -> int:
    """Tokens the conv stack makes from one chunk of `n_frames` (<= chunk) frames."""
    if n_frames <= 0:
        return 0
    for _ in range(3):
        n_frames = (n_frames - 1) // 2 + 1
    return n_frames


@dataclass(frozen=True)
class AudioGrid:
    """Chunk and window sizes of one encoder, in mel frames."""

    chunk_frames: int
    window_frames: int

    @classmethod
    def from_spec(cls, n_window: int, n_window_infer: int) -> AudioGrid:
        chunk = 2 * n_window
        if n_window_infer % chunk:
            raise ValueError(f"n_window_infer {n_window_infer} is not a multiple of the chunk {chunk}")
        return cls(chunk_frames=chunk, window_frames=n_window_infer)

    @property
    def tokens_per_chunk(self) -> int:
        return conv_tokens(self.chunk_frames)

    @property
    def tokens_per_window(self) -> int:
        return self.tokens_per_chunk * (self.window_frames // self.chunk_frames)

    @property
    def window_s(self) -> float:
        return self.window_frames / FRAMES_PER_S

    def tokens(self, n_frames: int) -> int:
        """Audio tokens of `n_frames` mel frames that start on a chunk boundary."""
        full, rest = divmod(n_frames, self.chunk_frames)
        return full * self.tokens_per_chunk + conv_tokens(rest)

    def token_time(self, index: float) -> float:
        """Seconds from the start of the audio to the centre of token `index`."""
        chunk, within = divmod(index, self.tokens_per_chunk)
        return (chunk * self.chunk_frames + within * CONV_STRIDE) / FRAMES_PER_S

    def seconds_to_frames(self, seconds: float) -> int:
        return int(round(seconds * FRAMES_PER_S))
