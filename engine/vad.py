"""Voice activity gate: only speech, and a little audio around it, reaches the model.

Silero VAD (the silero-vad package; its model ships inside it and runs on a
CPU) scores every 32 ms chunk of a stream. The gate turns the scores into
pieces of the stream's timeline:

* `Audio` pieces: speech, `pad_s` of audio before each onset (so a word's
  first sound is not cut), and the silence after speech until it has
  lasted `endpoint_s`;
* an `Endpoint` once silence after speech has lasted `endpoint_s`: the
  utterance is over, and the engine commits its pending words at once (no
  border wait) and restarts its buffer;
* `Gap` pieces: the rest, which is never sent to the model, told when
  speech comes back (or the stream ends); their lengths keep the stream's
  clock, so timestamps after a pause stay in stream time.

Scores use hysteresis (speech starts at `threshold`, silence counts below
`negative_threshold`). The gate's state per stream is plain data; scoring
is batched over every stream given to `VadGate.process` (one model call
scores one chunk of each stream: 26 us per stream-chunk at 64 streams
against 185 us alone, on one core).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from engine.features import SAMPLE_RATE

CHUNK = 512  # samples per Silero score at 16 kHz
_CONTEXT = 64  # samples of the previous chunk the model sees with each chunk
_STATE_SHAPE = (2, 128)  # the model's recurrent state per stream, [2, B, 128] batched


@dataclass(frozen=True)
class VadConfig:
    """Thresholds of the gate (serve_config.yaml: ingest.vad)."""

    enabled: bool = True
    threshold: float = 0.5
    negative_threshold: float = 0.35
    # Silence after speech that ends an utterance: its words are committed at once.
    endpoint_s: float = 0.4
    # Audio kept before an onset.
    pad_s: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.negative_threshold <= self.threshold < 1:
            raise ValueError("vad: need 0 < negative_threshold <= threshold < 1")
        if self.endpoint_s <= 0 or self.pad_s < 0:
            raise ValueError("vad: endpoint_s must be > 0 and pad_s >= 0")

    @property
    def endpoint_samples(self) -> int:
        return int(self.endpoint_s * SAMPLE_RATE)

    @property
    def pad_samples(self) -> int:
        return int(self.pad_s * SAMPLE_RATE)


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray


@dataclass(frozen=True)
class Endpoint:
    """The utterance ended here."""


@dataclass(frozen=True)
class Gap:
    samples: int  # how much of the stream is left out (> 0)


Piece = Audio | Endpoint | Gap


@dataclass
class GateState:
    """One stream's gate."""

    speaking: bool = False
    # Samples of silence in a row while speaking.
    silence: int = 0
    # Samples left out since the last endpoint, told (as one Gap) when speech comes back.
    gap: int = 0
    # Samples not scored yet (less than a chunk).
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    # While silent: the latest audio, kept to pad the next onset.
    held: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(_CONTEXT, np.float32))
    state: np.ndarray = field(default_factory=lambda: np.zeros(_STATE_SHAPE, np.float32))


def gate(state: GateState, chunk: np.ndarray, prob: float, cfg: VadConfig) -> list[Piece]:
    """Pieces for one scored chunk (pure)."""
    if state.speaking:
        state.silence = state.silence + len(chunk) if prob < cfg.negative_threshold else 0
        if state.silence >= cfg.endpoint_samples:
            state.speaking, state.silence = False, 0
            return [Audio(chunk), Endpoint()]
        return [Audio(chunk)]
    if prob >= cfg.threshold:
        state.speaking = True
        held, state.held = state.held, np.zeros(0, np.float32)
        gap, state.gap = state.gap, 0
        return ([Gap(gap)] if gap else []) + [Audio(np.concatenate([held, chunk]))]
    held = np.concatenate([state.held, chunk])
    excess = max(0, len(held) - cfg.pad_samples)
    state.held = held[excess:]
    state.gap += excess
    return []


def merge(pieces: list[Piece]) -> list[Piece]:
    """Adjacent pieces of one kind joined."""
    out: list[Piece] = []
    for piece in pieces:
        if out and isinstance(piece, Gap) and isinstance(out[-1], Gap):
            out[-1] = Gap(out[-1].samples + piece.samples)
        elif out and isinstance(piece, Audio) and isinstance(out[-1], Audio):
            out[-1] = Audio(np.concatenate([out[-1].samples, piece.samples]))
        else:
            out.append(piece)
    return out


def flush(state: GateState) -> list[Piece]:
    """The stream ended: what the gate still holds (unscored samples count as what came before)."""
    rest = np.concatenate([state.held, state.pending])
    state.held = state.pending = np.zeros(0, np.float32)
    if state.speaking:
        return [Audio(rest)] if len(rest) else []
    gap, state.gap = state.gap + len(rest), 0
    return [Gap(gap)] if gap else []


class VadGate:
    """Silero scoring batched over streams, and the gate on top."""

    def __init__(self, cfg: VadConfig) -> None:
        from silero_vad import load_silero_vad

        self.cfg = cfg
        # The 16 kHz network with its state passed explicitly, so streams batch.
        self._model = load_silero_vad()._model

    def process(self, streams: list[tuple[GateState, np.ndarray]]) -> list[list[Piece]]:
        """New 16 kHz samples of several streams -> each stream's pieces, in stream order."""
        out: list[list[Piece]] = [[] for _ in streams]
        for state, samples in streams:
            state.pending = np.concatenate([state.pending, samples.astype(np.float32)])
        while True:
            ready = [i for i, (state, _) in enumerate(streams) if len(state.pending) >= CHUNK]
            if not ready:
                break
            chunks = [streams[i][0].pending[:CHUNK] for i in ready]
            for i, prob in zip(ready, self._score([streams[i][0] for i in ready], chunks)):
                state = streams[i][0]
                chunk, state.pending = state.pending[:CHUNK], state.pending[CHUNK:]
                out[i] += gate(state, chunk, prob, self.cfg)
        return [merge(pieces) for pieces in out]

    @torch.inference_mode()
    def _score(self, states: list[GateState], chunks: list[np.ndarray]) -> list[float]:
        x = torch.from_numpy(np.stack([np.concatenate([s.context, c]) for s, c in zip(states, chunks)]))
        recurrent = torch.from_numpy(np.stack([s.state for s in states], axis=1))
        probs, recurrent = self._model(x, recurrent)
        new_state = recurrent.numpy()
        for i, (state, chunk) in enumerate(zip(states, chunks)):
            state.context = chunk[-_CONTEXT:].copy()
            state.state = new_state[:, i].copy()
        return probs[:, 0].tolist()


def feed_pieces(engine: object, stream_id: str, pieces: list[Piece]) -> None:
    """Hand a gate's pieces to an engine (the Engine API: feed, pause)."""
    for piece in pieces:
        if isinstance(piece, Audio):
            engine.feed(stream_id, piece.samples)
        elif isinstance(piece, Endpoint):
            engine.pause(stream_id, 0)
        else:
            engine.pause(stream_id, piece.samples)
