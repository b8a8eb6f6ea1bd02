"""One step of batched greedy decoding with the AlignAtt policy.

All rows are prefilled in one forward, then decoded one token per forward,
each row leaving the batch on its own verdict: end of text, the policy's
border or rewind, or its token budget. A row whose language is not known yet
first generates "language <Name><asr_text>" (metadata, not subject to the
policy). After a border stop a row may decode a few tentative tokens for the
`partial` caption; they are never committed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from engine.languages import QWEN_LANGUAGES
from engine.policy import PolicyConfig, Verdict, decide
from engine.prompt import PromptLayout
from engine.runner import ForwardBatch, ForwardOut, ModelRunner
from engine.timing import AudioGrid
from engine.vocab import TokenTable

log = logging.getLogger(__name__)

# "language <Name><asr_text>" takes a handful of tokens; more means the model is off track.
MAX_META_TOKENS = 8


class Stop(Enum):
    EOS = "eos"
    BORDER = "border"
    REWIND = "rewind"
    BUDGET = "budget"
    NO_SPEECH = "no_speech"


class _Phase(Enum):
    META = 0
    TEXT = 1
    TENTATIVE = 2
    DONE = 3


@dataclass(frozen=True)
class RowPlan:
    """What one stream asks of this step."""

    stream_id: str
    slot: int
    layout: PromptLayout
    reuse: int  # prompt positions whose key/values are valid in the slot
    audio_start_s: float  # stream time of the first audio token
    audio_end_s: float  # stream time of the end of the audio
    last_s: float  # where the previous committed token looked
    final: bool  # stream ended: no border, decode to the end
    need_language: bool
    budget: int  # transcript tokens this step may commit
    partial_tokens: int


@dataclass
class RowResult:
    """What one row produced."""

    stop: Stop = Stop.BUDGET
    committed: list[tuple[int, float]] = field(default_factory=list)
    meta: list[int] = field(default_factory=list)
    language: str | None = None
    # Time of the first token that was not committed and starts a word (or end of text).
    boundary_s: float | None = None
    tentative: list[int] = field(default_factory=list)
    last_s: float = float("-inf")


@dataclass
class _Row:
    plan: RowPlan
    result: RowResult
    phase: _Phase
    position: int  # prompt position of the next token to feed
    last_token: int = -1


@dataclass
class StepDecode:
    """Results in plan order, with the work it took."""

    results: list[RowResult]
    forwards: int
    prefill_s: float


def run_step(
    runner: ModelRunner,
    plans: list[RowPlan],
    table: TokenTable,
    grid: AudioGrid,
    policy: PolicyConfig,
    fixed_tokens: bool = False,
) -> StepDecode:
    """Decode every plan (prefill, then one token per forward)."""
    rows = [
        _Row(p, RowResult(last_s=p.last_s), _Phase.META if p.need_language else _Phase.TEXT, len(p.layout.ids))
        for p in plans
    ]
    started = time.perf_counter()
    out = runner.forward(_prefill_batch(plans))
    prefill_s = time.perf_counter() - started
    forwards = 1
    active = list(range(len(rows)))
    while active:
        _advance([rows[i] for i in active], out, table, grid, policy, fixed_tokens)
        active = [i for i in active if rows[i].phase is not _Phase.DONE]
        if active:
            out = runner.forward(_decode_batch([rows[i] for i in active]))
            forwards += 1
            for i in active:
                rows[i].position += 1
    return StepDecode([row.result for row in rows], forwards, prefill_s)


def _prefill_batch(plans: list[RowPlan]) -> ForwardBatch:
    lengths = np.array([len(p.layout.ids) - p.reuse for p in plans])
    ids = np.zeros((len(plans), int(lengths.max())), dtype=np.int64)
    for b, p in enumerate(plans):
        ids[b, : lengths[b]] = p.layout.ids[p.reuse :]
    return ForwardBatch(
        slots=np.array([p.slot for p in plans]),
        start=np.array([p.reuse for p in plans]),
        ids=ids,
        lengths=lengths,
        audio_pos=np.array([p.layout.audio_pos for p in plans]),
        n_audio=np.array([p.layout.n_audio for p in plans]),
    )


def _decode_batch(rows: list[_Row]) -> ForwardBatch:
    """Feed each row's last token at its next position."""
    return ForwardBatch(
        slots=np.array([r.plan.slot for r in rows]),
        start=np.array([r.position for r in rows]),
        ids=np.array([r.last_token for r in rows], dtype=np.int64)[:, None],
        lengths=np.ones(len(rows), dtype=np.int64),
        audio_pos=np.array([r.plan.layout.audio_pos for r in rows]),
        n_audio=np.array([r.plan.layout.n_audio for r in rows]),
    )


def _advance(
    rows: list[_Row], out: ForwardOut, table: TokenTable, grid: AudioGrid, policy: PolicyConfig, fixed: bool
) -> None:
    """Apply one produced token to each row."""
    start = np.array([r.plan.audio_start_s for r in rows])
    times = grid.token_time(out.frames.astype(np.float64)) + start[:, None]
    verdicts, attended = decide(
        times,
        np.array([r.plan.audio_end_s for r in rows]),
        np.array([r.result.last_s for r in rows]),
        np.array([r.plan.final for r in rows]),
        policy,
    )
    for b, row in enumerate(rows):
        token = int(out.tokens[b])
        row.last_token = token
        if row.phase is _Phase.META:
            _meta_token(row, token, table)
        elif row.phase is _Phase.TEXT:
            _text_token(row, token, Verdict(verdicts[b]), float(attended[b]), table, fixed)
        else:
            _tentative_token(row, token, table)


def _meta_token(row: _Row, token: int, table: TokenTable) -> None:
    result = row.result
    if token in table.eos_ids or len(result.meta) >= MAX_META_TOKENS:
        _finish(row, Stop.NO_SPEECH)
        return
    result.meta.append(token)
    if token != table.asr_text_id:
        return
    words = table.text(result.meta[:-1]).split()
    name = words[-1] if words else "None"
    if name not in QWEN_LANGUAGES:
        # "language None": the model hears no speech.
        _finish(row, Stop.NO_SPEECH)
        return
    result.language = name
    row.phase = _Phase.TEXT


def _text_token(row: _Row, token: int, verdict: Verdict, attended: float, table: TokenTable, fixed: bool) -> None:
    result, plan = row.result, row.plan
    if fixed:
        result.committed.append((token, attended))
        if len(result.committed) >= plan.budget:
            _finish(row, Stop.BUDGET)
        return
    if table.special[token]:
        # End of text (or a stray control token, which ends it just the same).
        result.boundary_s = plan.audio_end_s
        _finish(row, Stop.EOS)
        return
    if verdict is Verdict.CONTINUE:
        result.committed.append((token, attended))
        result.last_s = attended
        if len(result.committed) >= plan.budget:
            _finish(row, Stop.BUDGET)
        return
    if verdict is Verdict.REWIND:
        _finish(row, Stop.REWIND)
        return
    if table.starts_word[token]:
        result.boundary_s = attended
    result.stop = Stop.BORDER
    if plan.partial_tokens > 0 and not table.special[token]:
        result.tentative.append(token)
        row.phase = _Phase.TENTATIVE
    else:
        row.phase = _Phase.DONE


def _tentative_token(row: _Row, token: int, table: TokenTable) -> None:
    if table.special[token]:
        row.phase = _Phase.DONE
        return
    row.result.tentative.append(token)
    if len(row.result.tentative) > row.plan.partial_tokens:
        row.phase = _Phase.DONE


def _finish(row: _Row, stop: Stop) -> None:
    row.result.stop = stop
    row.phase = _Phase.DONE
