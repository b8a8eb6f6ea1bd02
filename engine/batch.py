"""Messages between the scheduler and the model runner: plain arrays, no tensors.

    Scheduler.schedule() -> StepPlan -> ModelRunner.execute() -> RunnerOutput -> Scheduler.update()

The scheduler decides everything (which streams, which positions, which
audio); the runner only computes. One StepPlan is one decoder forward over
every row in flight, plus the audio encoding the new rows need first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class EncodeRequest:
    """Audio of one stream, from one of its encoder window boundaries on.

    The first `cached_chunks` chunks of `mel` have their conv outputs in the
    slot's chunk cache from an earlier call. slot -1: no slot, no caching.
    With a slot, the embeddings are written to the slot's audio from token
    `store_at` on.
    """

    mel: np.ndarray
    slot: int = -1
    cached_chunks: int = 0
    store_at: int = 0


@dataclass(frozen=True)
class AudioMove:
    """Audio tokens leave the front of a slot: drop `n_drop`, move the next `n_keep` to the front."""

    slot: int
    n_drop: int
    n_keep: int


@dataclass(frozen=True)
class ForwardBatch:
    """One decoder forward over B rows of different lengths; positions are per row.

    Row b computes positions [start[b], start[b] + lengths[b]) of its prompt
    from its ids, which are ids[offset_b : offset_b + lengths[b]] of the flat
    `ids` (rows in order); key/values of positions [0, start[b]) in its slot
    are valid and reused. Audio placeholders at positions
    [audio_pos[b], audio_pos[b] + n_audio[b]) take the slot's stored audio
    embeddings.
    """

    slots: np.ndarray  # int64[B]
    start: np.ndarray  # int64[B]
    lengths: np.ndarray  # int64[B], >= 1
    ids: np.ndarray  # int64[sum(lengths)]
    audio_pos: np.ndarray  # int64[B]
    n_audio: np.ndarray  # int64[B]

    @classmethod
    def of_rows(cls, slots: list[int], start: list[int], ids: list[list[int]], audio_pos: list[int],
                n_audio: list[int]) -> ForwardBatch:
        return cls(
            slots=np.asarray(slots, np.int64),
            start=np.asarray(start, np.int64),
            lengths=np.array([len(i) for i in ids], np.int64),
            ids=np.concatenate([np.asarray(i, np.int64) for i in ids]),
            audio_pos=np.asarray(audio_pos, np.int64),
            n_audio=np.asarray(n_audio, np.int64),
        )

    def __len__(self) -> int:
        return len(self.slots)


@dataclass(frozen=True)
class StepPlan:
    """What one engine iteration computes: apply `moves`, encode `encode`, then one forward over `forward`'s rows."""

    encode: list[EncodeRequest]
    forward: ForwardBatch | None
    moves: list[AudioMove] = field(default_factory=list)
    # Rows of `forward` that are a step's prefill (the first ones) and tokens they compute.
    prefill_rows: int = 0
    prefill_tokens: int = 0


@dataclass(frozen=True)
class RunnerOutput:
    """Greedy next token and alignment-head argmax per row of the forward, with timings."""

    tokens: np.ndarray  # int64[B]
    frames: np.ndarray  # int64[B, heads]: audio token index, relative to the row's audio_pos
    encode_s: float = 0.0
    forward_s: float = 0.0
