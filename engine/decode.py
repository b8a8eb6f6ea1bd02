"""One stream's decoding step as a state machine over produced tokens (pure: no model).

A step starts with a prefill of the stream's prompt and goes on one token
per forward until the row stops on its own verdict: end of text, the
policy's border, rewind or repeat, or its token budget. A row whose
language is not known yet first generates "language <Name><asr_text>"
(metadata, not subject to the policy). After a border stop the row may
decode a few tentative tokens for the `partial` caption; they are never
committed. The scheduler keeps one RowStep per stream in flight and calls
`advance` with each forward's tokens, so rows join and leave the batch at
any forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from engine.languages import QWEN_LANGUAGES
from engine.policy import PolicyConfig, Rows, Verdict, decide
from engine.prompt import PromptLayout
from engine.timing import AudioGrid
from engine.vocab import TokenTable

# "language <Name><asr_text>" takes a handful of tokens; more means the model is off track.
MAX_META_TOKENS = 8


class Stop(Enum):
    EOS = "eos"
    BORDER = "border"
    REWIND = "rewind"
    REPEAT = "repeat"
    BUDGET = "budget"
    NO_SPEECH = "no_speech"


class Phase(Enum):
    META = 0
    TEXT = 1
    TENTATIVE = 2
    DONE = 3


@dataclass
class RowStep:
    """One stream's step in flight: what it asked for and what it has produced so far."""

    stream_id: str
    slot: int
    layout: PromptLayout
    reuse: int  # prompt positions whose key/values are valid in the slot before the prefill
    audio_start_s: float  # stream time of the first audio token
    audio_end_s: float  # stream time of the end of the audio
    final: bool  # stream ended: no border, decode to the end
    budget: int  # transcript tokens this step may commit
    partial_tokens: int
    phase: Phase
    # Where the last committed token looked, and the start and first token of the
    # last committed word (the stream's, until this step commits more).
    last_s: float
    last_word_s: float
    last_word_token: int
    # A word is in progress (committed tokens not yet a whole word). When none is, the
    # next token starts a word even without a leading space: the first token of a
    # transcript or of a restarted buffer has none, and it must be checked as one.
    word_open: bool = False
    # Prompt position of `last_token`, the token the next forward feeds.
    position: int = 0
    last_token: int = -1
    stop: Stop = Stop.BUDGET
    committed: list[tuple[int, float]] = field(default_factory=list)
    meta: list[int] = field(default_factory=list)
    language: str | None = None
    # Time of the first token that was not committed and starts a word (or end of text).
    boundary_s: float | None = None
    tentative: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The prefill's last position; the token it produces goes one after.
        self.position = len(self.layout.ids) - 1

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE


def advance(rows: list[RowStep], tokens: np.ndarray, frames: np.ndarray, table: TokenTable, grid: AudioGrid,
            policy: PolicyConfig, fixed: bool = False) -> None:
    """Apply one forward's greedy token (and its alignment-head argmax) to each row.

    tokens: int64[B]; frames: int64[B, heads] audio token indices relative to
    each row's first audio token. `fixed` (benchmarks on random weights):
    commit every token until the budget, ignoring end of text and the policy.
    """
    start = np.array([r.audio_start_s for r in rows])
    times = grid.token_time(frames.astype(np.float64)) + start[:, None]
    verdicts, attended = decide(
        times,
        Rows(
            audio_end_s=np.array([r.audio_end_s for r in rows]),
            last_s=np.array([r.last_s for r in rows]),
            new_word=_starts_word(rows, tokens, table),
            last_word_s=np.array([r.last_word_s for r in rows]),
            same_token=tokens == np.array([r.last_word_token for r in rows]),
            final=np.array([r.final for r in rows]),
        ),
        policy,
    )
    for b, row in enumerate(rows):
        token = int(tokens[b])
        row.last_token = token
        row.position += 1
        if row.phase is Phase.META:
            _meta_token(row, token, table)
        elif row.phase is Phase.TEXT:
            _text_token(row, token, Verdict(verdicts[b]), float(attended[b]), table, fixed)
        elif row.phase is Phase.TENTATIVE:
            _tentative_token(row, token, table)


def _starts_word(rows: list[RowStep], tokens: np.ndarray, table: TokenTable) -> np.ndarray:
    """bool[B]: the token begins a word (a leading space, or no word in progress)."""
    return table.starts_word[tokens] | ~np.array([r.word_open for r in rows], dtype=bool)


def _meta_token(row: RowStep, token: int, table: TokenTable) -> None:
    if token in table.eos_ids or len(row.meta) >= MAX_META_TOKENS:
        _finish(row, Stop.NO_SPEECH)
        return
    row.meta.append(token)
    if token != table.asr_text_id:
        return
    words = table.text(row.meta[:-1]).split()
    name = words[-1] if words else "None"
    if name not in QWEN_LANGUAGES:
        # "language None": the model hears no speech.
        _finish(row, Stop.NO_SPEECH)
        return
    row.language = name
    row.phase = Phase.TEXT


def _text_token(row: RowStep, token: int, verdict: Verdict, attended: float, table: TokenTable, fixed: bool) -> None:
    if fixed:
        row.committed.append((token, attended))
        if len(row.committed) >= row.budget:
            _finish(row, Stop.BUDGET)
        return
    if table.special[token]:
        # End of text (or a stray control token, which ends it just the same).
        row.boundary_s = row.audio_end_s
        _finish(row, Stop.EOS)
        return
    if verdict is Verdict.CONTINUE:
        row.committed.append((token, attended))
        row.last_s = attended
        if table.starts_word[token] or not row.word_open:
            row.last_word_s, row.last_word_token = attended, token
        row.word_open = True
        if len(row.committed) >= row.budget:
            _finish(row, Stop.BUDGET)
        return
    if verdict in (Verdict.REWIND, Verdict.REPEAT):
        if table.starts_word[token]:
            # The decoder wants a new word, so the word in progress is complete
            # (its end is capped just after its last token: see WordAssembler).
            row.boundary_s = row.audio_end_s
        _finish(row, Stop.REWIND if verdict is Verdict.REWIND else Stop.REPEAT)
        return
    if table.starts_word[token]:
        row.boundary_s = attended
    row.stop = Stop.BORDER
    if row.partial_tokens > 0:
        row.tentative.append(token)
        row.phase = Phase.TENTATIVE
    else:
        row.phase = Phase.DONE


def _tentative_token(row: RowStep, token: int, table: TokenTable) -> None:
    if table.special[token]:
        row.phase = Phase.DONE
        return
    row.tentative.append(token)
    if len(row.tentative) > row.partial_tokens:
        row.phase = Phase.DONE


def _finish(row: RowStep, stop: Stop) -> None:
    row.stop = stop
    row.phase = Phase.DONE
