"""Seeded non-speech signals: what a live caption stream hears between words.

    from training.nonspeech import evaluation_signals, random_signal

Families: digital silence, coloured noise (white, pink, brown and between;
spectrum ~ f^-alpha), sine tones, clicks, mains hum (50/60 Hz and
harmonics), chirps, and mixtures of them. `random_signal` draws one for
training (the target is "language None"); `evaluation_signals` is a fixed set of
20-60 s signals for the tests and benchmarks/nonspeech.py, drawn from seeds
that training never uses.

Levels are peak amplitudes (1.0 = full scale), as sox's `synth ... vol V`
writes them: the issue's "pink noise, vol 0.05" is `noise(n, 1.0, 0.05, rng)`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine.features import SAMPLE_RATE
from engine.tiny_tokenizer import read_words
from training.corpus import HELDOUT_VARIANTS, Job, heldout_sentences, make_clip

# Seeds below this are training's; test signals start here.
TEST_SEED_BASE = 1_000_000


def _peak(x: np.ndarray, level: float) -> np.ndarray:
    """`x` scaled to peak amplitude `level`."""
    peak = float(np.abs(x).max())
    return (x * (level / peak if peak > 0 else 0.0)).astype(np.float32)


def silence(n: int) -> np.ndarray:
    """Digital silence: exact zeros (a muted microphone, a paused file)."""
    return np.zeros(n, np.float32)


def noise(n: int, alpha: float, level: float, rng: np.random.Generator) -> np.ndarray:
    """Noise whose power spectrum falls as f^-alpha: 0 white, 1 pink, 2 brown."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    # Below 20 Hz nothing is heard; flattening there keeps brown noise from being one slow drift.
    shape = np.maximum(freqs, 20.0) ** (-alpha / 2)
    return _peak(np.fft.irfft(spectrum * shape, n), level)


def tone(n: int, hz: float, level: float) -> np.ndarray:
    """A steady sine."""
    t = np.arange(n) / SAMPLE_RATE
    return _peak(np.sin(2 * np.pi * hz * t), level)


def hum(n: int, mains_hz: float, level: float, rng: np.random.Generator) -> np.ndarray:
    """Mains hum: the fundamental and a few harmonics of falling, random strength."""
    t = np.arange(n) / SAMPLE_RATE
    x = np.zeros(n)
    for k in range(1, int(rng.integers(2, 8)) + 1):
        x += rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * mains_hz * k * t + rng.uniform(0, 2 * np.pi))
    return _peak(x, level)


def chirp(n: int, f0: float, f1: float, sweep_s: float, level: float) -> np.ndarray:
    """Logarithmic sine sweeps from f0 to f1, repeated every sweep_s."""
    t = (np.arange(n) / SAMPLE_RATE) % sweep_s
    rate = np.log(f1 / f0) / sweep_s
    phase = 2 * np.pi * f0 * (np.exp(rate * t) - 1) / rate
    return _peak(np.sin(phase), level)


def clicks(n: int, per_s: float, level: float, rng: np.random.Generator, regular: bool = False) -> np.ndarray:
    """Short decaying clicks, at a steady rate (a clock) or at random times (a keyboard, crackle)."""
    x = np.zeros(n)
    count = max(1, int(n / SAMPLE_RATE * per_s))
    if regular:
        starts = (np.arange(count) * SAMPLE_RATE / per_s).astype(int)
    else:
        starts = np.sort(rng.integers(0, n, size=count))
    width = int(0.004 * SAMPLE_RATE)
    decay = np.exp(-np.arange(width) / (0.0008 * SAMPLE_RATE))
    for start in starts[starts < n - width]:
        x[start : start + width] += rng.uniform(0.3, 1.0) * rng.standard_normal(width) * decay
    return _peak(x, level)


def fade(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A slow random level change (a fan speeding up, a door opening)."""
    start_db, end_db = rng.uniform(-20, 0, size=2)
    return (x * 10 ** (np.linspace(start_db, end_db, len(x)) / 20)).astype(np.float32)


def _level(rng: np.random.Generator) -> float:
    """Peak levels from near-inaudible to loud, uniform in dB (-66 to -6 dBFS)."""
    return float(10 ** rng.uniform(-66 / 20, -6 / 20))


def _one(n: int, rng: np.random.Generator) -> np.ndarray:
    """One family member with random parameters."""
    # Clicks twice: keyboards, crackle and clocks are common at a caption microphone, and a
    # model fine-tuned with them once per eight draws still wrote a word on 3 clicks/s.
    family = rng.choice(["silence", "noise", "noise", "noise", "tone", "hum", "chirp", "clicks", "clicks"])
    level = _level(rng)
    if family == "silence":
        return silence(n)
    if family == "noise":
        return noise(n, float(rng.uniform(-1.0, 2.5)), level, rng)
    if family == "tone":
        return tone(n, float(np.exp(rng.uniform(np.log(40), np.log(6000)))), level)
    if family == "hum":
        return hum(n, float(rng.choice([50.0, 60.0])), level, rng)
    if family == "chirp":
        f0, f1 = np.sort(np.exp(rng.uniform(np.log(50), np.log(7000), size=2)))
        up = rng.random() < 0.5
        return chirp(n, float(f0 if up else f1), float(f1 if up else f0), float(rng.uniform(0.3, 10.0)), level)
    return clicks(n, float(np.exp(rng.uniform(np.log(0.5), np.log(30)))), level, rng, regular=rng.random() < 0.3)


def random_signal(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` samples of a random non-speech signal: one family (often digital silence) or a mixture, maybe fading."""
    roll = rng.random()
    if roll < 0.15:
        # Exact zeros are their own case: the log-mel is one constant, unlike any noise floor.
        return silence(n)
    x = _one(n, rng)
    if roll > 0.7:
        for _ in range(int(rng.integers(1, 3))):
            x = x + _one(n, rng)
    if rng.random() < 0.3:
        x = fade(x, rng)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def evaluation_signals() -> list[tuple[str, Callable[[], np.ndarray]]]:
    """The fixed non-speech set, (name, make): 20-60 s each, from seeds training never draws.

    The first eight are the issue's table; the rest add levels, colours and families.
    """

    def rng(k: int) -> np.random.Generator:
        return np.random.default_rng(TEST_SEED_BASE + k)

    s = SAMPLE_RATE
    return [
        ("silence 20 s", lambda: silence(20 * s)),
        ("pink noise 0.05, 20 s", lambda: noise(20 * s, 1.0, 0.05, rng(1))),
        ("brown noise 0.3, 20 s", lambda: noise(20 * s, 2.0, 0.3, rng(2))),
        ("white noise 0.1, 20 s", lambda: noise(20 * s, 0.0, 0.1, rng(3))),
        ("tone 440 Hz 0.3, 20 s", lambda: tone(20 * s, 440.0, 0.3)),
        ("hum 50 Hz 0.2, 20 s", lambda: hum(20 * s, 50.0, 0.2, rng(5))),
        ("chirp 100-4000 Hz 0.2, 20 s", lambda: chirp(20 * s, 100.0, 4000.0, 5.0, 0.2)),
        ("clicks 3/s 0.5, 20 s", lambda: clicks(20 * s, 3.0, 0.5, rng(7))),
        ("white noise 0.005, 30 s", lambda: noise(30 * s, 0.0, 0.005, rng(8))),
        ("pink noise 0.5, 30 s", lambda: noise(30 * s, 1.0, 0.5, rng(9))),
        ("hum 60 Hz + pink noise 0.02, 30 s", lambda: np.clip(hum(30 * s, 60.0, 0.1, rng(10)) + noise(30 * s, 1.0, 0.02, rng(11)), -1, 1)),
        ("ticking clock 1/s 0.3, 30 s", lambda: clicks(30 * s, 1.0, 0.3, rng(12), regular=True)),
        ("silence 60 s", lambda: silence(60 * s)),
        ("brown noise 0.1 fading, 60 s", lambda: fade(noise(60 * s, 2.0, 0.1, rng(14)), rng(15))),
    ]


def speech_then_silence(n_words: int | None, max_speech_s: float, silence_s: float) -> tuple[np.ndarray, str, float]:
    """The first held-out sentence (held-out voice, natural prosody) with `n_words` words
    (any number if None) that lasts at most `max_speech_s`, then `silence_s` of digital silence.

    Returns (samples, text, seconds of speech).
    """
    for index, text in enumerate(heldout_sentences(240, read_words())):
        if n_words is not None and len(text.split()) != n_words:
            continue
        made = make_clip(Job(index, "nonspeech", 2000 + index, text, "natural", HELDOUT_VARIANTS))
        if made is None or len(made[1]) > max_speech_s * SAMPLE_RATE:
            continue
        speech = made[1].astype(np.float32) / 32768.0
        return np.concatenate([speech, silence(int(silence_s * SAMPLE_RATE))]), text, len(speech) / SAMPLE_RATE
    raise ValueError(f"no held-out sentence of {n_words} words within {max_speech_s} s")
