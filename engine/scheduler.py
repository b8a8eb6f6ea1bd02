"""The scheduler: owns every stream of one model replica and runs its steps.

    step():  pick ready streams -> take their audio -> trim -> encode tails in
             one batch -> prefill + decode in one batch -> commit and publish

open/feed/end/abort may be called from any thread while a step runs; they
touch only the stream table (under a lock) and each stream's inbox. All other
stream state is touched by the thread that calls step().
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time

import numpy as np

from engine.audio import validate_chunk
from engine.config import EngineConfig
from engine.decode import MAX_META_TOKENS, RowPlan, RowResult, Stop, run_step
from engine.errors import BadRequestError, OverloadedError, StreamClosedError, UnknownStreamError
from engine.events import ErrorEvent, Event, FinalEvent, PartialEvent, StepResult, WordsEvent
from engine.features import FRAMES_PER_S, SAMPLE_RATE, MelFrontend, StreamingMel
from engine.heads import resolve_heads
from engine.languages import language_code, resolve_language
from engine.loader import LoadedModel, load_model
from engine.prompt import PromptTemplate
from engine.runner import EncodeRequest, ModelRunner
from engine.stream import MelBuffer, Status, StreamState, keep_from
from engine.timing import AudioGrid
from engine.transcript import WordAssembler
from engine.vocab import TokenTable

log = logging.getLogger(__name__)

# Ended stream ids remembered so that late calls get "stream closed", not "unknown".
_RECENTLY_CLOSED = 4096


class Scheduler:
    """Batched SimulStreaming over many streams of one model."""

    def __init__(self, cfg: EngineConfig, model: LoadedModel | None = None) -> None:
        self.cfg = cfg
        self.model = model if model is not None else load_model(cfg.model, cfg.device, cfg.dtype)
        spec = self.model.spec
        self.grid = AudioGrid.from_spec(spec.n_window, spec.n_window_infer)
        self.table = TokenTable.build(self.model.tokenizer, self.model.eos_ids, spec.vocab_size)
        self.template = PromptTemplate.from_tokenizer(
            self.model.tokenizer, self.model.chat_template, spec.audio_token_id
        )
        self.frontend = MelFrontend(self.model.mel_filters)
        heads, self.heads_source = resolve_heads(
            cfg.alignment_heads, self.model.directory, spec, cfg.max_alignment_heads
        )
        self._max_buffer_frames = _frames(cfg.max_buffer_s)
        cap_frames = self._max_buffer_frames + self.grid.window_frames + _frames(cfg.max_step_s)
        # The end-of-stream flush may add the last few (look-ahead) frames on top.
        self._buffer_capacity = cap_frames + 8
        cap_s = cap_frames / FRAMES_PER_S
        # Committed tokens in the buffer: at most the budget of every step it could hold.
        self._committed_cap = math.ceil(cap_s * cfg.max_tokens_per_s) + 2 * math.ceil(cap_s / cfg.min_step_s)
        max_len = (
            len(self.template.before_context)
            + cfg.context_max_tokens
            + len(self.template.before_audio)
            + self.grid.tokens(cap_frames)
            + len(self.template.after_audio)
            + MAX_META_TOKENS
            + self._committed_cap
            + cfg.step_token_budget(cap_s)
            + cfg.partial_tokens
            + 2
        )
        self.runner = ModelRunner(self.model, heads, cfg.max_streams, max_len, self.grid.tokens(cap_frames))
        self._streams: dict[str, StreamState] = {}
        self._closed: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._free = list(range(cfg.max_streams - 1, -1, -1))
        self._lock = threading.Lock()
        self._work = threading.Event()
        self._last_step_at: dict[str, float] = {}
        log.info(
            "scheduler ready: model=%s slots=%d max_len=%d heads=%s (%s)",
            cfg.model, cfg.max_streams, max_len, heads, self.heads_source,
        )

    # ------------------------------------------------------------ public API
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
                buffer=MelBuffer(self.frontend.n_mels, self._buffer_capacity),
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
        state.fed_s += len(audio) / SAMPLE_RATE
        self._work.set()

    def end(self, stream_id: str) -> None:
        """No more audio: the next steps flush the stream and publish its FinalEvent."""
        state = self._open_stream(stream_id)
        state.status = Status.ENDING
        self._work.set()

    def abort(self, stream_id: str) -> None:
        """Drop a stream without flushing (client gone); its slot is freed by the next step."""
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

    def backlog_s(self, stream_id: str) -> float:
        """Audio of a stream waiting for a step, in seconds."""
        return self._open_stream(stream_id).inbox.samples / SAMPLE_RATE

    def wait_for_work(self, timeout: float) -> bool:
        """Block until some stream may be ready (or timeout); True if woken."""
        woken = self._work.wait(timeout)
        self._work.clear()
        return woken

    # ------------------------------------------------------------------ step
    def step(self) -> StepResult:
        """Run one batched step over the streams that are ready."""
        started = time.perf_counter()
        result = StepResult()
        self._reap()
        batch = self._pick()
        if not batch:
            return result
        finals = self._take_audio(batch)
        rows = []
        for state in batch:
            result.stats.forced_trims += self._trim(state)
            if state.buffer_frames == 0 or state.buffer_frames == state.decoded_frames and not finals[state.stream_id]:
                if finals[state.stream_id]:
                    result.events.append(self._finish(state, []))
                continue
            rows.append(state)
        if rows:
            try:
                self._run(rows, finals, result)
            except Exception as exc:
                # Contain the failure to the streams of this batch; the loop goes on.
                ids = [s.stream_id for s in rows]
                log.exception("step failed for streams %s", ids)
                for state in rows:
                    result.events.append(self._fail(state, f"model step failed: {exc}"))
        result.stats.total_s = time.perf_counter() - started
        self._reap()
        return result

    # --------------------------------------------------------------- helpers
    def _context_ids(self, text: str) -> list[int]:
        """The last context_max_tokens token ids of `text` (leading space: it continues a transcript)."""
        if not text.strip() or self.cfg.context_max_tokens == 0:
            return []
        ids = self.model.tokenizer.encode(" " + text.strip(), add_special_tokens=False)
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

    def _pick(self) -> list[StreamState]:
        """Streams with enough new audio (or ending), least recently stepped first."""
        need = int(self.cfg.min_step_s * SAMPLE_RATE)
        with self._lock:
            ready = [
                s
                for s in self._streams.values()
                if s.status is Status.ENDING or (s.status is Status.OPEN and s.inbox.samples >= need)
            ]
        ready.sort(key=lambda s: self._last_step_at.get(s.stream_id, 0.0))
        return ready[: self.cfg.max_batch]

    def _take_audio(self, batch: list[StreamState]) -> dict[str, bool]:
        """Move up to max_step_s of each stream's waiting audio into its buffer.

        Returns, per stream, whether this is its final step. The new mel frames
        of all streams are computed in one batched STFT.
        """
        finals, counts = {}, []
        for state in batch:
            samples = state.inbox.take(int(self.cfg.max_step_s * SAMPLE_RATE))
            state.taken_s += len(samples) / SAMPLE_RATE
            count = state.mel.add(samples) if len(samples) else 0
            finals[state.stream_id] = state.status is Status.ENDING and state.inbox.samples == 0
            if finals[state.stream_id]:
                count = state.mel.end()
            counts.append(count)
            self._last_step_at[state.stream_id] = time.monotonic()
        todo = [(state, count) for state, count in zip(batch, counts) if count > 0]
        if todo:
            logmels = self.frontend.log_mel_many([state.mel.segment(count) for state, count in todo])
            for (state, count), logmel in zip(todo, logmels):
                state.buffer.append(state.mel.emit(count, logmel))
        return finals

    def _trim(self, state: StreamState) -> int:
        """Drop transcribed windows from the buffer front; returns 1 if audio had to be forced out."""
        window = self.grid.window_frames
        n, forced = 0, False
        while state.buffer_frames - n * window > self._max_buffer_frames:
            boundary_s = state.audio_start_s + (n + 1) * window / FRAMES_PER_S
            if boundary_s <= state.consumed_s:
                n += 1
            elif state.buffer_frames - n * window > self._max_buffer_frames + window:
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
        self.runner.drop_audio(state.slot, dropped * per_window, (state.cached_windows - dropped) * per_window)
        state.cached_windows -= dropped
        state.buffer.drop_front(n * window)
        state.buffer_start += n * window
        state.decoded_frames = max(0, state.decoded_frames - n * window)
        state.kv_reuse = 0
        return int(forced)

    def _run(self, rows: list[StreamState], finals: dict[str, bool], result: StepResult) -> None:
        """Encode, decode and commit one batch."""
        t0 = time.perf_counter()
        self._encode_tails(rows)
        self.runner.synchronize()
        t1 = time.perf_counter()
        plans = [self._plan(s, finals[s.stream_id]) for s in rows]
        decoded = run_step(
            self.runner, plans, self.table, self.grid, self.cfg.policy, self.cfg.fixed_tokens_per_s is not None
        )
        stats = result.stats
        stats.encode_s, stats.prefill_s = t1 - t0, decoded.prefill_s
        stats.decode_s = time.perf_counter() - t1 - decoded.prefill_s
        stats.batch, stats.forwards = len(rows), decoded.forwards
        for state, plan, outcome in zip(rows, plans, decoded.results):
            stats.audio_s += (state.buffer_frames - state.decoded_frames) / FRAMES_PER_S
            stats.tokens += len(outcome.committed)
            stats.prefill_tokens += len(plan.layout.ids) - plan.reuse
            stats.stops[outcome.stop.value] = stats.stops.get(outcome.stop.value, 0) + 1
            result.events.extend(self._commit(state, plan, outcome))

    def _encode_tails(self, rows: list[StreamState]) -> None:
        """Encode every row's audio after its cached windows, in one batch."""
        window = self.grid.window_frames
        todo = [s for s in rows if s.buffer_frames > s.cached_windows * window]
        if not todo:
            # Every buffer is whole cached windows (a final step with no new frames).
            return
        requests = [
            EncodeRequest(s.buffer.frames[:, s.cached_windows * window :], s.slot, s.conv_chunks) for s in todo
        ]
        for state, embeds in zip(todo, self.runner.encode(requests)):
            self.runner.store_audio(state.slot, state.cached_windows * self.grid.tokens_per_window, embeds)
            state.conv_chunks = (state.buffer_frames % window) // self.grid.chunk_frames

    def _plan(self, state: StreamState, final: bool) -> RowPlan:
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
        budget = min(budget, self._committed_cap - len(state.committed))
        return RowPlan(
            stream_id=state.stream_id,
            slot=state.slot,
            layout=layout,
            reuse=reuse,
            audio_start_s=state.audio_start_s,
            audio_end_s=state.audio_end_s,
            last_s=state.last_s,
            final=final,
            need_language=not state.lang_prefix,
            budget=max(budget, 1),
            partial_tokens=0 if final else cfg.partial_tokens,
        )

    def _commit(self, state: StreamState, plan: RowPlan, outcome: RowResult) -> list[Event]:
        """Apply one row's outcome to its stream; return the events to publish."""
        if outcome.language is not None and not state.lang_prefix:
            state.language, state.lang_prefix = outcome.language, list(outcome.meta)
            log.info("stream %s: language detected: %s", state.stream_id, outcome.language)
        words = state.words.add(outcome.committed)
        state.committed.extend(outcome.committed)
        if outcome.committed:
            state.last_s = outcome.last_s
            state.last_word_s = outcome.committed[-1][1]
            state.consumed_s = max(state.consumed_s, state.last_word_s)
        if outcome.boundary_s is not None:
            words += state.words.close_word(outcome.boundary_s)
        # Fixed-budget benchmark runs count every step's audio as transcribed.
        ended_text = outcome.stop in (Stop.EOS, Stop.NO_SPEECH) or self.cfg.fixed_tokens_per_s is not None
        if ended_text:
            state.consumed_s = max(state.consumed_s, state.audio_end_s - self.cfg.policy.border_s)
        state.cached_windows = state.buffer_frames // self.grid.window_frames
        state.kv_reuse = plan.layout.audio_pos + state.cached_windows * self.grid.tokens_per_window
        state.decoded_frames = state.buffer_frames
        if ended_text and state.audio_end_s - state.last_word_s >= self.cfg.silence_reset_s:
            self._reset_context(state)
        language = language_code(state.language) if state.language else None
        if plan.final:
            return [self._finish(state, words + state.words.flush(state.audio_end_s))]
        events: list[Event] = []
        if words:
            events.append(WordsEvent(state.stream_id, words, state.audio_end_s, language))
        partial = " ".join(t for t in (state.words.pending_text(), self.table.text(outcome.tentative).strip()) if t)
        events.append(PartialEvent(state.stream_id, partial))
        return events

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
        """Free the slots of finished, failed and aborted streams."""
        with self._lock:
            for stream_id in [k for k, s in self._streams.items() if s.status in (Status.DONE, Status.FAILED)]:
                state = self._streams.pop(stream_id)
                self._free.append(state.slot)
                self._last_step_at.pop(stream_id, None)
                self._closed[stream_id] = None
                while len(self._closed) > _RECENTLY_CLOSED:
                    self._closed.popitem(last=False)


def _frames(seconds: float) -> int:
    return int(round(seconds * FRAMES_PER_S))
