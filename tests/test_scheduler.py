"""The engine on the tiny random model: batching parity, caches, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import BadAudioError, BadRequestError, OverloadedError, StreamClosedError, UnknownStreamError
from engine.events import ErrorEvent, FinalEvent, PartialEvent, WordsEvent
from engine.batch import EncodeRequest
from engine.core import Engine
from engine.transcribe import transcribe

from .conftest import noise

CHUNK = 1600  # 100 ms


def run_streams(scheduler: Engine, audio: dict[str, np.ndarray], language: str = "en") -> dict[str, list]:
    """Feed all streams chunk by chunk in lockstep, run the engine dry after each round; words per stream."""
    words: dict[str, list] = {sid: [] for sid in audio}
    finished: set[str] = set()

    def collect(events) -> None:
        for event in events:
            assert not isinstance(event, ErrorEvent), event
            if isinstance(event, WordsEvent | FinalEvent):
                words[event.stream_id] += [(w.text, w.start, w.end) for w in event.words]
            if isinstance(event, FinalEvent):
                finished.add(event.stream_id)

    for sid in audio:
        scheduler.open(sid, language)
    longest = max(len(a) for a in audio.values())
    for begin in range(0, longest, CHUNK):
        for sid, samples in audio.items():
            if begin < len(samples):
                scheduler.feed(sid, samples[begin : begin + CHUNK])
            elif begin - CHUNK < len(samples):
                scheduler.end(sid)
        while scheduler.has_work():
            collect(scheduler.step().events)
    for sid, samples in audio.items():
        if sid not in finished and scheduler.scheduler._streams[sid].status.value == "open":
            scheduler.end(sid)
    while len(finished) < len(audio):
        collect(scheduler.step().events)
    return words


AUDIO = {f"s{i}": noise(2.5 + 0.7 * i, seed=100 + i) for i in range(8)}


def test_batch_of_eight_equals_each_alone(make_scheduler) -> None:
    together = run_streams(make_scheduler(max_streams=8, max_batch=8), AUDIO)
    assert sum(len(w) for w in together.values()) > 20  # the model does commit words
    for sid, samples in AUDIO.items():
        alone = run_streams(make_scheduler(max_streams=1, max_batch=1), {sid: samples})
        assert together[sid] == alone[sid], sid


def test_steps_really_batch(make_scheduler) -> None:
    scheduler = make_scheduler(max_streams=8, max_batch=8)
    for sid in AUDIO:
        scheduler.open(sid, "en")
        scheduler.feed(sid, AUDIO[sid][:16_000])
    result = scheduler.step()
    assert result.stats.batch == result.stats.new_rows == 8 and result.stats.forwards == 1


def test_a_stream_ready_mid_step_joins_the_next_forward(make_scheduler) -> None:
    """Continuous batching: B does not wait for A's step to end; both decode in one forward."""
    scheduler = make_scheduler(max_streams=2, max_batch=2, fixed_tokens_per_s=8.0, partial_tokens=0)
    scheduler.open("a", "en")
    scheduler.open("b", "en")
    scheduler.feed("a", AUDIO["s0"][:16_000])
    first = scheduler.step()
    assert (first.stats.batch, first.stats.new_rows) == (1, 1)
    scheduler.feed("b", AUDIO["s1"][:16_000])
    second = scheduler.step()
    assert (second.stats.batch, second.stats.new_rows) == (2, 1)
    assert second.stats.steps == 0  # a's step (8 tokens for 1 s) is still going


def test_prefix_reuse_on_equals_off(make_scheduler) -> None:
    audio = {"long": noise(21.0, seed=7)}
    on, off = make_scheduler(), make_scheduler(reuse_prefix=False)
    prefill = {}
    for name, scheduler in (("on", on), ("off", off)):
        original = scheduler.step
        counted = []

        def counting_step(original=original, counted=counted):
            result = original()
            counted.append(result.stats.prefill_tokens)
            return result

        scheduler.step = counting_step
        words = run_streams(scheduler, audio)
        prefill[name] = (words, sum(counted))
    assert prefill["on"][0] == prefill["off"][0]
    assert len(prefill["on"][0]["long"]) > 10
    # Reuse skips the stable prefix (complete windows): far fewer prompt positions.
    assert prefill["on"][1] < 0.6 * prefill["off"][1]


def test_cache_equals_full_encode_after_trims(make_scheduler) -> None:
    scheduler = make_scheduler(max_buffer_s=16.0)
    scheduler.open("a", "en")
    samples = noise(45.0, seed=11)
    for begin in range(0, len(samples), CHUNK):
        scheduler.feed("a", samples[begin : begin + CHUNK])
        while scheduler.has_work():
            scheduler.step()
        state = scheduler.scheduler._streams["a"]
        # The buffer stays bounded: max_buffer_s + one window + one step.
        assert state.buffer_frames <= (16.0 + 8.0 + 2.0) * 100
    assert state.buffer_start > 0  # windows were trimmed from the front
    assert state.cached_windows >= 1
    n_cached = state.cached_windows * scheduler.scheduler.grid.tokens_per_window
    cached = scheduler.runner.audio[state.slot, :n_cached]
    (full,) = scheduler.runner.encode([EncodeRequest(state.buffer.frames)])
    # Tolerance 1e-5 of the largest activation: same kernels, other batch composition.
    torch.testing.assert_close(cached, full[:n_cached], rtol=0, atol=1e-5 * float(full.abs().max()))


def test_streams_open_and_close_while_others_run(make_scheduler) -> None:
    scheduler = make_scheduler(max_streams=2, max_batch=2)
    a, b, c = noise(6.0, seed=1), noise(6.0, seed=2), noise(3.0, seed=3)
    events = []
    scheduler.open("a", "en")
    for i in range(0, 40):
        scheduler.feed("a", a[i * CHUNK : (i + 1) * CHUNK])
        if i == 10:
            scheduler.open("b", "en")
        if i >= 10:
            scheduler.feed("b", b[(i - 10) * CHUNK : (i - 9) * CHUNK])
        if i == 30:
            scheduler.end("a")
            break
        events += scheduler.step().events
    while not any(isinstance(e, FinalEvent) and e.stream_id == "a" for e in events):
        events += scheduler.step().events
    assert scheduler.free_slots == 1
    scheduler.open("c", "en")  # a's slot is free again
    for i in range(0, len(c), CHUNK):
        scheduler.feed("c", c[i : i + CHUNK])
        scheduler.feed("b", b[(21 * CHUNK + i) : (21 * CHUNK + i + CHUNK)])
        events += scheduler.step().events
    scheduler.end("b")
    scheduler.end("c")
    while sum(isinstance(e, FinalEvent) for e in events) < 3:
        events += scheduler.step().events
    assert scheduler.open_streams == 0 and scheduler.free_slots == 2
    assert {e.stream_id for e in events if isinstance(e, WordsEvent)} >= {"a", "b"}
    assert any(isinstance(e, PartialEvent) for e in events)


def test_bad_input_errors_and_other_streams_keep_running(make_scheduler) -> None:
    reference = run_streams(make_scheduler(), {"good": AUDIO["s3"]})
    scheduler = make_scheduler()
    scheduler.open("bad", "en")
    scheduler.feed("bad", noise(0.6, seed=1))
    bad_inputs = [
        np.array([0.1, np.nan], np.float32),
        np.array([0.1, np.inf], np.float32),
        np.zeros(100, np.float64),
        np.zeros(0, np.float32),
        np.zeros(16_000 * 31, np.float32),
    ]
    good = AUDIO["s3"]
    words, finished = [], False
    scheduler.open("good", "en")
    for i, begin in enumerate(range(0, len(good), CHUNK)):
        scheduler.feed("good", good[begin : begin + CHUNK])
        if i < len(bad_inputs):
            with pytest.raises(BadAudioError):
                scheduler.feed("bad", bad_inputs[i])
        if i == 6:
            with pytest.raises(BadAudioError, match="sample rate"):
                scheduler.feed("bad", noise(0.1, seed=2), sample_rate=8000)
        while scheduler.has_work():
            for event in scheduler.step().events:
                if event.stream_id == "good" and isinstance(event, WordsEvent):
                    words += [(w.text, w.start, w.end) for w in event.words]
    scheduler.end("good")
    scheduler.end("bad")
    while not finished:
        for event in scheduler.step().events:
            if event.stream_id == "good" and isinstance(event, FinalEvent):
                words += [(w.text, w.start, w.end) for w in event.words]
                finished = True
    assert words == reference["good"]


def test_stream_lifecycle_errors(make_scheduler) -> None:
    scheduler = make_scheduler(max_streams=2, max_backlog_s=3.0)
    with pytest.raises(UnknownStreamError):
        scheduler.feed("nope", noise(0.1, seed=1))
    scheduler.open("a", "en")
    with pytest.raises(BadRequestError):
        scheduler.open("a", "en")
    with pytest.raises(BadRequestError):
        scheduler.open("x", "klingon")
    scheduler.open("b")
    with pytest.raises(OverloadedError, match="no free stream slot"):
        scheduler.open("c")
    scheduler.feed("b", noise(2.9, seed=1))
    with pytest.raises(OverloadedError, match="waiting"):
        scheduler.feed("b", noise(0.2, seed=2))
    scheduler.feed("a", noise(1.0, seed=3))
    scheduler.end("a")
    with pytest.raises(StreamClosedError):
        scheduler.feed("a", noise(0.1, seed=4))
    while scheduler.open_streams == 2:
        scheduler.step()
    with pytest.raises(StreamClosedError, match="ended"):
        scheduler.feed("a", noise(0.1, seed=4))
    scheduler.abort("b")
    scheduler.step()
    assert scheduler.free_slots == 2


def test_failed_step_is_contained_to_its_batch(make_scheduler, monkeypatch) -> None:
    scheduler = make_scheduler(max_streams=3, max_batch=2)
    for sid in ("a", "b", "c"):
        scheduler.open(sid, "en")
    scheduler.feed("a", noise(0.6, seed=1))
    scheduler.feed("b", noise(0.6, seed=2))
    original = scheduler.runner.forward
    monkeypatch.setattr(scheduler.runner, "forward", lambda batch: (_ for _ in ()).throw(RuntimeError("boom")))
    events = scheduler.step().events
    assert sorted(e.stream_id for e in events if isinstance(e, ErrorEvent)) == ["a", "b"]
    monkeypatch.setattr(scheduler.runner, "forward", original)
    with pytest.raises(StreamClosedError):
        scheduler.feed("a", noise(0.1, seed=1))
    assert scheduler.free_slots == 2
    scheduler.feed("c", noise(0.6, seed=3))
    scheduler.end("c")
    events = []
    while not any(isinstance(e, FinalEvent) for e in events):
        events += scheduler.step().events
    assert not any(isinstance(e, ErrorEvent) for e in events)


def test_auto_language_on_random_model_commits_nothing(make_scheduler) -> None:
    # A random model never writes "language X<asr_text>": nothing is committed,
    # and the stream still ends cleanly.
    words = run_streams(make_scheduler(), {"auto": noise(3.0, seed=5)}, language="auto")
    assert words["auto"] == []


def test_open_with_context_puts_committed_text_in_the_prompt(make_scheduler) -> None:
    """A re-homed stream starts with the text committed elsewhere as its prompt context."""
    scheduler = make_scheduler(context_max_tokens=4)
    text = "alpha beta gamma delta epsilon"
    ids = scheduler.model.tokenizer.encode(" " + text, add_special_tokens=False)
    assert len(ids) > 4
    scheduler.open("re", "en", context=text)
    scheduler.open("plain", "en")
    state, plain = scheduler.scheduler._streams["re"], scheduler.scheduler._streams["plain"]
    assert state.context == ids[-4:]
    assert plain.context == []
    for sid in ("re", "plain"):
        scheduler.feed(sid, noise(0.6, seed=9))
    scheduler.scheduler._take_audio(state)
    scheduler.scheduler._take_audio(plain)
    with_context = scheduler.scheduler._row(state, False).layout.ids
    without = scheduler.scheduler._row(plain, False).layout.ids
    assert len(with_context) == len(without) + 4
    assert any(with_context[i : i + 4] == ids[-4:] for i in range(len(with_context)))


def test_stream_ending_on_a_window_boundary_finishes(make_scheduler) -> None:
    """The final step of a buffer that is whole encoder windows has no tail to encode.

    8.008 s is 800 mel frames, one window. Fed at once, the first step caches
    that window; the final step must go straight to decoding (it once sent
    the encoder an empty batch and failed the stream).
    """
    scheduler = make_scheduler(max_chunk_s=10.0, max_step_s=10.0, max_backlog_s=10.0)
    result = transcribe(scheduler, noise(128_133 / 16_000, seed=11), chunk_ms=10_000, language="en")
    assert result.audio_s > 8.0
