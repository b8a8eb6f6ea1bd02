"""The scheduler alone, driven with hand-written runner outputs (no model, no tensors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer, WhisperFeatureExtractor

from engine.batch import RunnerOutput
from engine.config import EngineConfig
from engine.events import FinalEvent, PartialEvent, WordsEvent
from engine.features import MelFrontend
from engine.policy import PolicyConfig
from engine.prompt import PromptTemplate
from engine.scheduler import Scheduler
from engine.timing import AudioGrid
from engine.vocab import TokenTable

from .conftest import noise

MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "tiny-en"
AUDIO_TOKEN_ID = 5  # models/tiny-en/config.json
N_HEADS = 3


@pytest.fixture(scope="module")
def parts():
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    template = PromptTemplate.from_tokenizer(tokenizer, (MODEL_DIR / "chat_template.jinja").read_text(), AUDIO_TOKEN_ID)
    eos = tuple(tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    table = TokenTable.build(tokenizer, eos, len(tokenizer))
    frontend = MelFrontend(np.asarray(WhisperFeatureExtractor.from_pretrained(MODEL_DIR).mel_filters, np.float32))
    return tokenizer, template, table, frontend


def make(parts, **overrides) -> Scheduler:
    tokenizer, template, table, frontend = parts
    cfg = EngineConfig(policy=PolicyConfig(border_s=0.6, rewind_s=1.5), partial_tokens=1, **overrides)
    return Scheduler(cfg, AudioGrid.from_spec(50, 800), table, template, frontend, tokenizer)


def token(parts, word: str) -> int:
    (tid,) = parts[0].encode(f" {word}", add_special_tokens=False)
    return tid


def eos(parts) -> int:
    return parts[0].convert_tokens_to_ids("<|im_end|>")


def at(seconds: float) -> int:
    """The audio token index whose centre is `seconds` into the audio (13 tokens per 1 s chunk)."""
    chunk, within = divmod(seconds, 1.0)
    return int(chunk) * 13 + int(round(within * 100 / 8))


def output(*rows: tuple[int, float]) -> RunnerOutput:
    """One forward's result: per row, the greedy token and where all heads looked (seconds)."""
    return RunnerOutput(np.array([t for t, _ in rows], np.int64), np.array([[at(s)] * N_HEADS for _, s in rows]))


def test_a_ready_stream_is_prefilled_with_its_audio_encoded(parts) -> None:
    scheduler = make(parts)
    scheduler.open("a", "en")
    scheduler.feed("a", noise(0.4, seed=1))
    assert scheduler.schedule().empty  # less than min_step_s of audio
    scheduler.feed("a", noise(0.2, seed=2))
    sched = scheduler.schedule()
    (request,) = sched.plan.encode
    assert request.slot == sched.rows[0].slot and request.store_at == 0 and request.mel.shape == (128, 59)  # 12.5 ms of STFT look-ahead
    forward = sched.plan.forward
    assert forward.lengths.tolist() == [len(sched.rows[0].layout.ids)] and forward.start.tolist() == [0]
    assert sched.plan.prefill_rows == 1 and forward.n_audio.tolist() == [8]


def test_tokens_become_timed_words_and_the_row_leaves_at_end_of_text(parts) -> None:
    scheduler = make(parts)
    scheduler.open("a", "en")
    scheduler.feed("a", noise(2.0, seed=1))
    first = scheduler.schedule()
    row = first.rows[0]
    assert scheduler.update(first, output((token(parts, "dog"), 0.2))).events == []
    second = scheduler.schedule()
    # The row goes on with the token it produced, at the next position; no new prefill.
    assert second.plan.prefill_rows == 0
    assert second.plan.forward.ids.tolist() == [token(parts, "dog")]
    assert second.plan.forward.start.tolist() == [len(row.layout.ids)]
    scheduler.update(second, output((token(parts, "ran"), 0.56)))
    events = scheduler.update(scheduler.schedule(), output((eos(parts), 0.9))).events
    words = next(e for e in events if isinstance(e, WordsEvent)).words
    assert [(w.text, w.start) for w in words] == [("dog", pytest.approx(0.16)), ("ran", pytest.approx(0.56))]
    assert scheduler.schedule().empty  # the step is over and no new audio is in


def test_border_stop_gives_a_partial_and_commits_nothing_near_the_end(parts) -> None:
    scheduler = make(parts)
    scheduler.open("a", "en")
    scheduler.feed("a", noise(1.0, seed=1))
    scheduler.update(scheduler.schedule(), output((token(parts, "dog"), 0.2)))
    # "ran" looks within border_s (0.6 s) of the end (1.0 s): not committed, shown tentatively.
    scheduler.update(scheduler.schedule(), output((token(parts, "ran"), 0.7)))
    events = scheduler.update(scheduler.schedule(), output((token(parts, "away"), 0.8))).events
    assert [e.text for e in events if isinstance(e, PartialEvent)] == ["ran away"]
    # "dog" is complete once the next word started (at its border stop).
    assert [w.text for e in events if isinstance(e, WordsEvent) for w in e.words] == ["dog"]


def test_a_word_is_never_committed_twice(parts) -> None:
    """The decoder re-reading committed audio ("south the south") stops the step instead."""
    scheduler = make(parts)
    scheduler.open("a", "en")
    scheduler.feed("a", noise(3.0, seed=1))
    for word, seconds in (("the", 0.3), ("south", 0.7)):
        scheduler.update(scheduler.schedule(), output((token(parts, word), seconds)))
    events = scheduler.update(scheduler.schedule(), output((token(parts, "the"), 0.3))).events
    # Repeat stop: "the" is not committed again, and "south" is complete.
    assert [w.text for e in events if isinstance(e, WordsEvent) for w in e.words] == ["the", "south"]
    scheduler.feed("a", noise(1.0, seed=2))
    scheduler.end("a")
    # Even the final flush (no border, no rewind) keeps the timeline moving forward.
    sched = scheduler.schedule()
    assert sched.rows[0].final
    events = scheduler.update(sched, output((token(parts, "south"), 0.7))).events
    (final,) = [e for e in events if isinstance(e, FinalEvent)]
    assert final.words == []


def test_a_first_token_without_a_space_still_counts_as_a_word_start(parts) -> None:
    """The first token of a transcript (or of a restarted buffer) has no leading space; it
    starts a word all the same, so a later word cannot start before it ("build" at 0.7 s
    then a word at 0.16 s came out of a random model before this was checked)."""
    (bare,) = parts[0].encode("dog", add_special_tokens=False)
    scheduler = make(parts)
    scheduler.open("a", "en")
    scheduler.feed("a", noise(3.0, seed=1))
    scheduler.update(scheduler.schedule(), output((bare, 0.7)))
    events = scheduler.update(scheduler.schedule(), output((token(parts, "cat"), 0.16))).events
    assert [w.text for e in events if isinstance(e, WordsEvent) for w in e.words] == ["dog"]


def test_a_stream_ready_mid_step_joins_the_next_forward_before_rows_in_flight(parts) -> None:
    scheduler = make(parts, max_batch=3)
    for sid in "abcd":
        scheduler.open(sid, "en")
    scheduler.feed("a", noise(1.0, seed=1))
    scheduler.update(scheduler.schedule(), output((token(parts, "dog"), 0.1)))
    for sid in "bcd":
        scheduler.feed(sid, noise(1.0, seed=2))
    sched = scheduler.schedule()
    # Room for two new rows beside a's: its prefill-free row comes last; d waits.
    assert [r.stream_id for r in sched.rows] == ["b", "c", "a"]
    assert sched.plan.forward.lengths.tolist()[-1] == 1 and sched.plan.prefill_rows == 2


def test_an_aborted_stream_leaves_its_step_and_frees_its_slot(parts) -> None:
    scheduler = make(parts, max_streams=1)
    scheduler.open("a", "en")
    scheduler.feed("a", noise(1.0, seed=1))
    scheduler.update(scheduler.schedule(), output((token(parts, "dog"), 0.1)))
    scheduler.abort("a")
    assert scheduler.schedule().empty
    assert scheduler.free_slots == 1 and scheduler.open_streams == 0


def test_a_failed_forward_ends_only_its_streams(parts) -> None:
    scheduler = make(parts, max_streams=3, max_batch=2)
    for sid in "abc":
        scheduler.open(sid, "en")
    scheduler.feed("a", noise(0.6, seed=1))
    scheduler.feed("b", noise(0.6, seed=1))
    sched = scheduler.schedule()
    events = scheduler.fail(sched, "boom").events
    assert sorted(e.stream_id for e in events) == ["a", "b"]
    assert scheduler.free_slots == 2 and scheduler.open_streams == 1


def test_the_buffer_restarts_after_an_utterance_and_its_text_becomes_context(parts) -> None:
    """End of text with endpoint_s of audio after the last word: one utterance per buffer."""
    scheduler = make(parts)
    scheduler.open("a", "en")
    scheduler.feed("a", noise(2.0, seed=1))
    scheduler.update(scheduler.schedule(), output((token(parts, "dog"), 0.16)))
    events = scheduler.update(scheduler.schedule(), output((eos(parts), 0.4))).events
    (words,) = [e.words for e in events if isinstance(e, WordsEvent)]
    assert words[0].end == pytest.approx(0.48)  # 0.32 s after its token: more than endpoint_s (1 s) before 2 s
    scheduler.feed("a", noise(0.5, seed=2))
    sched = scheduler.schedule()
    row = sched.rows[0]
    # The new buffer starts restart_margin_s (0.5 s) after the word's end and takes the new 0.5 s.
    assert row.audio_start_s == pytest.approx(0.98, abs=0.011)
    assert sched.plan.encode[0].mel.shape[1] == pytest.approx(152, abs=2) and sched.plan.encode[0].store_at == 0
    assert token(parts, "dog") in row.layout.ids[: row.layout.audio_pos]  # now context, before the audio
    assert sched.plan.forward.start.tolist() == [0]  # a new prompt: nothing reused


def test_no_restart_while_the_last_word_is_recent(parts) -> None:
    scheduler = make(parts)
    scheduler.open("a", "en")
    scheduler.feed("a", noise(2.0, seed=1))
    # "dog" is committed at 1.32 s: it ends at 1.64 s (0.32 s after its token), 0.36 s before the text ends.
    scheduler.update(scheduler.schedule(), output((token(parts, "dog"), 1.32)))
    scheduler.update(scheduler.schedule(), output((eos(parts), 1.4)))
    scheduler.feed("a", noise(0.5, seed=2))
    assert scheduler.schedule().rows[0].audio_start_s == 0.0


def test_a_pause_commits_the_utterance_at_once_and_keeps_the_stream_clock(parts) -> None:
    """VAD endpoint: no border wait for the last word; after the gap, times are stream times."""
    scheduler = make(parts)
    scheduler.open("a", "en")
    scheduler.feed("a", noise(1.0, seed=1))
    scheduler.update(scheduler.schedule(), output((token(parts, "dog"), 0.16)))
    # "ran" looks within border_s of the end: a border stop, not committed.
    events = scheduler.update(scheduler.schedule(), output((token(parts, "ran"), 0.56))).events
    assert not [w for e in events if isinstance(e, WordsEvent) for w in e.words if w.text == "ran"]
    while (sched := scheduler.schedule()).rows:  # the tentative tokens of the partial caption
        scheduler.update(sched, output((token(parts, "away"), 0.8)))
    scheduler.pause("a", 0)
    sched = scheduler.schedule()
    assert sched.rows[0].final and sched.rows[0].partial_tokens == 0  # decode to the end, no border
    scheduler.update(sched, output((token(parts, "ran"), 0.56)))
    events = scheduler.update(scheduler.schedule(), output((eos(parts), 0.8))).events
    (utterance,) = [e for e in events if isinstance(e, WordsEvent)]
    assert utterance.utterance_end and [w.text for w in utterance.words][-1] == "ran"
    # 3 s of silence left out, then new speech: its buffer starts at 4.0 s of stream time.
    scheduler.pause("a", 3 * 16_000)
    scheduler.feed("a", noise(1.0, seed=2))
    sched = scheduler.schedule()
    assert sched.rows[0].audio_start_s == pytest.approx(4.0, abs=0.01)
    assert token(parts, "ran") in sched.rows[0].layout.ids[: sched.rows[0].layout.audio_pos]  # context now
    scheduler.update(sched, output((token(parts, "game"), 0.2)))
    events = scheduler.update(scheduler.schedule(), output((eos(parts), 0.3))).events
    (words,) = [e.words for e in events if isinstance(e, WordsEvent)]
    assert words[0].text == "game" and words[0].start == pytest.approx(4.16, abs=0.01)


def test_steps_cut_the_audio_after_a_gap_where_they_would_without_it(parts) -> None:
    """A gap that arrives before the audio after it makes no step of its own: the next step
    waits for min_step_s of that audio, as when the gap comes with it (the service's words
    then do not depend on when the ingest's gate sent its pieces)."""

    def first_step_after_gap(gap_first: bool) -> float:
        scheduler = make(parts, min_step_s=0.5, max_step_s=0.5)
        scheduler.open("a", "en")
        scheduler.feed("a", noise(0.3, seed=1))
        scheduler.pause("a", 0)
        sched = scheduler.schedule()
        events = scheduler.update(sched, output((eos(parts), 0.1))).events
        assert sched.rows[0].final and not [e for e in events if isinstance(e, WordsEvent)]
        if gap_first:
            scheduler.pause("a", 8_000)
            scheduler.feed("a", noise(0.3, seed=2))
            assert scheduler.schedule().empty  # 0.3 s after the gap: not a step yet
            scheduler.feed("a", noise(0.4, seed=3))
        else:
            scheduler.pause("a", 8_000)
            scheduler.feed("a", np.concatenate([noise(0.3, seed=2), noise(0.4, seed=3)]))
        (row,) = scheduler.schedule().rows
        assert row.audio_start_s == pytest.approx(0.8, abs=0.01)
        return row.audio_end_s

    assert first_step_after_gap(True) == first_step_after_gap(False) == pytest.approx(1.3, abs=0.02)


def test_a_stream_of_only_silence_ends_with_an_empty_final(parts) -> None:
    scheduler = make(parts)
    scheduler.open("a", "en")
    scheduler.pause("a", 20 * 16_000)
    scheduler.end("a")
    (final,) = scheduler.schedule().events
    assert isinstance(final, FinalEvent) and final.words == [] and final.emitted_at == pytest.approx(20.0)
