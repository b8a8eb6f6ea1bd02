"""Tokens to timed words, and which committed text survives a trim."""

from __future__ import annotations

import numpy as np

from engine.stream import Inbox, Pause, keep_from
from engine.transcript import MAX_TAIL_S, WordAssembler
from engine.vocab import TokenTable

# ids: 0 " the", 1 " cat", 2 " win", 3 "dow", 4 ",", 5 "<eos>", 6 "caf", 7 b"\xc3", 8 b"\xa9"
PIECES = (b" the", b" cat", b" win", b"dow", b",", b"<|im_end|>", b" caf", b"\xc3", b"\xa9")
TABLE = TokenTable(
    pieces=PIECES,
    starts_word=np.array([p[:1] == b" " for p in PIECES]),
    special=np.array([False, False, False, False, False, True, False, False, False]),
    eos_ids=frozenset({5}),
    asr_text_id=99,
)


def test_words_emit_when_next_word_starts() -> None:
    asm = WordAssembler(TABLE)
    assert asm.add([(0, 1.0)]) == []  # "the" may still continue
    words = asm.add([(1, 1.3), (2, 1.6), (3, 1.75)])
    assert [w.text for w in words] == ["the", "cat"]
    assert words[0].start == 1.0 and words[0].end == 1.3
    assert asm.pending_text() == "window"


def test_word_end_is_capped_after_a_pause() -> None:
    asm = WordAssembler(TABLE)
    asm.add([(0, 1.0)])
    (word,) = asm.add([(1, 4.0)])
    assert word.end == 1.0 + MAX_TAIL_S


def test_boundary_and_flush() -> None:
    asm = WordAssembler(TABLE)
    asm.add([(2, 2.0), (3, 2.1), (4, 2.2)])
    (word,) = asm.close_word(2.4)
    assert (word.text, word.start, word.end) == ("window,", 2.0, 2.4)
    assert asm.close_word(3.0) == []
    asm.add([(6, 3.0), (7, 3.1), (8, 3.1)])  # "café" split inside a UTF-8 character
    (word,) = asm.flush(3.5)
    assert word.text == "café"


def test_keep_from_keeps_the_word_straddling_the_boundary() -> None:
    committed = [(0, 7.0), (2, 7.7), (3, 7.95), (1, 8.3)]
    # "window" starts before 8.0 s: keep it (index 1) with everything after.
    assert keep_from(committed, 8.0, TABLE) == 1
    assert keep_from(committed, 6.0, TABLE) == 0
    assert keep_from(committed, 9.0, TABLE) == 3


def test_inbox_take_is_bounded_and_ordered() -> None:
    inbox = Inbox()
    inbox.put(np.arange(5, dtype=np.float32))
    inbox.put(np.arange(5, 8, dtype=np.float32))
    audio, pause = inbox.take(6)
    assert audio.tolist() == [0, 1, 2, 3, 4, 5] and pause is None
    assert inbox.samples == 2
    inbox.put_pause(160)
    inbox.put(np.arange(8, 10, dtype=np.float32))
    # Audio stops at a pause; the pause comes with the audio before it, the audio after waits.
    audio, pause = inbox.take(10)
    assert audio.tolist() == [6, 7] and pause == Pause(160)
    assert inbox.take(10)[0].tolist() == [8, 9]
    assert inbox.samples == 0
