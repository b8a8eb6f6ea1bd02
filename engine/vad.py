"""Voice activity gate: only speech, and a little audio around it, reaches the model.

Silero VAD (the silero-vad package's weights, run by engine/silero.py on a
CPU) scores every 32 ms chunk of a stream. The gate turns the scores into
pieces of the stream's timeline:

* `Audio` pieces: speech, `pad_s` of audio before each onset (so a word's
  first sound is not cut), and the first `hangover_s` of silence after
  speech (a word's last sound); the rest of a silence is held back until
  it is known to be a pause inside speech (speech comes back before
  `endpoint_s`: it is sent then) or the end of an utterance (it is not);
* an `Endpoint` once silence after speech has lasted `endpoint_s`: the
  utterance is over, and the engine commits its pending words at once (no
  border wait) and restarts its buffer;
* `Gap` pieces: the rest, which is never sent to the model, told when
  speech comes back (or the stream ends); their lengths keep the stream's
  clock, so timestamps after a pause stay in stream time.

Scores use hysteresis (speech starts at `threshold`, silence counts below
`negative_threshold`). The gate's state per stream is plain data; scoring
is batched over every stream given to `VadGate.process` (one model call
scores one chunk of each stream: 13 us per stream-chunk at 64 streams
against 170 us alone, on one core).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from engine.features import SAMPLE_RATE
from engine.shapes import padded
from engine.silero import INPUT, STATE, SileroNet

CHUNK = 512  # samples per Silero score at 16 kHz
_CONTEXT = INPUT - CHUNK  # samples of the previous chunk the model sees with each chunk
_EMPTY = np.zeros(0, np.float32)


@dataclass(frozen=True)
class VadConfig:
    """Thresholds of the gate (serve_config.yaml: ingest.vad)."""

    enabled: bool = True
    threshold: float = 0.5
    negative_threshold: float = 0.35
    # Silence after speech that ends an utterance: its words are committed at once.
    # 0.2 s: held-out WER through the gate 9.9% (0.25 s: 9.7%) against 10.1% ungated
    # (benchmarks/quality.py --vad, float32, 231 clips); utterance-final words ~0.2 s sooner
    # than at 0.4 s (docs/engine.md).
    endpoint_s: float = 0.2
    # Audio kept before an onset.
    pad_s: float = 0.2
    # Silence after speech sent at once; the rest, up to endpoint_s, only if speech comes back
    # (a pause the model would decode as nothing, and the compute it would cost, saved).
    hangover_s: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.negative_threshold <= self.threshold < 1:
            raise ValueError("vad: need 0 < negative_threshold <= threshold < 1")
        if self.endpoint_s <= 0 or self.pad_s < 0 or self.hangover_s < 0:
            raise ValueError("vad: endpoint_s must be > 0, pad_s and hangover_s >= 0")

    @property
    def endpoint_samples(self) -> int:
        return int(self.endpoint_s * SAMPLE_RATE)

    @property
    def pad_samples(self) -> int:
        return int(self.pad_s * SAMPLE_RATE)

    @property
    def hangover_samples(self) -> int:
        return int(self.hangover_s * SAMPLE_RATE)


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
    # While speaking: silence past hangover_s, not sent yet (sent if speech comes back).
    hangover: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(_CONTEXT, np.float32))
    state: np.ndarray = field(default_factory=lambda: np.zeros(STATE, np.float32))


def gate(state: GateState, chunk: np.ndarray, prob: float, cfg: VadConfig) -> list[Piece]:
    """Pieces for one scored chunk (pure)."""
    if state.speaking:
        if prob >= cfg.negative_threshold:
            # Speech goes on: a silence held back was a pause inside it, and the model hears it.
            held, state.hangover, state.silence = state.hangover, _EMPTY, 0
            return [Audio(np.concatenate([held, chunk]))]
        before, state.silence = state.silence, state.silence + len(chunk)
        # This chunk's samples within the first hangover_s of the silence are sent now.
        cut = min(len(chunk), max(0, cfg.hangover_samples - before))
        sent = [Audio(chunk[:cut])] if cut else []
        if state.silence < cfg.endpoint_samples:
            state.hangover = np.concatenate([state.hangover, chunk[cut:]])
            return sent
        # The utterance is over: what was held back is the start of the pause (the next pad, or gap).
        rest, state.hangover = np.concatenate([state.hangover, chunk[cut:]]), _EMPTY
        state.speaking, state.silence = False, 0
        _hold(state, rest, cfg)
        return sent + [Endpoint()]
    if prob >= cfg.threshold:
        state.speaking = True
        held, state.held = state.held, _EMPTY
        gap, state.gap = state.gap, 0
        return ([Gap(gap)] if gap else []) + [Audio(np.concatenate([held, chunk]))]
    _hold(state, chunk, cfg)
    return []


def _hold(state: GateState, silence: np.ndarray, cfg: VadConfig) -> None:
    """Silence while silent: its last pad_s is held for the next onset, the rest counts as gap."""
    held = np.concatenate([state.held, silence])
    excess = max(0, len(held) - cfg.pad_samples)
    state.held = held[excess:]
    state.gap += excess


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
    rest = np.concatenate([state.held, state.hangover, state.pending])
    silent = not state.speaking or len(state.hangover) > 0
    state.held = state.hangover = state.pending = _EMPTY
    if not silent:
        return [Audio(rest)] if len(rest) else []
    # Silence past the hangover, or while silent: never sent.
    gap, state.gap = state.gap + len(rest), 0
    return [Gap(gap)] if gap else []


class VadGate:
    """Silero scoring batched over streams, and the gate on top."""

    def __init__(self, cfg: VadConfig) -> None:
        self.cfg = cfg
        self._net = SileroNet()

    def process(self, streams: list[tuple[GateState, np.ndarray]]) -> list[list[Piece]]:
        """New 16 kHz samples of several streams -> each stream's pieces, in stream order."""
        if len({id(state) for state, _ in streams}) < len(streams):
            # Its chunks would be scored as one batch row each, against the same recurrent state.
            raise ValueError("VadGate.process: a stream given twice (join its samples first)")
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

    def _score(self, states: list[GateState], chunks: list[np.ndarray]) -> list[float]:
        # Rows padded to the shape ladder (engine/shapes.py): with one batch shape, a row's score is
        # the same bit for bit whatever the other rows hold, so a stream gated beside others (the
        # ingest) gets the pieces it gets alone (the CLI) while at most 8 share a call.
        rows = padded(len(states))
        x = np.zeros((rows, INPUT), np.float32)
        x[: len(states)] = [np.concatenate([s.context, c]) for s, c in zip(states, chunks)]
        recurrent = np.zeros((STATE[0], rows, STATE[1]), np.float32)
        recurrent[:, : len(states)] = np.stack([s.state for s in states], axis=1)
        probs, recurrent = self._net(torch.from_numpy(x), torch.from_numpy(recurrent))
        new_state = recurrent.numpy()
        for i, (state, chunk) in enumerate(zip(states, chunks)):
            state.context = chunk[-_CONTEXT:].copy()
            state.state = new_state[:, i].copy()
        return probs.tolist()


def feed_pieces(engine: object, stream_id: str, pieces: list[Piece]) -> None:
    """Hand a gate's pieces to an engine (the Engine API: feed, pause)."""
    for piece in pieces:
        if isinstance(piece, Audio):
            engine.feed(stream_id, piece.samples)
        elif isinstance(piece, Endpoint):
            engine.pause(stream_id, 0)
        else:
            engine.pause(stream_id, piece.samples)
