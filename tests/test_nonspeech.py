"""The non-speech signal generator (training.nonspeech), no model."""

from __future__ import annotations

import numpy as np

from engine.features import SAMPLE_RATE
from training.nonspeech import evaluation_signals, hum, noise, random_signal


def band_power(x: np.ndarray, low_hz: float, high_hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1.0 / SAMPLE_RATE)
    return float(spectrum[(freqs >= low_hz) & (freqs < high_hz)].mean())


def test_the_fixed_set_is_long_varied_and_reproducible() -> None:
    signals = evaluation_signals()
    assert len(signals) >= 10
    names = [name for name, _ in signals]
    assert len(set(names)) == len(names)
    for name, make in signals:
        x = make()
        assert x.dtype == np.float32 and np.isfinite(x).all() and np.abs(x).max() <= 1.0, name
        assert 20 <= len(x) / SAMPLE_RATE <= 60, name
        assert np.array_equal(x, make()), name
    assert any(not make().any() for _, make in signals)  # digital silence is in the set


def test_levels_are_peak_amplitudes() -> None:
    x = noise(SAMPLE_RATE * 5, 1.0, 0.05, np.random.default_rng(0))
    assert abs(float(np.abs(x).max()) - 0.05) < 1e-6


def test_noise_colours_tilt_the_spectrum() -> None:
    """Brown noise (alpha 2) loses ~6 dB/octave against white, pink half that."""
    tilts = []
    for alpha in (0.0, 1.0, 2.0):
        x = noise(SAMPLE_RATE * 10, alpha, 0.3, np.random.default_rng(1))
        tilts.append(10 * np.log10(band_power(x, 100, 200) / band_power(x, 3200, 6400)))
    white, pink, brown = tilts
    assert abs(white) < 1.5
    assert 10 < pink < 20 and 25 < brown < 35, tilts  # 5 octaves apart: ~15 and ~30 dB


def test_hum_sits_on_the_mains_frequency() -> None:
    x = hum(SAMPLE_RATE * 4, 60.0, 0.2, np.random.default_rng(2))
    assert band_power(x, 59, 61) > 1000 * band_power(x, 70, 110)


def test_random_signals_cover_silence_and_stay_in_range() -> None:
    rng = np.random.default_rng(3)
    draws = [random_signal(SAMPLE_RATE * 2 + 7, rng) for _ in range(60)]
    assert all(len(x) == SAMPLE_RATE * 2 + 7 and np.abs(x).max() <= 1.0 and np.isfinite(x).all() for x in draws)
    silent = sum(not x.any() for x in draws)
    assert 3 <= silent <= 30  # exact zeros are common, not everything
