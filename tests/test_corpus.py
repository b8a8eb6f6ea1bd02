"""The synthetic speech corpus generator (espeak-ng + sox)."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np

from engine.features import SAMPLE_RATE, MelFrontend, StreamingMel
from training.corpus import HELDOUT_VARIANTS, TRAIN_VARIANTS, Job, heldout_sentences, make_clip, speech_runs
from engine.tiny_tokenizer import read_words
from training.data import STRETCH, Corpus, stretch, streamed_features


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


def test_stretch_plays_faster_and_higher() -> None:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    faster = stretch(np.sin(2 * np.pi * 200 * t).astype(np.float32), 1.1)
    assert len(faster) == int(SAMPLE_RATE / 1.1)
    peak_hz = np.argmax(np.abs(np.fft.rfft(faster))) * SAMPLE_RATE / len(faster)
    assert abs(peak_hz - 220) < 2


def test_examples_keep_word_times_on_the_stretched_audio(tmp_path) -> None:
    """Every drawn example's word spans lie on its (stretched, maybe cut) audio, and its words are heard."""
    corpus, clip = one_clip_corpus(tmp_path)
    rng = np.random.default_rng(0)
    seconds = clip.samples / SAMPLE_RATE
    for _ in range(40):
        ex = corpus.example(0, rng, ["word"])
        audio_s = len(ex.audio) / SAMPLE_RATE
        assert audio_s <= seconds / STRETCH[0] + 0.01
        assert ex.spans and all(0 <= a < b <= audio_s + 1e-3 for _, a, b in ex.spans)
        ends = {w: b for w, _, b in ex.spans}
        assert ex.words == clip.text.split()[: len(ex.words)] and all(ends[w] <= audio_s for w in ex.words)


def one_clip_corpus(tmp_path, text: str = "the black cat sat down") -> tuple[Corpus, object]:
    clip, samples = make_clip(Job(0, "t", 0, text, "words", TRAIN_VARIANTS)) or (None, None)
    assert clip is not None
    split = tmp_path / "train"
    split.mkdir()
    (split / "audio.i16").write_bytes(samples.tobytes())
    (split / "manifest.jsonl").write_text(json.dumps(asdict(clip)) + "\n")
    return Corpus(split), clip


def test_streamed_features_are_what_a_live_stream_computes() -> None:
    """Quiet audio before loud: each frame is floored by the maximum seen so far, as StreamingMel does."""
    from transformers import WhisperFeatureExtractor

    frontend = MelFrontend(WhisperFeatureExtractor(feature_size=128).mel_filters.astype(np.float32))
    rng = np.random.default_rng(0)
    n = SAMPLE_RATE * 3 + 77
    audio = (rng.standard_normal(n) * np.linspace(1e-5, 0.5, n)).astype(np.float32)
    audio[: SAMPLE_RATE // 2] = 0.0
    step = SAMPLE_RATE // 2
    live = StreamingMel(frontend)
    expected = np.concatenate([live.push(audio[i : i + step]) for i in range(0, n, step)] + [live.flush()], axis=1)
    got = streamed_features(frontend, audio, step)
    assert got.shape == expected.shape and np.allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, frontend.offline(audio), atol=0.1)  # the start differs from offline


def test_extras_nonspeech_and_padded_examples(tmp_path) -> None:
    corpus, clip = one_clip_corpus(tmp_path)
    corpus.add_extras(nonspeech=20.0, padded=20.0, max_s=24.0, rng=np.random.default_rng(1))
    kinds = [e.kind for e in corpus.extras]
    assert kinds.count("nonspeech") == 20 and kinds.count("padded") == 20 and len(corpus) == 41
    assert all(corpus.seconds(i) <= 24.0 for i in range(len(corpus)))
    rng, seen = np.random.default_rng(2), set()
    for index in range(1, len(corpus)):
        extra, ex = corpus.extras[index - 1], corpus.example(index, rng, ["word"], prefix_fraction=0.5)
        audio_s = len(ex.audio) / SAMPLE_RATE
        assert ex.streamed and audio_s <= 24.0 + 1e-3 and np.abs(ex.audio).max() <= 1.0
        if extra.kind == "nonspeech":
            # No words: "language None", or the end of text after a given language.
            assert ex.words == [] and ex.spans == [] and ex.silence != ex.language_given
            assert abs(audio_s - extra.seconds) < 1e-3
            seen.add("given" if ex.language_given else "none")
            continue
        assert not ex.language_given and ex.spans is not None
        assert all(extra.lead_s - 1e-3 <= a < b <= audio_s + 1e-3 for _, a, b in ex.spans)
        ends = {w: b for w, _, b in ex.spans}
        assert ex.words == clip.text.split()[: len(ex.words)] and all(ends[w] <= audio_s for w in ex.words)
        if ex.silence:
            assert ex.words == [] and ex.spans == []  # cut before the speech began
        seen.add("padded-whole" if len(ex.words) == len(clip.words) else "padded-cut")
    assert seen == {"given", "none", "padded-whole", "padded-cut"}
