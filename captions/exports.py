"""Committed words to caption files: JSON, WebVTT and SRT (pure functions).

Cues follow common subtitle practice: at most `max_chars` per line and
`max_lines` lines per cue, at most `max_cue_s` on screen, and a new cue after
a pause longer than `pause_s` or after a word that ended an utterance (the
service's voice activity detection saw the speaker stop). Words are never split; a word longer than a
line gets a line of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence


class TimedWord(Protocol):
    """Anything with a text and a time span in seconds (stored or engine words)."""

    @property
    def text(self) -> str: ...

    @property
    def start(self) -> float: ...

    @property
    def end(self) -> float: ...

    @property
    def utterance_end(self) -> bool: ...


@dataclass(frozen=True)
class CueRules:
    """How words are grouped into cues."""

    max_chars: int = 42  # per line (BBC/Netflix guidance for Latin scripts)
    max_lines: int = 2
    max_cue_s: float = 6.0
    pause_s: float = 0.8  # a longer silence between words starts a new cue


@dataclass
class Cue:
    """One caption on screen: its lines of text and its time span."""

    start: float
    end: float
    lines: list[list[str]] = field(default_factory=lambda: [[]])

    def text_lines(self) -> list[str]:
        return [" ".join(line) for line in self.lines if line]


def build_cues(words: Sequence[TimedWord], rules: CueRules = CueRules()) -> list[Cue]:
    """Group words, in time order, into cues."""
    cues: list[Cue] = []
    cue: Cue | None = None
    prev_end = 0.0
    broken = False  # the previous word ended an utterance
    for word in words:
        text = word.text.strip()
        if not text:
            continue
        if (cue is None or broken or word.start - prev_end > rules.pause_s
                or word.end - cue.start > rules.max_cue_s):
            cue = _new_cue(cues, word, text)
        else:
            line = cue.lines[-1]
            if len(" ".join(line + [text])) <= rules.max_chars:
                line.append(text)
            elif len(cue.lines) < rules.max_lines:
                cue.lines.append([text])
            else:
                cue = _new_cue(cues, word, text)
        cue.end = max(cue.end, word.end)
        prev_end = word.end
        broken = word.utterance_end
    return cues


def _new_cue(cues: list[Cue], word: TimedWord, text: str) -> Cue:
    cue = Cue(start=word.start, end=word.end, lines=[[text]])
    cues.append(cue)
    return cue


def timestamp(seconds: float, decimal: str) -> str:
    """HH:MM:SS<decimal>mmm, hours growing past 99 if need be."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def _span(cue: Cue, decimal: str) -> str:
    # A cue must end after it starts; zero-length words would make players drop it.
    end = max(cue.end, cue.start + 0.001)
    return f"{timestamp(cue.start, decimal)} --> {timestamp(end, decimal)}"


def _vtt_escape(text: str) -> str:
    # WebVTT cue text is markup: & and < must be escaped, and > so "-->" cannot appear.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(words: Sequence[TimedWord], rules: CueRules = CueRules()) -> str:
    """A WebVTT document (timestamps like 00:00:01.234)."""
    blocks = ["WEBVTT"]
    for cue in build_cues(words, rules):
        blocks.append("\n".join([_span(cue, "."), *(_vtt_escape(line) for line in cue.text_lines())]))
    return "\n\n".join(blocks) + "\n"


def to_srt(words: Sequence[TimedWord], rules: CueRules = CueRules()) -> str:
    """A SubRip document (numbered cues, timestamps like 00:00:01,234); empty if no words."""
    blocks = [
        "\n".join([str(index), _span(cue, ","), *cue.text_lines()])
        for index, cue in enumerate(build_cues(words, rules), start=1)
    ]
    return "".join(block + "\n\n" for block in blocks)


def to_json(words: Sequence[TimedWord], meta: dict[str, object]) -> dict[str, object]:
    """The transcript as a JSON-ready dict: `meta` (stream fields), the text and the timed words."""
    return {
        **meta,
        "text": " ".join(w.text.strip() for w in words if w.text.strip()),
        "words": [_word_json(w) for w in words],
    }


def _word_json(word: TimedWord) -> dict[str, object]:
    out: dict[str, object] = {"text": word.text, "start": round(word.start, 3), "end": round(word.end, 3)}
    if word.utterance_end:
        out["utterance_end"] = True
    return out
