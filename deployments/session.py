"""What the ingest keeps per stream to re-home it and to resume a dropped socket.

Times: the session's own clock, seconds of 16 kHz audio received. A model
replica's stream (an "incarnation") starts at `offset_s` of that clock; its
word times are shifted by it. The replay buffer holds the audio after the
last committed word: on re-homing it is fed to a new incarnation whose
prompt context is the committed text, so words neither vanish nor repeat.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import secrets
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.features import SAMPLE_RATE
from engine.stream import Pause
from engine.vad import Audio, Endpoint, GateState, Piece

# "ray.serve": the logger Serve writes to each replica's log file.
log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class SessionWord:
    text: str
    start: float
    end: float
    # The speaker paused after this word (an endpoint): it ends an utterance.
    utterance_end: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "start": round(self.start, 3), "end": round(self.end, 3)}
        if self.utterance_end:
            out["utterance_end"] = True
        return out


@dataclass(frozen=True)
class Outgoing:
    """The next part of a session for its model replica: audio, then a pause if one comes right after.

    pause: None, or the samples left out after the utterance ended (0 for
    the endpoint itself).
    """

    audio: np.ndarray
    pause: int | None = None

    def __bool__(self) -> bool:
        return len(self.audio) > 0 or self.pause is not None


class StreamLog:
    """Session samples [start, end): audio as it arrived, endpoints and gaps (left-out silence).

    Items are kept as they came: appending and dropping from the front cost
    O(item), not O(log) (copying a 30 s log on every 100 ms frame cost more
    than the frame's whole path through the ingest). An item is an audio
    array or a Pause (an endpoint, gap 0, or samples left out).
    """

    def __init__(self, start: int = 0) -> None:
        self._items: collections.deque[tuple[int, np.ndarray | Pause]] = collections.deque()
        self.start = start  # session sample index of the first kept sample
        self.end = start
        self.audio_samples = 0  # audio kept (the replay bound counts only audio)

    def append(self, piece: np.ndarray | Pause) -> None:
        size = _size(piece)
        if isinstance(piece, np.ndarray):
            if not size:
                return
            self.audio_samples += size
        self._items.append((self.end, piece))
        self.end += size

    def drop_before(self, index: int) -> None:
        """Forget everything before session sample `index` (an endpoint at `index` stays)."""
        index = min(index, self.end)
        while self._items:
            at, item = self._items[0]
            size = _size(item)
            if at + size <= index and not (size == 0 and at == index):
                self._items.popleft()
                if isinstance(item, np.ndarray):
                    self.audio_samples -= size
                continue
            if at < index:  # the item straddles `index`
                cut = index - at
                if isinstance(item, Pause):
                    self._items[0] = (index, Pause(item.gap - cut))
                else:
                    self._items[0] = (index, item[cut:])
                    self.audio_samples -= cut
            break
        self.start = max(self.start, index)

    def read(self, sent: int, max_samples: int, pause_sent: bool) -> Outgoing:
        """What follows session sample `sent`: audio (at most `max_samples`, up to the next pause), then that pause.

        pause_sent: the pause at `sent` was delivered already (an endpoint
        takes no samples, so the position alone cannot tell).
        """
        pieces, taken = [], 0
        for at, item in self._ending_from(sent):
            if isinstance(item, Pause):
                end = at + item.gap
                delivered = end < sent or (item.gap > 0 and end == sent) or (end == sent and pause_sent)
                if delivered:
                    continue
                return Outgoing(_joined(pieces), item.gap)
            if at + len(item) <= sent:
                continue
            piece = item[max(0, sent - at) :][: max_samples - taken]
            pieces.append(piece)
            taken += len(piece)
            if taken >= max_samples:
                break
        return Outgoing(_joined(pieces))

    def _ending_from(self, sent: int) -> list[tuple[int, np.ndarray | Pause]]:
        """The items that end at or after session sample `sent`, in order.

        Found from the tail: what is unsent is the last few items, while the
        log keeps every item back to the last committed word (read runs for
        every stream at every link tick).
        """
        tail = []
        for at, item in reversed(self._items):
            if at + _size(item) < sent:
                break
            tail.append((at, item))
        tail.reverse()
        return tail


def _size(item: np.ndarray | Pause) -> int:
    """Session samples an item covers: its audio, or the samples a pause leaves out (0 for an endpoint)."""
    return item.gap if isinstance(item, Pause) else len(item)


def _joined(pieces: list[np.ndarray]) -> np.ndarray:
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
    # Audio (and pauses) after the last committed word: samples [replay.start, received) of the session.
    replay: StreamLog = field(default_factory=StreamLog)
    received: int = 0
    # The pause at `sent` reached the current incarnation (a pause may take no samples).
    pause_sent: bool = False
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
    # The voice activity gate (None: every sample goes to the model), the audio
    # waiting for it, and whether it has let out everything after `end`.
    gate: GateState | None = None
    ungated: list[np.ndarray] = field(default_factory=list)
    gate_done: bool = False
    # Session samples the client was told it may forget (`ack`): their words are stored.
    acked: int = 0

    @classmethod
    def from_store(cls, session_id: str, token: str, language: str | None, max_replay_s: float,
                   words: list[SessionWord], client_has: int | None) -> Session:
        """A session continued on another ingest replica from its stored words.

        Its audio resumes at the end of the last stored word (where the replay
        buffer was cut, so everything before is transcribed and stored): the
        client re-sends from there. The incarnation number starts high, so its
        stream key cannot be one the lost ingest used (that stream may still
        be open on a model replica until its link times out).
        """
        position = int(round(words[-1].end * SAMPLE_RATE)) if words else 0
        return cls(
            language=language, max_replay_s=max_replay_s, session_id=session_id, resume_token=token,
            words=list(words), delivered=min(client_has or 0, len(words)), detected_language=language,
            transcribed_s=position / SAMPLE_RATE, replay=StreamLog(position), received=position, sent=position,
            accepted=position, offset=position, incarnation=1000 + secrets.randbelow(10**6), acked=position,
        )

    @property
    def ungated_samples(self) -> int:
        """Audio received that the voice activity gate has not scored yet."""
        return sum(len(s) for s in self.ungated)

    @property
    def held_s(self) -> float:
        """Session audio this ingest holds (received, gated or not): a resumed client sends what follows."""
        return (self.received + self.ungated_samples) / SAMPLE_RATE

    @property
    def gate_flushed(self) -> bool:
        """Everything received is in the log (the `end` may follow it)."""
        return self.gate is None or (self.gate_done and not self.ungated)

    def add_pieces(self, pieces: list[Piece]) -> None:
        """What the gate let out, in order."""
        for piece in pieces:
            if isinstance(piece, Audio):
                self.add_audio(piece.samples)
            elif isinstance(piece, Endpoint):
                self.add_pause(0)
            else:
                self.add_pause(piece.samples)

    @property
    def stream_key(self) -> str:
        """The engine stream id (and router session key) of the current incarnation.

        Interned, and held by the link while the stream is on it: the model
        replica's replies map stream keys to figures, and Ray's msgpack decoder
        interns map keys. Without a live interned copy every reply added a new
        entry to CPython's interned-string table and dropped it again (~100 a
        second at 16 streams); the table rebuilt itself every ~40 minutes, and
        a rebuild could grow the heap by the table's 7.5 MB (README, soak).
        """
        return sys.intern(f"{self.session_id}.{self.incarnation}")

    @property
    def replay_start(self) -> int:
        return self.replay.start

    @property
    def pending_s(self) -> float:
        """Audio received that no model replica has accepted yet (the backpressure measure)."""
        return (self.received - self.accepted + self.ungated_samples) / SAMPLE_RATE

    def add_audio(self, samples: np.ndarray) -> None:
        """Audio for the model (through the VAD gate, if any)."""
        self.replay.append(samples)
        self.received += len(samples)
        excess = self.replay.audio_samples - int(self.max_replay_s * SAMPLE_RATE)
        if excess > 0:
            # The engine force-trims such a buffer too; replaying more would only repeat that.
            log.warning("session %s: %.1f s without a committed word, replay buffer trimmed",
                        self.session_id, excess / SAMPLE_RATE)
            self.replay.drop_before(self.replay.start + excess)
            if self.sent < self.replay_start:
                self.sent, self.pause_sent = self.replay_start, False
            self.accepted = max(self.accepted, self.sent)

    def add_pause(self, gap: int) -> None:
        """The utterance ended here (gap 0), or `gap` samples of silence are left out."""
        self.replay.append(Pause(gap))
        self.received += gap

    def unsent(self, max_samples: int) -> Outgoing:
        """The next audio (and pause) to send to the current incarnation."""
        return self.replay.read(self.sent, max_samples, self.pause_sent)

    def mark_sent(self, out: Outgoing) -> None:
        self.sent += len(out.audio)
        if out.pause is not None:
            self.sent += out.pause
        self.pause_sent = out.pause is not None
        self.accepted = max(self.accepted, self.sent)

    def add_words(self, words: list[dict[str, Any]], language: str | None, emitted_at: float,
                  utterance_end: bool = False) -> list[SessionWord]:
        """Words of the current incarnation (its times) -> session words; advances the replay cut."""
        shift = self.offset / SAMPLE_RATE
        self.transcribed_s = max(self.transcribed_s, emitted_at + shift)
        new = [SessionWord(w["text"], w["start"] + shift, w["end"] + shift) for w in words]
        if new and utterance_end:
            new[-1] = dataclasses.replace(new[-1], utterance_end=True)
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
        self.pause_sent = False
        log.info("session %s: re-homing as %s, replaying %.2f s after %d committed words",
                 self.session_id, self.stream_key, (self.replay.end - self.replay.start) / SAMPLE_RATE,
                 len(self.words))

    def context(self) -> str:
        """The client's prompt, then the committed text: an incarnation's context (the engine keeps its tail)."""
        return " ".join(t for t in (self.prompt.strip(), " ".join(w.text for w in self.words[-64:])) if t)

    def language_hint(self) -> str | None:
        """A re-homed stream keeps the language already detected."""
        return self.language or self.detected_language
