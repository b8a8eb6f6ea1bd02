"""The bundled trained model (models/tiny-en) on held-out speech made with espeak-ng.

The clips use sentences that never occur in training, and voices that were
never heard in training. Bounds are loose (a broken or untrained model sits
near 100% WER; this model measures about 10% on these clips); the quality
figures themselves come from benchmarks/quality.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile

from engine.config import EngineConfig
from engine.head_detection import detect, load_timed_clips
from engine.heads import read_heads_file
from engine.loader import load_model
from engine.core import Engine
from engine.tiny_tokenizer import read_words
from engine.transcribe import transcribe, transcribe_file
from engine.events import FinalEvent, WordsEvent
from engine.vad import Audio, Endpoint, Gap, VadConfig, feed_pieces
from training.corpus import HELDOUT_VARIANTS, Job, heldout_sentences, make_clip
from training.nonspeech import evaluation_signals, speech_then_silence

MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "tiny-en"


@pytest.fixture(scope="module")
def model():
    return load_model(str(MODEL_DIR), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight held-out clips: four with exact word times, four naturally spoken."""
    folder = tmp_path_factory.mktemp("heldout")
    kinds = ["words", "natural"] * 4
    made, index = 0, 0
    for text in heldout_sentences(60, read_words()):
        if made == len(kinds):
            break
        result = make_clip(Job(index, "test", 1000 + index, text, kinds[made], HELDOUT_VARIANTS))
        index += 1
        if result is None or len(text.split()) < 4:
            continue
        clip, samples = result
        soundfile.write(str(folder / f"{clip.id}.wav"), samples, 16_000, subtype="PCM_16")
        (folder / f"{clip.id}.json").write_text(json.dumps(asdict(clip)))
        made += 1
    return folder


def transcribe_all(model, folder: Path, offline: bool) -> tuple[list[str], list[str], list]:
    refs, hyps, results = [], [], []
    cfg = EngineConfig(model=str(MODEL_DIR), device="cpu", dtype=str(model.dtype).removeprefix("torch."))
    for wav in sorted(folder.glob("*.wav")):
        reference = json.loads(wav.with_suffix(".json").read_text())
        result = transcribe_file(wav, model, cfg, 100.0, offline, None)
        refs.append(reference["text"])
        hyps.append(result.text)
        results.append((reference, result))
    return refs, hyps, results


def test_offline_transcribes_heldout_speech(model, clips: Path) -> None:
    refs, hyps, results = transcribe_all(model, clips, offline=True)
    assert jiwer.wer(refs, hyps) <= 0.3, list(zip(refs, hyps))
    assert all(result.language == "en" for _, result in results)  # detected, not forced


def test_streaming_transcribes_heldout_speech_with_timestamps(model, clips: Path) -> None:
    refs, hyps, results = transcribe_all(model, clips, offline=False)
    assert jiwer.wer(refs, hyps) <= 0.35, list(zip(refs, hyps))
    errors = []
    for reference, result in results:
        truth = {w["text"]: w for w in reference["words"]}
        for word, emitted_at in result.words:
            if word.text in truth:
                errors.append(abs(word.start - truth[word.text]["start"]))
                assert emitted_at >= word.end - 0.2  # a word is never committed before it is heard
    assert errors and sorted(errors)[len(errors) // 2] <= 0.3


def test_bfloat16_streams_as_well_as_float32(model, clips: Path) -> None:
    """bfloat16 is the default on CPUs with AMX: the same model must transcribe as well in it."""
    refs, hyps, _ = transcribe_all(model, clips, offline=False)
    bf16_refs, bf16_hyps, _ = transcribe_all(load_model(str(MODEL_DIR), device="cpu", dtype="bfloat16"), clips, False)
    assert jiwer.wer(bf16_refs, bf16_hyps) <= jiwer.wer(refs, hyps) + 0.05, list(zip(bf16_refs, bf16_hyps))


def test_heads_detection_finds_heads_better_than_random(model, clips: Path) -> None:
    found = detect(model, load_timed_clips(clips, 10), "English", tolerance_s=0.1)
    best = max(found.scores.values())
    assert best >= 3 * found.random_baseline and best >= 0.4, (best, found.random_baseline)
    shipped = read_heads_file(MODEL_DIR / "alignment_heads.json", model.spec)
    # Several heads align almost equally well: the shipped best must be one of the good ones here too.
    assert found.scores[shipped[0]] >= 0.8 * best, (shipped[0], found.scores)


def stream(model, samples, language: str | None = None, chunk_ms: float = 100.0):
    """A live stream with the CLI's default settings, in the `model` fixture's float32."""
    cfg = EngineConfig(model=str(MODEL_DIR), device="cpu", dtype=str(model.dtype).removeprefix("torch."),
                       max_streams=1, max_batch=1)
    return transcribe(Engine(cfg, model), samples, chunk_ms, language)


@pytest.mark.parametrize("name,make", [pytest.param(name, make, id=name) for name, make in evaluation_signals()])
def test_no_words_where_nobody_speaks(model, name: str, make) -> None:
    """Silence, noise colours and levels, a tone, hum, a chirp, clicks (20-60 s each): nothing to write."""
    result = stream(model, make())
    assert result.text == ""


@pytest.mark.parametrize("language", [None, "en"])
def test_a_sentence_then_silence_gains_no_words(model, language: str | None) -> None:
    """A held-out 10-word sentence, then 20 s of digital silence: the silence adds no words."""
    samples, text, _ = speech_then_silence(10, 12.0, 20.0)
    result = stream(model, samples, language)
    measures = jiwer.process_words(text, result.text)
    assert measures.insertions == 0 and len(result.words) <= len(text.split()), (text, result.text)


def test_with_the_gate_nothing_at_all_reaches_the_words(model) -> None:
    """The service's path (VAD gate in front): zero words on the whole non-speech set, clicks included."""
    heard = {}
    for name, make in evaluation_signals():
        cfg = EngineConfig(model=str(MODEL_DIR), device="cpu", dtype="float32", max_streams=1, max_batch=1)
        result = transcribe(Engine(cfg, model), make(), 100.0, None, vad=VadConfig())
        if result.words:
            heard[name] = result.text
    assert heard == {}


def two_sentences(clips: Path) -> tuple[np.ndarray, np.ndarray]:
    return tuple(soundfile.read(str(p), dtype="float32")[0] for p in sorted(clips.glob("*.wav"))[:2])


def gated_stream(model, pieces: list) -> list:
    """The words of a stream fed as a gate would feed it: audio, endpoints and gaps."""
    cfg = EngineConfig(model=str(MODEL_DIR), device="cpu", dtype="float32", max_streams=1, max_batch=1)
    engine = Engine(cfg, model)
    engine.open("s", "en")
    words, done = [], False

    def collect() -> bool:
        for event in engine.step().events:
            if isinstance(event, (WordsEvent, FinalEvent)):
                words.extend(event.words)
            if isinstance(event, FinalEvent):
                return True
        return False

    for piece in pieces:
        # Audio in 100 ms chunks, at the pace of a live stream.
        parts = ([Audio(piece.samples[i : i + 1600]) for i in range(0, len(piece.samples), 1600)]
                 if isinstance(piece, Audio) else [piece])
        for part in parts:
            feed_pieces(engine, "s", [part])
            while engine.has_work():
                collect()
    engine.end("s")
    while not done:
        done = collect()
    return words


@pytest.mark.parametrize("pause_s", [12.0, 30.0])
def test_a_long_pause_keeps_the_words_and_the_stream_clock(model, clips: Path, pause_s: float) -> None:
    """Two held-out sentences with the gate's pieces between them (0.4 s of silence, an endpoint,
    a gap, 0.2 s of pad): with a gap of 0.4 s or of `pause_s`, the same words, and the second
    sentence's times move by exactly the longer gap (the stream clock)."""
    first, second = two_sentences(clips)
    quiet = np.zeros(int(0.4 * 16_000), np.float32)

    def run(gap_s: float) -> list:
        pad = np.zeros(int(0.2 * 16_000), np.float32)
        return gated_stream(model, [Audio(np.concatenate([first, quiet])), Endpoint(),
                                    Gap(int(gap_s * 16_000)), Audio(np.concatenate([pad, second]))])

    near, far = run(0.4), run(pause_s)
    assert [w.text for w in far] == [w.text for w in near] and len(near) >= 6
    split = len(first) / 16_000 + 0.4
    shifts = [b.start - a.start for a, b in zip(near, far) if a.start > split]
    assert shifts and all(abs(s - (pause_s - 0.4)) < 0.011 for s in shifts), shifts  # within a mel hop
    assert all(a.start == b.start for a, b in zip(near, far) if a.start < split)


def test_with_the_real_gate_a_long_pause_changes_little(model, clips: Path) -> None:
    """The same two sentences 1 s and 20 s apart through Silero: its recurrent state after a long
    silence may move an onset by a 32 ms chunk, which this small model can hear, so the
    transcripts agree closely rather than exactly; times after the pause stay in stream time."""
    first, second = two_sentences(clips)

    def run(gap_s: float) -> list:
        samples = np.concatenate([first, np.zeros(int(gap_s * 16_000), np.float32), second])
        cfg = EngineConfig(model=str(MODEL_DIR), device="cpu", dtype="float32", max_streams=1, max_batch=1)
        return [w for w, _ in transcribe(Engine(cfg, model), samples, 100.0, "en", vad=VadConfig()).words]

    near, far = run(1.0), run(20.0)
    assert jiwer.wer(" ".join(w.text for w in near), " ".join(w.text for w in far)) <= 0.25
    after = [w.start for w in far if w.start > len(first) / 16_000 + 1.0]
    assert after and min(after) >= len(first) / 16_000 + 20.0 - 0.3
