"""Per-tenant usage counters (Prometheus), exposed by the ingest's GET /metrics."""

from __future__ import annotations

from prometheus_client import Counter

STREAMS_OPENED = Counter("captions_streams_opened_total", "Streams opened, per tenant", ["tenant"])
AUDIO_SECONDS = Counter("captions_audio_seconds_total", "Audio received, per tenant", ["tenant"])
WORDS_COMMITTED = Counter("captions_words_committed_total", "Committed words stored, per tenant", ["tenant"])
REJECTIONS = Counter(
    "captions_rejections_total", "Requests refused by a tenant limit, per tenant and reason", ["tenant", "reason"]
)


def stream_opened(tenant: str) -> None:
    STREAMS_OPENED.labels(tenant=tenant).inc()


def audio_received(tenant: str, seconds: float) -> None:
    AUDIO_SECONDS.labels(tenant=tenant).inc(seconds)


def words_committed(tenant: str, count: int) -> None:
    WORDS_COMMITTED.labels(tenant=tenant).inc(count)


def rejected(tenant: str, reason: str) -> None:
    REJECTIONS.labels(tenant=tenant, reason=reason).inc()
