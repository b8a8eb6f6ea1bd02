"""Prometheus metrics (ray.serve.metrics: exported with a `ray_` prefix and
deployment/replica tags through Ray's metrics agent)."""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

from engine.events import FinalEvent, StepResult, WordsEvent

# Steps are planned every min_step_s (0.5 s) of audio: buckets around that budget.
STEP_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0]
LAG_BUCKETS_S = [0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64]


class ModelMetrics:
    """Figures of one model replica's loop."""

    def __init__(self) -> None:
        self.open_streams = Gauge("asr_open_streams", description="Streams open on this model replica.")
        self.step_latency = Histogram(
            "asr_step_latency_s", description="Wall time of one engine step (one forward).", boundaries=STEP_BUCKETS_S
        )
        self.batch_size = Histogram("asr_batch_size", description="Stream rows in one forward.", boundaries=BATCH_BUCKETS)
        self.audio_s = Counter("asr_audio_seconds", description="Seconds of audio decoded.")
        # Cumulative step figures, for benchmarks/capacity.py's split of the replica's time.
        self.step_s = Counter("asr_step_seconds", description="Wall time inside scheduler steps.")
        self.encode_s = Counter("asr_encode_seconds", description="Step time spent encoding audio.")
        self.prefill_s = Counter("asr_prefill_seconds", description="Step time spent in prefill forwards.")
        self.decode_s = Counter("asr_decode_seconds", description="Step time spent in token-by-token forwards.")
        self.steps = Counter("asr_steps", description="Stream steps decoded (a prefill and its tokens).")
        self.forwards = Counter("asr_forwards", description="Decoder forwards (engine iterations).")
        self.batch_rows = Counter("asr_batch_rows", description="Stream rows over all forwards.")
        self.word_lag = Histogram(
            "asr_word_lag_s",
            description="Audio received after a word ended before it was committed (seconds of audio).",
            boundaries=LAG_BUCKETS_S,
        )

    def observe(self, result: StepResult, open_streams: int) -> None:
        self.open_streams.set(open_streams)
        if not result.stats.batch:
            return
        stats = result.stats
        self.step_latency.observe(stats.total_s)
        self.batch_size.observe(stats.batch)
        for counter, value in (
            (self.audio_s, stats.audio_s), (self.step_s, stats.total_s), (self.encode_s, stats.encode_s),
            (self.prefill_s, stats.prefill_s), (self.decode_s, stats.decode_s), (self.steps, stats.steps),
            (self.forwards, stats.forwards), (self.batch_rows, stats.batch),
        ):
            if value > 0:  # Ray's Counter.inc refuses 0
                counter.inc(value)
        for event in result.events:
            if isinstance(event, WordsEvent | FinalEvent):
                for word in event.words:
                    self.word_lag.observe(max(0.0, event.emitted_at - word.end))


class IngestMetrics:
    """Figures of one ingest replica."""

    def __init__(self) -> None:
        self.sockets = Gauge("ingest_open_sockets", description="WebSocket streams open on this ingest replica.")
        self.errors = Counter(
            "ingest_errors", description="Error frames sent, by code.", tag_keys=("code",)
        )
        self.rehomes = Counter("ingest_rehomes", description="Streams moved to another model replica.")
        self.audio_s = Counter("ingest_audio_seconds", description="Seconds of client audio received.")
        self._audio_unrecorded = 0.0

    def audio_received(self, seconds: float) -> None:
        """Counted in steps of at least a second: one Ray metric update per frame cost 2% of the ingest."""
        self._audio_unrecorded += seconds
        if self._audio_unrecorded >= 1.0:
            self.audio_s.inc(self._audio_unrecorded)
            self._audio_unrecorded = 0.0
