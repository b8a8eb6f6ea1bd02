"""The engine of one model replica: a scheduler and a model runner, one loop.

    step():  plan = scheduler.schedule()      # bookkeeping: who computes what
             out = runner.execute(plan)       # tensors stay in the runner
             return scheduler.update(plan, out)

One step is one decoder forward over every stream row in flight (vLLM's
EngineCore.step()). Engine is what the CLI, the replica loop and the
benchmarks hold; its open/feed/end/abort may be called from any thread.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from engine.batch import RunnerOutput
from engine.config import EngineConfig
from engine.events import StepResult
from engine.features import SAMPLE_RATE, MelFrontend
from engine.heads import resolve_heads
from engine.loader import LoadedModel, load_model
from engine.prompt import PromptTemplate
from engine.runner import ModelRunner
from engine.scheduler import Scheduler
from engine.timing import AudioGrid
from engine.vocab import TokenTable

log = logging.getLogger(__name__)


class Engine:
    """Batched SimulStreaming over many streams of one model."""

    def __init__(self, cfg: EngineConfig, model: LoadedModel | None = None) -> None:
        self.cfg = cfg
        self.model = model if model is not None else load_model(cfg.model, cfg.device, cfg.dtype)
        spec = self.model.spec
        grid = AudioGrid.from_spec(spec.n_window, spec.n_window_infer)
        template = PromptTemplate.from_tokenizer(self.model.tokenizer, self.model.chat_template, spec.audio_token_id)
        self.scheduler = Scheduler(
            cfg,
            grid,
            TokenTable.build(self.model.tokenizer, self.model.eos_ids, spec.vocab_size),
            template,
            MelFrontend(self.model.mel_filters),
            self.model.tokenizer,
        )
        heads, self.heads_source = resolve_heads(cfg.alignment_heads, self.model.directory, spec,
                                                 cfg.max_alignment_heads)
        limits = self.scheduler.limits
        self.runner = ModelRunner(self.model, heads, cfg.max_streams, limits.max_len, limits.max_audio_tokens)
        log.info("engine ready: model=%s slots=%d max_len=%d heads=%s (%s)",
                 cfg.model, cfg.max_streams, limits.max_len, heads, self.heads_source)

    # ------------------------------------------------------------ streams
    def open(self, stream_id: str, language: str | None = None, context: str = "") -> None:
        self.scheduler.open(stream_id, language, context)

    def feed(self, stream_id: str, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
        self.scheduler.feed(stream_id, samples, sample_rate)

    def pause(self, stream_id: str, gap_samples: int = 0) -> None:
        """The utterance ended; `gap_samples` of silence are left out before the next audio."""
        self.scheduler.pause(stream_id, gap_samples)

    def end(self, stream_id: str) -> None:
        self.scheduler.end(stream_id)

    def abort(self, stream_id: str) -> None:
        self.scheduler.abort(stream_id)

    @property
    def open_streams(self) -> int:
        return self.scheduler.open_streams

    @property
    def free_slots(self) -> int:
        return self.scheduler.free_slots

    def backlog_s(self, stream_id: str) -> float:
        return self.scheduler.backlog_s(stream_id)

    def wait_for_work(self, timeout: float) -> bool:
        return self.scheduler.wait_for_work(timeout)

    def has_work(self) -> bool:
        """Some stream is in a step or ready for one."""
        return self.scheduler.has_work()

    # ------------------------------------------------------------ the loop
    def step(self) -> StepResult:
        """One forward over the rows in flight and the streams that became ready."""
        sched = self.scheduler.schedule()
        if sched.empty and not sched.plan.moves:
            return self.scheduler.update(sched, _NOTHING)
        try:
            out = self.runner.execute(sched.plan)
        except Exception as exc:
            # Contained to the streams of this forward: they end with an error, the loop goes on.
            log.exception("forward failed for streams %s", [r.stream_id for r in sched.rows])
            return self.scheduler.fail(sched, f"model step failed: {exc}")
        return self.scheduler.update(sched, out)

    def warm_up(self, seconds: float = 2.0) -> None:
        """Run a stream of silence through every code path once, so the first real stream is not slow."""
        stream_id = "\x00warm-up"
        self.open(stream_id, "en")
        self.feed(stream_id, np.zeros(int(seconds * SAMPLE_RATE), np.float32))
        self.end(stream_id)
        while self.scheduler.has_stream(stream_id):
            self.step()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    return len(os.sched_getaffinity(0))


def set_threads(cpus: float) -> int:
    """Torch intra-op threads for a process given `cpus` CPUs (at least one).

    With more threads than the cores a process really gets, every small
    matmul waits for threads that other processes hold (20-30x slower seen).
    """
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    return threads


# What a step with nothing to compute got from the runner.
_NOTHING = RunnerOutput(np.zeros(0, np.int64), np.zeros((0, 0), np.int64))
