"""The synthetic speech corpus generator (espeak-ng + sox)."""

from __future__ import annotations

import numpy as np

from engine.features import SAMPLE_RATE
from training.corpus import HELDOUT_VARIANTS, TRAIN_VARIANTS, Job, heldout_sentences, make_clip, speech_runs
from engine.tiny_tokenizer import read_words


def test_word_clip_has_exact_increasing_word_times() -> None:
    made = None
    for seed in range(5):  # a clip may be rejected (too long); take the first accepted
        made = make_clip(Job(0, "t", seed, "the black cat sat down", "words", TRAIN_VARIANTS))
        if made:
            break
    assert made is not None
    clip, samples = made
    assert [w.text for w in clip.words] == "the black cat sat down".split()
    spans = [(w.start, w.end) for w in clip.words]
    assert all(s < e for s, e in spans) and all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))
    assert spans[-1][1] <= len(samples) / SAMPLE_RATE
    # There is sound inside each word span and (nearly) none in the gaps between them.
    x = samples.astype(np.float32) / 32768
    runs = speech_runs(x, merge_gap_s=0.02)
    assert runs, "synthesised audio is silent"
    for start, end in spans:
        inside = x[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
        assert np.abs(inside).max() > 0.01


def test_natural_and_silence_clips() -> None:
    clip, samples = make_clip(Job(1, "t", 3, "where is my book", "natural", HELDOUT_VARIANTS))
    assert clip.text == "where is my book" and clip.voice.split("+")[1] in HELDOUT_VARIANTS
    assert 1.0 <= len(samples) / SAMPLE_RATE <= 12.0
    clip, _ = make_clip(Job(2, "t", 4, "ignored", "silence", TRAIN_VARIANTS))
    assert clip.text == "" and clip.words == []


def test_heldout_sentences_are_fixed_and_use_the_word_list() -> None:
    words = read_words()
    first, again = heldout_sentences(20, words), heldout_sentences(20, words)
    assert first == again
    assert set(" ".join(first).split()) <= set(words)
    assert not set(HELDOUT_VARIANTS) & set(TRAIN_VARIANTS)
