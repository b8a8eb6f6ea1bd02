"""What the ingest keeps per stream to re-home it and to resume a dropped socket.

Times: the session's own clock, seconds of 16 kHz audio received. A model
replica's stream (an "incarnation") starts at `offset_s` of that clock; its
word times are shifted by it. The replay buffer holds the audio after the
last committed word: on re-homing it is fed to a new incarnation whose
prompt context is the committed text, so words neither vanish nor repeat.
"""

from __future__ import annotations

import collections
import logging
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.features import SAMPLE_RATE

# "ray.serve": the logger Serve writes to each replica's log file.
log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class SessionWord:
    text: str
    start: float
    end: float

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "start": round(self.start, 3), "end": round(self.end, 3)}


class AudioLog:
    """Samples [start, end) of a session, kept as the chunks they arrived in.

    Appending and dropping from the front cost O(chunk), not O(log): a
    30 s log copied on every 100 ms frame cost more than the frame's whole
    path through the ingest.
    """

    def __init__(self) -> None:
        self._chunks: collections.deque[np.ndarray] = collections.deque()
        self.start = 0  # session sample index of the first kept sample
        self.end = 0

    def __len__(self) -> int:
        return self.end - self.start

    def append(self, samples: np.ndarray) -> None:
        if len(samples):
            self._chunks.append(samples)
            self.end += len(samples)

    def drop_before(self, index: int) -> None:
        """Forget samples before session sample `index`."""
        index = min(index, self.end)
        while self._chunks and self.start + len(self._chunks[0]) <= index:
            self.start += len(self._chunks.popleft())
        if self._chunks and index > self.start:
            self._chunks[0] = self._chunks[0][index - self.start :]
            self.start = index

    def read(self, begin: int, n: int) -> np.ndarray:
        """Samples [begin, begin + n) clipped to what is kept, as one array."""
        begin, stop = max(begin, self.start), min(begin + n, self.end)
        pieces, at = [], self.start
        for chunk in self._chunks:
            if at >= stop:
                break
            if at + len(chunk) > begin:
                pieces.append(chunk[max(0, begin - at) : stop - at])
            at += len(chunk)
        if not pieces:
            return np.zeros(0, np.float32)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


@dataclass
class Session:
    """One client stream as the ingest sees it (plain state; the ingest drives it)."""

    language: str | None
    max_replay_s: float
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    resume_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # Every committed word, session times; `delivered` of them reached the client.
    words: list[SessionWord] = field(default_factory=list)
    delivered: int = 0
    detected_language: str | None = None
    # Session time up to which the model had audio when it committed the latest words.
    transcribed_s: float = 0.0
    # Audio after the last committed word: samples [replay.start, received) of the session.
    replay: AudioLog = field(default_factory=AudioLog)
    received: int = 0
    # Samples of the session the current incarnation has accepted (it starts at `offset`).
    sent: int = 0
    # Samples some incarnation has accepted: replayed audio does not count as pending.
    accepted: int = 0
    offset: int = 0
    incarnation: int = 0
    # The client sent `end`; `finished` once the final words are in.
    ended: bool = False
    finished: bool = False
    rehomes: int = 0
    # Text the client gave to guide the transcript (OpenAI's `prompt`); it leads
    # every incarnation's context, before the committed text.
    prompt: str = ""

    @property
    def stream_key(self) -> str:
        """The engine stream id (and router session key) of the current incarnation."""
        return f"{self.session_id}.{self.incarnation}"

    @property
    def replay_start(self) -> int:
        return self.replay.start

    @property
    def pending_s(self) -> float:
        """Audio received that no model replica has accepted yet (the backpressure measure)."""
        return (self.received - self.accepted) / SAMPLE_RATE

    def add_audio(self, samples: np.ndarray) -> None:
        self.replay.append(samples)
        self.received += len(samples)
        excess = len(self.replay) - int(self.max_replay_s * SAMPLE_RATE)
        if excess > 0:
            # The engine force-trims such a buffer too; replaying more would only repeat that.
            log.warning("session %s: %.1f s without a committed word, replay buffer trimmed",
                        self.session_id, excess / SAMPLE_RATE)
            self.replay.drop_before(self.replay.start + excess)
            self.sent = max(self.sent, self.replay_start)
            self.accepted = max(self.accepted, self.sent)

    def unsent(self, max_samples: int) -> np.ndarray:
        """The next audio to send to the current incarnation."""
        return self.replay.read(self.sent, max_samples)

    def mark_sent(self, n: int) -> None:
        self.sent += n
        self.accepted = max(self.accepted, self.sent)

    def add_words(self, words: list[dict[str, Any]], language: str | None, emitted_at: float) -> list[SessionWord]:
        """Words of the current incarnation (its times) -> session words; advances the replay cut."""
        shift = self.offset / SAMPLE_RATE
        self.transcribed_s = max(self.transcribed_s, emitted_at + shift)
        new = [SessionWord(w["text"], w["start"] + shift, w["end"] + shift) for w in words]
        self.words.extend(new)
        self.detected_language = language or self.detected_language
        if new:
            cut = min(int(round(new[-1].end * SAMPLE_RATE)), self.sent)
            self.replay.drop_before(cut)
        return new

    def undelivered(self) -> list[SessionWord]:
        words = self.words[self.delivered :]
        self.delivered = len(self.words)
        return words

    def rehome(self) -> None:
        """Start a new incarnation: replay everything after the last committed word."""
        self.incarnation += 1
        self.rehomes += 1
        self.offset = self.sent = self.replay_start
        log.info("session %s: re-homing as %s, replaying %.2f s after %d committed words",
                 self.session_id, self.stream_key, len(self.replay) / SAMPLE_RATE, len(self.words))

    def context(self) -> str:
        """The client's prompt, then the committed text: an incarnation's context (the engine keeps its tail)."""
        return " ".join(t for t in (self.prompt.strip(), " ".join(w.text for w in self.words[-64:])) if t)

    def language_hint(self) -> str | None:
        """A re-homed stream keeps the language already detected."""
        return self.language or self.detected_language
