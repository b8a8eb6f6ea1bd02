"""Per-stream state, owned by the scheduler, and its pure bookkeeping.

Audio is kept as mel frames (the buffer). The buffer always starts on an
encoder window boundary of the stream, so dropping whole windows from its
front keeps every cached window embedding valid (no cache reset on trim).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from engine.decode import RowStep
from engine.features import FRAMES_PER_S, StreamingMel
from engine.transcript import WordAssembler
from engine.vocab import TokenTable


class Status(Enum):
    OPEN = "open"
    ENDING = "ending"  # end() called: flush what is left, then finish
    DONE = "done"
    FAILED = "failed"


class Flush(Enum):
    """What a step's audio ends with."""

    NONE = "none"  # more audio follows: the policy applies
    UTTERANCE = "utterance"  # a pause follows: decode to the end, commit everything, go on
    STREAM = "stream"  # the stream ended: decode to the end and finish


@dataclass(frozen=True)
class Pause:
    """Markers between a stream's audio: the utterance ended, then `gap` samples were left out."""

    gap: int = 0


@dataclass
class Inbox:
    """Audio (and pauses) fed by other threads, not yet taken by a step."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    items: collections.deque[np.ndarray | Pause] = field(default_factory=collections.deque)
    samples: int = 0  # audio samples waiting
    pauses: int = 0  # pause markers waiting

    def put(self, samples: np.ndarray) -> None:
        with self.lock:
            self.items.append(samples)
            self.samples += len(samples)

    def put_pause(self, gap: int) -> None:
        """The utterance ended (gap 0), or `gap` samples were left out; adjacent pauses merge."""
        with self.lock:
            if self.items and isinstance(self.items[-1], Pause):
                self.items[-1] = Pause(self.items[-1].gap + gap)
            else:
                self.items.append(Pause(gap))
                self.pauses += 1

    def take_pause(self) -> Pause | None:
        """The pause at the head, if the oldest item is one."""
        with self.lock:
            if not self.items or not isinstance(self.items[0], Pause):
                return None
            self.pauses -= 1
            return self.items.popleft()

    def take(self, max_samples: int) -> tuple[np.ndarray, Pause | None]:
        """Up to `max_samples` of the oldest audio, stopping at a pause; the pause if it was reached."""
        with self.lock:
            pieces, taken = [], 0
            while self.items and isinstance(self.items[0], np.ndarray) and taken < max_samples:
                chunk = self.items.popleft()
                if taken + len(chunk) > max_samples:
                    cut = max_samples - taken
                    chunk, rest = chunk[:cut], chunk[cut:]
                    self.items.appendleft(rest)
                pieces.append(chunk)
                taken += len(chunk)
            self.samples -= taken
            pause = None
            if self.items and isinstance(self.items[0], Pause) and taken < max_samples:
                pause = self.items.popleft()
                self.pauses -= 1
        audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        return audio, pause


class MelBuffer:
    """Mel frames of a stream's buffer in a preallocated array (appends cost O(new))."""

    def __init__(self, n_mels: int, capacity: int) -> None:
        self._data = np.zeros((n_mels, capacity), np.float32)
        self.size = 0

    @property
    def frames(self) -> np.ndarray:
        """The buffered frames, [n_mels, size] (a view)."""
        return self._data[:, : self.size]

    def append(self, new: np.ndarray) -> None:
        end = self.size + new.shape[1]
        if end > self._data.shape[1]:
            raise ValueError(f"mel buffer overflow: {end} frames > capacity {self._data.shape[1]}")
        self._data[:, self.size : end] = new
        self.size = end

    def drop_front(self, n: int) -> None:
        self._data[:, : self.size - n] = self._data[:, n : self.size]
        self.size -= n


@dataclass
class StreamState:
    """Everything the scheduler knows about one stream."""

    stream_id: str
    slot: int
    mel: StreamingMel
    # Mel frames of the buffer; frame 0 is stream frame `buffer_start`.
    buffer: MelBuffer
    words: WordAssembler
    forced_language: str | None
    status: Status = Status.OPEN
    inbox: Inbox = field(default_factory=Inbox)
    buffer_start: int = 0
    # Encoder windows at the front of the buffer whose embeddings sit in the slot.
    cached_windows: int = 0
    # Complete 100-frame chunks of the next (unfinished) window whose conv outputs are cached.
    conv_chunks: int = 0
    # Buffer frames the last step decoded.
    decoded_frames: int = 0
    # Prompt positions whose key/values in the slot are valid for the next step.
    kv_reuse: int = 0
    # Assistant prefix: "language <Name><asr_text>" ids once the language is known.
    language: str | None = None
    lang_prefix: list[int] = field(default_factory=list)
    # Committed (token id, stream time) whose audio is in the buffer.
    committed: list[tuple[int, float]] = field(default_factory=list)
    # Earlier committed token ids, shown to the model as system-prompt context.
    context: list[int] = field(default_factory=list)
    # Where the last committed token looked; -inf before the first.
    last_s: float = float("-inf")
    # Audio up to here is transcribed (no uncommitted speech before it).
    consumed_s: float = 0.0
    # Stream time of the last committed token (silence detection), and of the audio since
    # then the seconds left out in pauses (a VAD gap is not silence the model heard).
    last_word_s: float = 0.0
    left_out_s: float = 0.0
    # Start and first token of the last committed word: a word never starts
    # again at or before it (the committed timeline only moves forward).
    last_word_start_s: float = float("-inf")
    last_word_token: int = -1
    # End of the last committed word (stream time), and where the buffer restarts
    # at the next step because the utterance ended (None: no restart due).
    last_word_end_s: float = float("-inf")
    restart_at_s: float | None = None
    # The partial caption last published (a new one goes out only when it differs).
    partial: str = ""
    # Stream samples so far: audio taken into the buffer plus audio left out in pauses.
    samples_seen: int = 0
    # Of the step in flight: what its audio ends with, and the pause to apply after it.
    flush: Flush = Flush.NONE
    pause: Pause | None = None
    # The step in flight (None between steps), and when the stream last entered one.
    step: RowStep | None = None
    last_step_at: float = 0.0

    @property
    def buffer_frames(self) -> int:
        return self.buffer.size

    @property
    def audio_start_s(self) -> float:
        return self.buffer_start / FRAMES_PER_S

    @property
    def audio_end_s(self) -> float:
        return (self.buffer_start + self.buffer_frames) / FRAMES_PER_S


def keep_from(committed: list[tuple[int, float]], boundary_s: float, table: TokenTable) -> int:
    """Index of the first committed token to keep when audio before `boundary_s` leaves the buffer.

    Tokens looking before the boundary go to context, except the word holding
    the last of them: its audio may straddle the boundary, and keeping its text
    stops the decoder from transcribing the left-over part again.
    """
    before = [i for i, (_, t) in enumerate(committed) if t < boundary_s]
    if not before:
        return 0
    index = before[-1]
    while index > 0 and not table.starts_word[committed[index][0]]:
        index -= 1
    return index
