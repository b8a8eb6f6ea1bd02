"""What a scheduler step publishes: plain dataclasses, no tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.transcript import Word


@dataclass(frozen=True)
class WordsEvent:
    """Newly committed words; `emitted_at` is the stream time (s) of the audio seen.

    `utterance_end`: the speaker paused after the last of them (an endpoint).
    """

    stream_id: str
    words: list[Word]
    emitted_at: float
    language: str | None
    utterance_end: bool = False


@dataclass(frozen=True)
class PartialEvent:
    """The current uncommitted tail (may change or vanish)."""

    stream_id: str
    text: str


@dataclass(frozen=True)
class FinalEvent:
    """The stream ended; `words` are the last ones committed while flushing."""

    stream_id: str
    words: list[Word]
    emitted_at: float
    language: str | None


@dataclass(frozen=True)
class ErrorEvent:
    """The stream failed and was closed."""

    stream_id: str
    code: str
    message: str


Event = WordsEvent | PartialEvent | FinalEvent | ErrorEvent


@dataclass
class StepStats:
    """Figures of one engine iteration (one forward), for metrics and benchmarks."""

    batch: int = 0  # rows in the forward
    new_rows: int = 0  # of them, streams whose step starts here (a prefill)
    steps: int = 0  # stream steps that ended here
    audio_s: float = 0.0  # new audio the new rows decode, summed over rows
    encode_s: float = 0.0
    # The forward's time, split between prefill and decoded tokens by token share.
    prefill_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0
    forwards: int = 0
    prefill_tokens: int = 0  # prompt positions computed (not reused) by the new rows
    tokens: int = 0  # transcript tokens committed
    stops: dict[str, int] = field(default_factory=dict)
    forced_trims: int = 0


@dataclass
class StepResult:
    events: list[Event] = field(default_factory=list)
    stats: StepStats = field(default_factory=StepStats)
