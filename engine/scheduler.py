"""The scheduler: every stream of one model replica, and what each forward computes.

    schedule():  pick ready streams -> take their audio -> trim -> their
                 prompts and encoder tails, beside the rows already decoding
                 -> StepPlan (one forward)
    update():    apply the forward's tokens to each row (policy, commits);
                 rows that stopped publish their words

No model and no tensors here: the runner computes what the plan says
(engine/batch.py), and tests drive the scheduler with hand-written runner
outputs. A stream is in at most one step at a time; a step takes one
forward per token, and streams join or leave the batch at any forward, so a
stream that becomes ready never waits for another stream's step to end.

open/feed/end/abort may be called from any thread while a forward runs;
they touch only the stream table (under a lock) and each stream's inbox.
All other stream state is touched by the thread that calls schedule() and
update().
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from engine.audio import validate_chunk
from engine.batch import AudioMove, EncodeRequest, ForwardBatch, RunnerOutput, StepPlan
from engine.config import EngineConfig
from engine.decode import MAX_META_TOKENS, Phase, RowStep, Stop, advance
from engine.errors import BadRequestError, OverloadedError, StreamClosedError, UnknownStreamError
from engine.events import ErrorEvent, Event, FinalEvent, PartialEvent, StepResult, WordsEvent
from engine.features import FRAMES_PER_S, HOP, SAMPLE_RATE, MelFrontend, StreamingMel
from engine.languages import language_code, resolve_language
from engine.prompt import PromptTemplate
from engine.stream import Flush, MelBuffer, Status, StreamState, keep_from
from engine.timing import AudioGrid
from engine.transcript import WordAssembler
from engine.vocab import TokenTable

log = logging.getLogger(__name__)

# Ended stream ids remembered so that late calls get "stream closed", not "unknown".
_RECENTLY_CLOSED = 4096
# The end-of-stream flush emits the last frames under the STFT's look-ahead
# (at most 2 at 16 kHz) on top of a full buffer; 8 leaves room.
_FLUSH_FRAMES = 8
# A step feeds the token that stopped it (border or end) and, after a border,
# one tentative token more than it keeps.
_TAIL_POSITIONS = 2


@dataclass(frozen=True)
class Limits:
    """Sizes derived from the config and the model (what the runner allocates)."""

    max_buffer_frames: int
    buffer_capacity: int  # mel frames a stream's buffer may hold
    committed_cap: int  # committed tokens whose audio is still in the buffer
    max_len: int  # prompt positions per slot
    max_audio_tokens: int

    @classmethod
    def of(cls, cfg: EngineConfig, grid: AudioGrid, template: PromptTemplate) -> Limits:
        frames = _frames(cfg.max_buffer_s) + grid.window_frames + _frames(cfg.max_step_s)
        seconds = frames / FRAMES_PER_S
        committed = cfg.step_token_budget(seconds)
        max_len = (
            len(template.before_context) + cfg.context_max_tokens + len(template.before_audio)
            + grid.tokens(frames) + len(template.after_audio) + MAX_META_TOKENS
            + committed + cfg.step_token_budget(seconds) + cfg.partial_tokens + _TAIL_POSITIONS
        )
        return cls(_frames(cfg.max_buffer_s), frames + _FLUSH_FRAMES, committed, max_len, grid.tokens(frames))


@dataclass
class Scheduled:
    """One forward's plan with the rows it belongs to, for update()."""

    plan: StepPlan
    rows: list[RowStep]
    events: list[Event] = field(default_factory=list)
    new_audio_s: float = 0.0
    forced_trims: int = 0
    started: float = field(default_factory=time.perf_counter)

    @property
    def empty(self) -> bool:
        return self.plan.forward is None


class Scheduler:
    """Batched SimulStreaming bookkeeping over many streams of one model."""

    def __init__(self, cfg: EngineConfig, grid: AudioGrid, table: TokenTable, template: PromptTemplate,
                 frontend: MelFrontend, tokenizer: object) -> None:
        self.cfg = cfg
        self.grid, self.table, self.template, self.frontend = grid, table, template, frontend
        self.tokenizer = tokenizer
        self.limits = Limits.of(cfg, grid, template)
        self._streams: dict[str, StreamState] = {}
        self._closed: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._free = list(range(cfg.max_streams - 1, -1, -1))
        self._lock = threading.Lock()
        self._work = threading.Event()

    # ------------------------------------------------------------ lifecycle
    def open(self, stream_id: str, language: str | None = None, context: str = "") -> None:
        """Open a stream; `language` is "auto"/None, a code ("en") or a name.

        `context` is text already committed for this audio elsewhere (a stream
        re-homed from another replica): it becomes the system-prompt context,
        as if this scheduler had trimmed it out of the buffer itself.
        """
        name = resolve_language(language)
        context_ids = self._context_ids(context)
        with self._lock:
            if stream_id in self._streams:
                raise BadRequestError(f"stream {stream_id!r} is already open")
            if not self._free:
                raise OverloadedError(f"no free stream slot (max_streams={self.cfg.max_streams})")
            state = StreamState(
                stream_id=stream_id,
                slot=self._free.pop(),
                mel=StreamingMel(self.frontend),
                buffer=MelBuffer(self.frontend.n_mels, self.limits.buffer_capacity),
                words=WordAssembler(self.table),
                forced_language=name,
            )
            if name is not None:
                state.language, state.lang_prefix = name, list(self.template.language_prefix(name))
            state.context = context_ids
            self._streams[stream_id] = state
            self._closed.pop(stream_id, None)
        log.info("stream %s opened on slot %d (language %s)", stream_id, state.slot, name or "auto")

    def feed(self, stream_id: str, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
        """Queue audio (int16 or float32 mono at 16 kHz) for a stream."""
        state = self._open_stream(stream_id)
        audio = validate_chunk(samples, sample_rate, int(self.cfg.max_chunk_s * SAMPLE_RATE))
        limit = int(self.cfg.max_backlog_s * SAMPLE_RATE)
        if state.inbox.samples + len(audio) > limit:
            raise OverloadedError(
                f"stream {stream_id!r} has {state.inbox.samples / SAMPLE_RATE:.1f} s of audio waiting "
                f"(limit {self.cfg.max_backlog_s:.1f} s): sending faster than it is transcribed"
            )
        state.inbox.put(audio)
        self._work.set()

    def pause(self, stream_id: str, gap_samples: int = 0) -> None:
        """The utterance ended after the audio fed so far (its words are committed at once), and
        `gap_samples` of the stream are left out before the next audio (not transcribed: silence)."""
        if gap_samples < 0:
            raise BadRequestError(f"a pause cannot be negative ({gap_samples} samples)")
        state = self._open_stream(stream_id)
        state.inbox.put_pause(gap_samples)
        self._work.set()

    def end(self, stream_id: str) -> None:
        """No more audio: the next steps flush the stream and publish its FinalEvent."""
        state = self._open_stream(stream_id)
        state.status = Status.ENDING
        self._work.set()

    def abort(self, stream_id: str) -> None:
        """Drop a stream without flushing (client gone); its slot is freed by the next schedule()."""
        with self._lock:
            state = self._streams.get(stream_id)
            if state is not None and state.status in (Status.OPEN, Status.ENDING):
                state.status = Status.FAILED
                self._work.set()

    @property
    def open_streams(self) -> int:
        with self._lock:
            return sum(s.status in (Status.OPEN, Status.ENDING) for s in self._streams.values())

    @property
    def free_slots(self) -> int:
        with self._lock:
            return len(self._free)

    def has_work(self) -> bool:
        """Some stream is in a step, ready for one, or finished and not yet reaped."""
        with self._lock:
            states = list(self._streams.values())
        return any(s.step is not None or s.status in (Status.DONE, Status.FAILED) for s in states) or bool(
            self._ready(states, len(states))
        )

    def has_stream(self, stream_id: str) -> bool:
        """The stream is open or its last step has not been reaped yet."""
        with self._lock:
            return stream_id in self._streams

    def backlog_s(self, stream_id: str) -> float:
        """Audio of a stream waiting for a step, in seconds."""
        return self._open_stream(stream_id).inbox.samples / SAMPLE_RATE

    def wait_for_work(self, timeout: float) -> bool:
        """Block until some stream may be ready (or timeout); True if woken."""
        woken = self._work.wait(timeout)
        self._work.clear()
        return woken

    # ------------------------------------------------------------ the loop
    def schedule(self) -> Scheduled:
        """The next forward: rows in flight and newly ready streams (their prefill first)."""
        sched = Scheduled(StepPlan(encode=[], forward=None), rows=[])
        with self._lock:
            for state in self._streams.values():
                if state.step is not None and state.status is Status.FAILED:
                    state.step = None  # aborted mid-step: stop decoding it
        self._reap()
        with self._lock:
            states = list(self._streams.values())
        continuing = [s.step for s in states if s.step is not None]
        room = max(0, self.cfg.max_batch - len(continuing))
        new_rows, encode, moves = [], [], []
        for state in self._ready(states, room):
            state.flush = flush = self._take_audio(state)
            self._restart(state)
            sched.forced_trims += self._trim(state, moves)
            if state.buffer_frames == 0 or (state.buffer_frames == state.decoded_frames and flush is Flush.NONE):
                if flush is Flush.STREAM:
                    sched.events.append(self._finish(state, state.words.flush(state.audio_end_s)))
                elif flush is Flush.UTTERANCE:
                    sched.events.extend(self._end_utterance(state, []))
                continue
            request = self._encode_request(state)
            if request is not None:
                encode.append(request)
            sched.new_audio_s += (state.buffer_frames - state.decoded_frames) / FRAMES_PER_S
            state.step = self._row(state, flush is not Flush.NONE)
            new_rows.append(state.step)
        sched.rows = new_rows + continuing
        if sched.rows:
            sched.plan = StepPlan(
                encode=encode,
                forward=ForwardBatch.of_rows(
                    slots=[r.slot for r in sched.rows],
                    start=[r.reuse for r in new_rows] + [r.position for r in continuing],
                    ids=[r.layout.ids[r.reuse :] for r in new_rows] + [[r.last_token] for r in continuing],
                    audio_pos=[r.layout.audio_pos for r in sched.rows],
                    n_audio=[r.layout.n_audio for r in sched.rows],
                ),
                moves=moves,
                prefill_rows=len(new_rows),
                prefill_tokens=sum(len(r.layout.ids) - r.reuse for r in new_rows),
            )
        elif moves:
            sched.plan = StepPlan(encode=[], forward=None, moves=moves)
        return sched

    def update(self, sched: Scheduled, out: RunnerOutput) -> StepResult:
        """Apply the forward's tokens; rows that stopped commit and publish their events."""
        result = StepResult(events=list(sched.events))
        stats = result.stats
        if sched.rows:
            advance(sched.rows, out.tokens, out.frames, self.table, self.grid, self.cfg.policy,
                    self.cfg.fixed_tokens_per_s is not None)
        for row in sched.rows:
            if not row.done:
                continue
            state = self._streams[row.stream_id]
            state.step = None
            stats.steps += 1
            stats.tokens += len(row.committed)
            stats.stops[row.stop.value] = stats.stops.get(row.stop.value, 0) + 1
            if state.status is not Status.FAILED:  # aborted meanwhile: nothing to publish
                result.events.extend(self._complete(state, row))
        plan = sched.plan
        stats.batch, stats.new_rows = len(sched.rows), plan.prefill_rows
        stats.forwards = 1 if sched.rows else 0
        stats.prefill_tokens = plan.prefill_tokens
        stats.audio_s, stats.forced_trims = sched.new_audio_s, sched.forced_trims
        stats.encode_s = out.encode_s
        # Prefill and decode rows share the forward: its time is split by token share.
        tokens = len(plan.forward.ids) if plan.forward is not None else 0
        share = plan.prefill_tokens / tokens if tokens else 0.0
        stats.prefill_s, stats.decode_s = out.forward_s * share, out.forward_s * (1 - share)
        stats.total_s = time.perf_counter() - sched.started
        self._reap()
        return result

    def fail(self, sched: Scheduled, message: str) -> StepResult:
        """The forward failed: its streams end with an error (and free their slots); the rest go on."""
        result = StepResult(events=list(sched.events))
        for row in sched.rows:
            state = self._streams[row.stream_id]
            state.step = None
            if state.status is not Status.FAILED:
                result.events.append(self._fail(state, message))
        self._reap()
        return result

    # --------------------------------------------------------------- helpers
    def _context_ids(self, text: str) -> list[int]:
        """The last context_max_tokens token ids of `text` (leading space: it continues a transcript)."""
        if not text.strip() or self.cfg.context_max_tokens == 0:
            return []
        ids = self.tokenizer.encode(" " + text.strip(), add_special_tokens=False)
        return list(ids[-self.cfg.context_max_tokens :])

    def _open_stream(self, stream_id: str) -> StreamState:
        with self._lock:
            state = self._streams.get(stream_id)
            closed = stream_id in self._closed
        if state is None:
            if closed:
                raise StreamClosedError(f"stream {stream_id!r} has ended")
            raise UnknownStreamError(f"no open stream {stream_id!r}")
        if state.status is not Status.OPEN:
            raise StreamClosedError(f"stream {stream_id!r} is {state.status.value}")
        return state

    def _ready(self, states: list[StreamState], room: int) -> list[StreamState]:
        """Streams not in a step with enough new audio (or ending), least recently stepped first."""
        ready = [s for s in states if s.step is None and s.status in (Status.OPEN, Status.ENDING) and self._due(s)]
        ready.sort(key=lambda s: s.last_step_at)
        return ready[:room]

    def _due(self, state: StreamState) -> bool:
        """The stream's waiting audio makes a step: min_step_s of it, a pause after it, or its end."""
        inbox = state.inbox
        return (state.status is Status.ENDING or inbox.samples >= int(self.cfg.min_step_s * SAMPLE_RATE)
                or inbox.pauses > 0)

    def _take_audio(self, state: StreamState) -> Flush:
        """Move up to max_step_s of the stream's waiting audio into its buffer; what it ends with.

        Audio before a pause is the end of a contiguous segment: its last
        frames are computed with the end-of-audio padding, as at the end of a
        stream, and the segment after the pause starts a new one.
        """
        while state.buffer_frames == 0 and not state.words.pending:
            # Silence after a finished utterance: only the clock moves.
            gap = state.inbox.take_pause()
            if gap is None:
                break
            self._new_segment(state, gap.gap)
        if not self._due(state):
            # The gap's audio waits for a step of its own (min_step_s of it): where steps cut the
            # audio never depends on whether the gap arrived with it or before it.
            return Flush.NONE
        samples, state.pause = state.inbox.take(int(self.cfg.max_step_s * SAMPLE_RATE))
        state.samples_seen += len(samples)
        count = state.mel.add(samples) if len(samples) else 0
        if state.status is Status.ENDING and state.inbox.samples == 0 and state.inbox.pauses == 0:
            flush = Flush.STREAM
        elif state.pause is not None:
            flush = Flush.UTTERANCE
        else:
            flush = Flush.NONE
        if flush is not Flush.NONE:
            count = state.mel.end()
        state.last_step_at = time.monotonic()
        if count > 0:
            (logmel,) = self.frontend.log_mel_many([state.mel.segment(count)])
            state.buffer.append(state.mel.emit(count, logmel))
        return flush

    def _restart(self, state: StreamState) -> None:
        """The last utterance ended: the buffer starts again just before the audio after it.

        Every committed token becomes context; the encoder cache and prefix
        key/values start over (the new buffer is short, so that is cheap).
        """
        if state.restart_at_s is None:
            return
        cut = min(state.buffer_frames, max(0, _frames(state.restart_at_s) - state.buffer_start))
        state.restart_at_s = None
        if cut == 0:
            return
        if self.cfg.context_max_tokens:
            moved = [token for token, _ in state.committed]
            state.context = (state.context + moved)[-self.cfg.context_max_tokens :]
        state.committed = []
        state.buffer.drop_front(cut)
        state.buffer_start += cut
        state.decoded_frames = max(0, state.decoded_frames - cut)
        state.cached_windows = state.conv_chunks = state.kv_reuse = 0
        log.debug("stream %s: utterance over, buffer restarts at %.2f s", state.stream_id, state.audio_start_s)

    def _trim(self, state: StreamState, moves: list[AudioMove]) -> int:
        """Drop transcribed windows from the buffer front; returns 1 if audio had to be forced out."""
        window = self.grid.window_frames
        n, forced = 0, False
        while state.buffer_frames - n * window > self.limits.max_buffer_frames:
            boundary_s = state.audio_start_s + (n + 1) * window / FRAMES_PER_S
            if boundary_s <= state.consumed_s:
                n += 1
            elif state.buffer_frames - n * window > self.limits.max_buffer_frames + window:
                n, forced = n + 1, True
            else:
                break
        if n == 0:
            return 0
        boundary_s = state.audio_start_s + n * window / FRAMES_PER_S
        if forced:
            log.warning(
                "stream %s: no transcript beyond %.2f s; dropping audio up to %.2f s to bound the buffer",
                state.stream_id, state.consumed_s, boundary_s,
            )
            state.consumed_s = boundary_s
        keep = keep_from(state.committed, boundary_s, self.table)
        if self.cfg.context_max_tokens:
            moved = [token for token, _ in state.committed[:keep]]
            state.context = (state.context + moved)[-self.cfg.context_max_tokens :]
        state.committed = state.committed[keep:]
        dropped = min(n, state.cached_windows)
        if n > state.cached_windows:
            # The unfinished window itself was dropped: its chunk cache is stale.
            state.conv_chunks = 0
        per_window = self.grid.tokens_per_window
        moves.append(AudioMove(state.slot, dropped * per_window, (state.cached_windows - dropped) * per_window))
        state.cached_windows -= dropped
        state.buffer.drop_front(n * window)
        state.buffer_start += n * window
        state.decoded_frames = max(0, state.decoded_frames - n * window)
        state.kv_reuse = 0
        return int(forced)

    def _encode_request(self, state: StreamState) -> EncodeRequest | None:
        """The buffer after its cached windows, to encode; None when it is whole cached windows."""
        window = self.grid.window_frames
        if state.buffer_frames <= state.cached_windows * window:
            return None
        request = EncodeRequest(
            state.buffer.frames[:, state.cached_windows * window :].copy(),
            state.slot,
            state.conv_chunks,
            state.cached_windows * self.grid.tokens_per_window,
        )
        state.conv_chunks = (state.buffer_frames % window) // self.grid.chunk_frames
        return request

    def _row(self, state: StreamState, final: bool) -> RowStep:
        cfg = self.cfg
        layout = self.template.build(
            state.context, self.grid.tokens(state.buffer_frames), state.lang_prefix + [t for t, _ in state.committed]
        )
        stable = layout.audio_pos + state.cached_windows * self.grid.tokens_per_window
        reuse = min(state.kv_reuse, stable, len(layout.ids) - 1) if cfg.reuse_prefix else 0
        if cfg.fixed_tokens_per_s is not None:
            new_s = (state.buffer_frames - state.decoded_frames) / FRAMES_PER_S
            budget = max(1, round(new_s * cfg.fixed_tokens_per_s))
        elif final:
            budget = cfg.step_token_budget(state.audio_end_s - max(state.consumed_s, state.audio_start_s))
        else:
            budget = cfg.step_token_budget((state.buffer_frames - state.decoded_frames) / FRAMES_PER_S)
        budget = min(budget, self.limits.committed_cap - len(state.committed))
        return RowStep(
            stream_id=state.stream_id,
            slot=state.slot,
            layout=layout,
            reuse=reuse,
            audio_start_s=state.audio_start_s,
            audio_end_s=state.audio_end_s,
            final=final,
            budget=max(budget, 1),
            partial_tokens=0 if final else cfg.partial_tokens,
            phase=Phase.TEXT if state.lang_prefix else Phase.META,
            last_s=state.last_s,
            last_word_s=state.last_word_start_s,
            last_word_token=state.last_word_token,
            word_open=bool(state.words.pending),
        )

    def _complete(self, state: StreamState, row: RowStep) -> list[Event]:
        """Apply one finished step to its stream; return the events to publish."""
        if row.language is not None and not state.lang_prefix:
            state.language, state.lang_prefix = row.language, list(row.meta)
            log.info("stream %s: language detected: %s", state.stream_id, row.language)
        words = state.words.add(row.committed)
        state.committed.extend(row.committed)
        if row.committed:
            state.last_s = row.last_s
            state.last_word_s = row.committed[-1][1]
            state.left_out_s = 0.0
            state.last_word_start_s, state.last_word_token = row.last_word_s, row.last_word_token
            state.consumed_s = max(state.consumed_s, state.last_word_s)
        if row.boundary_s is not None:
            words += state.words.close_word(row.boundary_s)
        if words:
            state.last_word_end_s = words[-1].end
        # Fixed-budget benchmark runs count every step's audio as transcribed.
        ended_text = row.stop in (Stop.EOS, Stop.NO_SPEECH) or self.cfg.fixed_tokens_per_s is not None
        if ended_text:
            state.consumed_s = max(state.consumed_s, state.audio_end_s - self.cfg.policy.border_s)
        state.cached_windows = state.buffer_frames // self.grid.window_frames
        state.kv_reuse = row.layout.audio_pos + state.cached_windows * self.grid.tokens_per_window
        state.decoded_frames = state.buffer_frames
        if ended_text and state.audio_end_s - state.last_word_s - state.left_out_s >= self.cfg.silence_reset_s:
            self._reset_context(state)
        if (ended_text and not state.words.pending and not row.final
                and state.audio_end_s - state.last_word_end_s >= self.cfg.endpoint_s):
            # After the last word (with a margin for its estimated end), or, with no word in the
            # buffer, endpoint_s before its end: audio that might hold the next speech stays.
            words_here = state.last_word_end_s > state.audio_start_s
            state.restart_at_s = (state.last_word_end_s + self.cfg.restart_margin_s if words_here
                                  else state.audio_end_s - self.cfg.endpoint_s)
        language = language_code(state.language) if state.language else None
        if state.flush is Flush.STREAM:
            return [self._finish(state, words + state.words.flush(state.audio_end_s))]
        if state.flush is Flush.UTTERANCE:
            return self._end_utterance(state, words)
        events: list[Event] = []
        if words:
            events.append(WordsEvent(state.stream_id, words, state.audio_end_s, language))
        partial = " ".join(t for t in (state.words.pending_text(), self.table.text(row.tentative).strip()) if t)
        if partial != state.partial:
            state.partial = partial
            events.append(PartialEvent(state.stream_id, partial))
        return events

    def _end_utterance(self, state: StreamState, words: list) -> list[Event]:
        """A pause: publish the utterance's last words, then start a new buffer after the pause.

        Every committed token becomes context (as a restart does); the next
        audio is a new contiguous segment at the stream time after the gap.
        """
        words = words + state.words.flush(state.audio_end_s)
        if state.pause is None:
            raise AssertionError("an utterance flush without its pause")
        if self.cfg.context_max_tokens:
            moved = [token for token, _ in state.committed]
            state.context = (state.context + moved)[-self.cfg.context_max_tokens :]
        state.committed, state.restart_at_s = [], None
        self._new_segment(state, state.pause.gap)
        state.pause, state.flush = None, Flush.NONE
        language = language_code(state.language) if state.language else None
        events: list[Event] = []
        if words:
            events.append(WordsEvent(state.stream_id, words, state.audio_end_s, language, utterance_end=True))
            state.last_word_end_s = words[-1].end
        if state.partial:
            state.partial = ""
            events.append(PartialEvent(state.stream_id, ""))
        return events

    def _new_segment(self, state: StreamState, gap: int) -> None:
        """The next audio starts `gap` samples after the last: an empty buffer there, fresh features."""
        state.samples_seen += gap
        state.left_out_s += gap / SAMPLE_RATE
        state.mel = StreamingMel(self.frontend, running_max=state.mel.running_max)
        state.buffer.drop_front(state.buffer_frames)
        # Floor to a frame: a timestamp is off by less than one 10 ms hop, and it never adds up
        # (the start is recomputed from the exact sample count at every pause).
        state.buffer_start = state.samples_seen // HOP
        state.decoded_frames = state.cached_windows = state.conv_chunks = state.kv_reuse = 0
        state.consumed_s = max(state.consumed_s, state.audio_start_s)

    def _reset_context(self, state: StreamState) -> None:
        """Long silence: earlier text stops being context; an auto language is detected anew."""
        if state.context or (state.forced_language is None and state.lang_prefix):
            log.info("stream %s: %.1f s without words, context reset", state.stream_id, self.cfg.silence_reset_s)
            state.context = []
            if state.forced_language is None and not state.committed:
                state.language, state.lang_prefix = None, []
            state.kv_reuse = 0

    def _finish(self, state: StreamState, words: list) -> FinalEvent:
        state.status = Status.DONE
        language = language_code(state.language) if state.language else None
        log.info("stream %s finished at %.2f s", state.stream_id, state.audio_end_s)
        return FinalEvent(state.stream_id, words, state.audio_end_s, language)

    def _fail(self, state: StreamState, message: str) -> ErrorEvent:
        state.status = Status.FAILED
        return ErrorEvent(state.stream_id, "internal", message)

    def _reap(self) -> None:
        """Free the slots of finished, failed and aborted streams that are in no step."""
        with self._lock:
            gone = [k for k, s in self._streams.items() if s.status in (Status.DONE, Status.FAILED) and s.step is None]
            for stream_id in gone:
                state = self._streams.pop(stream_id)
                self._free.append(state.slot)
                self._closed[stream_id] = None
                while len(self._closed) > _RECENTLY_CLOSED:
                    self._closed.popitem(last=False)


def _frames(seconds: float) -> int:
    return int(round(seconds * FRAMES_PER_S))

