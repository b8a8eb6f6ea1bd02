"""Caption files from words: line splitting, cue limits, timestamp formats."""

from __future__ import annotations

from dataclasses import dataclass

from captions.exports import CueRules, build_cues, timestamp, to_json, to_srt, to_vtt


@dataclass(frozen=True)
class W:
    text: str
    start: float
    end: float
    utterance_end: bool = False


def steady(texts: list[str], step: float = 0.3, t0: float = 0.0) -> list[W]:
    """Words back to back, `step` seconds each."""
    return [W(t, t0 + i * step, t0 + (i + 1) * step) for i, t in enumerate(texts)]


def test_timestamps_in_both_formats_with_hours():
    assert timestamp(1.234, ".") == "00:00:01.234"
    assert timestamp(1.234, ",") == "00:00:01,234"
    assert timestamp(3 * 3600 + 25 * 60 + 7.5, ".") == "03:25:07.500"
    # Rounding carries into seconds rather than printing 1000 ms.
    assert timestamp(59.9996, ".") == "00:01:00.000"


def test_empty_transcript():
    assert to_vtt([]) == "WEBVTT\n"
    assert to_srt([]) == ""
    assert to_json([], {"stream_id": "s"}) == {"stream_id": "s", "text": "", "words": []}


def test_lines_respect_max_chars_and_cues_max_lines():
    words = steady(["word%02d" % i for i in range(40)], step=0.1)  # 6 chars each, 4 s in all
    cues = build_cues(words)
    for cue in cues:
        assert 1 <= len(cue.text_lines()) <= 2
        assert all(len(line) <= 42 for line in cue.text_lines())
    # 6 words of 6 chars fit a 42-char line (6*6 + 5 spaces = 41), so 12 words per cue.
    assert [len(" ".join(c.text_lines()).split()) for c in cues] == [12, 12, 12, 4]
    assert [w for c in cues for line in c.lines for w in line] == [w.text for w in words]


def test_pause_starts_a_new_cue():
    words = steady(["hello", "there"]) + steady(["again"], t0=0.6 + 1.0)
    cues = build_cues(words)
    assert [c.text_lines() for c in cues] == [["hello there"], ["again"]]
    assert (cues[0].start, cues[0].end) == (0.0, 0.6)


def test_cue_duration_is_bounded():
    words = steady(["a"] * 30, step=0.5)  # short words, 15 s of speech without pauses
    cues = build_cues(words, CueRules(max_cue_s=6.0))
    assert len(cues) == 3
    assert all(c.end - c.start <= 6.0 for c in cues)


def test_single_very_long_word_gets_its_own_line():
    long = "x" * 60
    cues = build_cues(steady(["short", long, "tail"]))
    assert [c.text_lines() for c in cues] == [["short", long], ["tail"]]


def test_vtt_document_and_escaping():
    vtt = to_vtt(steady(["a<b", "&", "c"]) + steady(["3600"], t0=3600.0))
    assert vtt == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:00.900\na&lt;b &amp; c\n\n"
        "01:00:00.000 --> 01:00:00.300\n3600\n"
    )


def test_srt_document_numbers_cues_and_uses_commas():
    srt = to_srt(steady(["one", "two"]) + steady(["three"], t0=5.0))
    assert srt == (
        "1\n00:00:00,000 --> 00:00:00,600\none two\n\n"
        "2\n00:00:05,000 --> 00:00:05,300\nthree\n\n"
    )


def test_zero_length_word_still_makes_a_valid_cue():
    assert "00:00:02.000 --> 00:00:02.001" in to_vtt([W("blip", 2.0, 2.0)])


def test_json_keeps_meta_words_and_text():
    doc = to_json([W("hi", 0.1234, 0.5), W("there", 0.5, 0.9)], {"stream_id": "s1", "language": "en"})
    assert doc == {
        "stream_id": "s1",
        "language": "en",
        "text": "hi there",
        "words": [{"text": "hi", "start": 0.123, "end": 0.5}, {"text": "there", "start": 0.5, "end": 0.9}],
    }


def test_an_utterance_end_starts_a_new_cue_and_is_in_the_json():
    words = steady(["one", "two"]) + [W("three", 0.6, 0.9, utterance_end=True)] + steady(["four"], t0=0.9)
    assert [cue.text_lines() for cue in build_cues(words)] == [["one two three"], ["four"]]
    assert to_json(words, {})["words"][2] == {"text": "three", "start": 0.6, "end": 0.9, "utterance_end": True}
