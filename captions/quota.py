"""Per-tenant quotas: concurrent streams and audio minutes per period.

Usage lives in the transcript database, not in memory, so every ingest
replica sees the same counts; each check-and-charge is one atomic statement
there. Audio is charged ahead in blocks (`AudioMeter`), so the database is
written about once per block per stream rather than once per audio frame;
at the end of a stream the unused rest of its block is refunded.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from captions import metrics
from captions.errors import QuotaExceeded
from captions.store import StreamStatus, TranscriptStore
from captions.tenants import Tenant

# Audio charged per database write: small enough that a tenant overshoots nothing
# (the charge is refused before the audio is accepted), large enough to keep writes rare.
DEFAULT_BLOCK_S = 10.0
_PERIOD_FORMATS = {"hour": "%Y-%m-%dT%H", "day": "%Y-%m-%d", "month": "%Y-%m"}


def period_key(period: str, now: float) -> str:
    """The UTC calendar period containing `now`, e.g. "2026-11" for month."""
    return dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime(_PERIOD_FORMATS[period])


class QuotaLedger:
    """Checks and records tenant usage in the shared store."""

    def __init__(self, store: TranscriptStore) -> None:
        self.store = store

    def open_stream(self, tenant: Tenant, stream_id: str, language: str | None, now: float | None = None,
                    resume_token: str | None = None) -> None:
        """Register a new stream of `tenant`, or QuotaExceeded if it has its maximum open."""
        limit = tenant.limits.max_concurrent_streams
        if not self.store.open_stream(tenant.id, stream_id, language, limit, now, resume_token):
            metrics.rejected(tenant.id, "concurrent_streams")
            raise QuotaExceeded(f"tenant has {limit} concurrent streams open (its limit)")
        metrics.stream_opened(tenant.id)

    def resume_stream(self, tenant: Tenant, stream_id: str, now: float | None = None) -> None:
        """Reopen an interrupted stream of `tenant`, or QuotaExceeded if it has its maximum open."""
        limit = tenant.limits.max_concurrent_streams
        if not self.store.resume_stream(tenant.id, stream_id, limit, now):
            metrics.rejected(tenant.id, "concurrent_streams")
            raise QuotaExceeded(f"tenant has {limit} concurrent streams open (its limit)")

    def close_stream(self, tenant: Tenant, stream_id: str, status: StreamStatus, language: str | None = None) -> None:
        self.store.close_stream(tenant.id, stream_id, status, language)

    def charge_audio(self, tenant: Tenant, wanted_s: float, minimum_s: float, now: float | None = None) -> float:
        """Charge `wanted_s` of audio to the current period, else `minimum_s`; the amount charged.

        QuotaExceeded if even `minimum_s` would pass the tenant's limit.
        """
        now = time.time() if now is None else now
        limit_s = tenant.limits.audio_minutes_per_period * 60.0
        period = period_key(tenant.limits.period, now)
        for amount in (wanted_s, minimum_s):
            if self.store.add_usage(tenant.id, period, amount, limit_s):
                return amount
        metrics.rejected(tenant.id, "audio_minutes")
        raise QuotaExceeded(
            f"tenant has used its {tenant.limits.audio_minutes_per_period:g} audio minutes "
            f"for this {tenant.limits.period}"
        )

    def refund_audio(self, tenant: Tenant, audio_s: float, now: float | None = None) -> None:
        """Give back audio charged ahead but never received."""
        now = time.time() if now is None else now
        self.store.add_usage(tenant.id, period_key(tenant.limits.period, now), -audio_s, float("inf"))

    def used_s(self, tenant: Tenant, now: float | None = None) -> float:
        now = time.time() if now is None else now
        return self.store.usage_s(tenant.id, period_key(tenant.limits.period, now))


@dataclass
class AudioMeter:
    """Charges one stream's audio to its tenant in blocks, ahead of use."""

    ledger: QuotaLedger
    tenant: Tenant
    stream_id: str
    block_s: float = DEFAULT_BLOCK_S
    charged_s: float = 0.0  # charged to the tenant so far
    used_s: float = 0.0  # audio actually received

    def covers(self, audio_s: float) -> bool:
        """`audio_s` more fits in what is charged already: add() will not touch the database."""
        return self.used_s + audio_s <= self.charged_s

    def add(self, audio_s: float) -> None:
        """Account for `audio_s` more audio before it is accepted; QuotaExceeded if the tenant is out."""
        need = self.used_s + audio_s - self.charged_s
        if need > 0:
            # Near the limit a whole block may not fit while the exact amount still does.
            self.charged_s += self.ledger.charge_audio(self.tenant, max(self.block_s, need), need)
            self.ledger.store.touch(self.tenant.id, self.stream_id)
        self.used_s += audio_s
        metrics.audio_received(self.tenant.id, audio_s)

    def close(self) -> None:
        """Refund what was charged ahead but not used."""
        unused = self.charged_s - self.used_s
        if unused > 0:
            self.ledger.refund_audio(self.tenant, unused)
            self.charged_s = self.used_s
