"""Committed tokens to timed words.

Each committed token carries the time its alignment heads attended to. A
word starts at its first token's time. It is emitted once it is known to be
complete: the next token starts a new word (a committed one, or the
uncommitted token at which the policy paused), the decoder ended the text,
or the stream ended. Its end is the next word's start, capped at
`max_tail_s` after its last token (so a pause after a word does not stretch
it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.vocab import TokenTable

# A word ends at most this long after its last token's attended time.
MAX_TAIL_S = 0.32
# Never report a word shorter than one encoder token.
MIN_WORD_S = 0.08


@dataclass(frozen=True)
class Word:
    """A committed word with its audio time span in seconds of the stream."""

    text: str
    start: float
    end: float

    def as_dict(self) -> dict[str, float | str]:
        return {"text": self.text, "start": round(self.start, 3), "end": round(self.end, 3)}


@dataclass
class WordAssembler:
    """The word in progress of one stream; turns committed tokens into Words."""

    table: TokenTable
    pending: list[tuple[int, float]] = field(default_factory=list)

    def add(self, tokens: list[tuple[int, float]]) -> list[Word]:
        """Append committed (id, time) tokens; return the words they complete."""
        words = []
        for token in tokens:
            if self.table.starts_word[token[0]] and self.pending:
                words.append(self._emit(token[1]))
            self.pending.append(token)
        return [w for w in words if w.text]

    def close_word(self, boundary_s: float) -> list[Word]:
        """The pending word is complete; the next word starts at `boundary_s`."""
        if not self.pending:
            return []
        word = self._emit(boundary_s)
        return [word] if word.text else []

    def flush(self, audio_end_s: float) -> list[Word]:
        """End of stream: emit the pending word."""
        return self.close_word(audio_end_s)

    def pending_text(self) -> str:
        return self.table.text([i for i, _ in self.pending]).strip()

    def _emit(self, boundary_s: float) -> Word:
        start, last = self.pending[0][1], max(t for _, t in self.pending)
        end = max(start + MIN_WORD_S, min(boundary_s, last + MAX_TAIL_S))
        text = self.table.text([i for i, _ in self.pending]).strip()
        self.pending = []
        return Word(text=text, start=start, end=end)
