"""The voice activity gate: pure gate logic on synthetic scores, and Silero on real speech."""

from __future__ import annotations

import numpy as np
import pytest

from engine.features import SAMPLE_RATE
from engine.vad import CHUNK, Audio, Endpoint, Gap, GateState, VadConfig, VadGate, flush, gate, merge
from training.corpus import synthesize

CFG = VadConfig(threshold=0.5, negative_threshold=0.35, endpoint_s=0.4, pad_s=0.2)


def run(probs: list[float]) -> tuple[list, np.ndarray]:
    """Gate chunks whose values are their index, with the given speech scores."""
    state, pieces = GateState(), []
    chunks = [np.full(CHUNK, i, np.float32) for i in range(len(probs))]
    for chunk, prob in zip(chunks, probs):
        pieces += gate(state, chunk, prob, CFG)
    return merge(pieces + flush(state)), np.concatenate(chunks)


def test_silence_is_left_out_and_speech_keeps_its_onset() -> None:
    pieces, _ = run([0.0] * 20 + [0.9] * 5)
    gap, audio = pieces
    # 0.2 s of pad is kept before the onset: 6.25 chunks -> the held samples of the last ones.
    assert isinstance(gap, Gap) and isinstance(audio, Audio)
    assert len(audio.samples) == CFG.pad_samples + 5 * CHUNK
    assert gap.samples + len(audio.samples) == 25 * CHUNK  # the clock is kept: every sample accounted for
    assert audio.samples[CFG.pad_samples] == 20  # the first speech chunk follows the pad


def test_an_endpoint_after_endpoint_s_of_silence_then_the_pause_is_a_gap() -> None:
    pieces, samples = run([0.9] * 10 + [0.1] * 30 + [0.9] * 3)
    kinds = [type(p).__name__ for p in pieces]
    assert kinds == ["Audio", "Endpoint", "Gap", "Audio"]
    hangover = len(pieces[0].samples) - 10 * CHUNK
    assert CFG.endpoint_samples <= hangover < CFG.endpoint_samples + CHUNK
    assert len(pieces[0].samples) + pieces[2].samples + len(pieces[3].samples) == len(samples)


def test_hysteresis_a_dip_between_the_thresholds_is_still_speech() -> None:
    pieces, _ = run([0.9] * 5 + [0.4] * 30 + [0.9] * 2)
    assert [type(p) for p in pieces] == [Audio]


def test_a_short_pause_inside_speech_is_no_endpoint() -> None:
    pieces, _ = run([0.9] * 5 + [0.1] * 10 + [0.9] * 5)  # 0.32 s < endpoint_s
    assert [type(p) for p in pieces] == [Audio]


def test_flush_at_stream_end() -> None:
    state = GateState()
    gate(state, np.zeros(CHUNK, np.float32), 0.9, CFG)
    state.pending = np.ones(100, np.float32)
    assert [len(p.samples) for p in flush(state)] == [100]
    silent = GateState(gap=1000, held=np.zeros(50, np.float32))
    assert flush(silent) == [Gap(1050)]


def test_invalid_config() -> None:
    with pytest.raises(ValueError):
        VadConfig(threshold=0.3, negative_threshold=0.5)
    with pytest.raises(ValueError):
        VadConfig(endpoint_s=0)


def test_silero_gates_real_speech_batched_over_streams() -> None:
    """A spoken sentence with silence around it: the speech passes, the silence is a gap, an endpoint follows."""
    speech = synthesize("the dog ran across the yellow field", "en-us", 160, 50)
    silence = np.zeros(int(1.5 * SAMPLE_RATE), np.float32)
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(int(3 * SAMPLE_RATE)) * 0.01).astype(np.float32)
    vad = VadGate(VadConfig())
    states = [GateState(), GateState()]
    signals = [np.concatenate([silence, speech, silence]), noise]
    pieces: list[list] = [[], []]
    for begin in range(0, max(len(s) for s in signals), 1600):  # 100 ms frames, both streams per call
        batch = [(st, sig[begin : begin + 1600]) for st, sig in zip(states, signals) if begin < len(sig)]
        for i, out in enumerate(vad.process(batch)):
            pieces[i] += out
    speech_pieces = merge(pieces[0] + flush(states[0]))
    kinds = [type(p).__name__ for p in speech_pieces]
    assert kinds[:2] == ["Gap", "Audio"] and "Endpoint" in kinds, kinds
    audio = sum(len(p.samples) for p in speech_pieces if isinstance(p, Audio))
    assert len(speech) <= audio <= len(speech) + int(1.0 * SAMPLE_RATE)
    assert sum(p.samples if isinstance(p, Gap) else len(p.samples) if isinstance(p, Audio) else 0
               for p in speech_pieces) == len(signals[0])
    # Quiet noise is all gap.
    assert all(isinstance(p, Gap) for p in merge(pieces[1] + flush(states[1])))
