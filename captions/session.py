"""One published stream's captions bookkeeping: quota, persistence, fan-out.

The ingest makes one CaptionSession per accepted `start` and calls it at
three points of its WebSocket loop:

    session = await CaptionSession.start(store, ledger, hub, writer, tenant, stream_id, language)
    await session.on_audio(seconds)          # before feeding an `audio` frame to the engine
    await session.on_message(msg)            # before sending each server->client frame
    await session.committed(words)           # words committed while flushing, if not sent as `words`
    await session.close(StreamStatus.ENDED)  # after `final` (INTERRUPTED if the client vanished)

Words are stored before the frame reaching the publisher is sent, so any
word a client has seen is in the database; viewers get it first, from the
hub, without waiting for the database.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from captions import metrics
from captions.fanout import CaptionHub
from captions.quota import AudioMeter, QuotaLedger
from captions.store import StreamStatus, TranscriptStore, WordBatch
from captions.tenants import Tenant
from captions.writer import WordWriter


@dataclass
class CaptionSession:
    store: TranscriptStore
    hub: CaptionHub
    writer: WordWriter  # stores committed words (group commit with the replica's other streams)
    tenant: Tenant
    stream_id: str
    meter: AudioMeter
    next_seq: int = 0  # seq of the next committed word (its index in the stream)
    language: str | None = None

    @classmethod
    async def start(
        cls, store: TranscriptStore, ledger: QuotaLedger, hub: CaptionHub, writer: WordWriter, tenant: Tenant,
        stream_id: str, language: str | None, resume: bool = False, resume_token: str | None = None,
    ) -> CaptionSession:
        """Open (or, with `resume`, reopen) the stream: QuotaExceeded, UnknownStream, BadRequest.

        `resume_token` is stored (hashed) with a new stream, so any ingest replica can check a resume.
        """
        if resume:
            await run_in_threadpool(ledger.resume_stream, tenant, stream_id)
            stored = await run_in_threadpool(store.words, tenant.id, stream_id)
            next_seq = stored[-1].seq + 1 if stored else 0
        else:
            await run_in_threadpool(ledger.open_stream, tenant, stream_id, language, None, resume_token)
            next_seq = 0
        hub.open(stream_id)
        return cls(store, hub, writer, tenant, stream_id, AudioMeter(ledger, tenant, stream_id), next_seq,
                   None if language in (None, "auto") else language)

    async def on_audio(self, audio_s: float) -> None:
        """Charge audio to the tenant before it is accepted; QuotaExceeded when the tenant is out."""
        if self.meter.covers(audio_s):
            self.meter.add(audio_s)  # within the charged block: no database call, no thread hop per frame
        else:
            await run_in_threadpool(self.meter.add, audio_s)

    async def on_message(self, msg: dict, first_seq: int | None = None) -> None:
        """Fan out a server->client protocol message; a `words` message's words are also stored.

        `final` is only fanned out: its `words` may repeat earlier ones. Words the
        engine commits while flushing must reach the client (and this method) as a
        `words` message before `final`, or be passed to `committed`.
        """
        self.hub.publish(self.stream_id, msg)
        self.language = msg.get("language") or self.language
        if msg.get("type") == "words":
            await self.committed(msg["words"], first_seq, bool(msg.get("utterance_end")))

    async def committed(self, words: list[dict], first_seq: int | None = None, utterance_end: bool = False) -> None:
        """Store newly committed words {text, start, end}; `utterance_end`: the last one ended an utterance.

        `first_seq`: the stream index of the first word when the ingest replays
        words after re-homing, so a replay overwrites nothing and adds no copies.
        """
        if not words:
            return
        seq = self.next_seq if first_seq is None else first_seq
        rows = [(w["text"], float(w["start"]), float(w["end"]), False) for w in words]
        if utterance_end:
            rows[-1] = (*rows[-1][:3], True)
        await self.writer.append(WordBatch(self.tenant.id, self.stream_id, seq, rows))
        self.next_seq = max(self.next_seq, seq + len(rows))
        metrics.words_committed(self.tenant.id, len(rows))

    async def close(self, status: StreamStatus) -> None:
        """The stream is over (ENDED) or its client is gone (INTERRUPTED): free its slot, refund audio."""
        await run_in_threadpool(self.meter.close)
        await run_in_threadpool(self.store.close_stream, self.tenant.id, self.stream_id, status, self.language)
        if status is StreamStatus.INTERRUPTED:
            self.hub.publish(self.stream_id, {"type": "error", "code": "stream_interrupted",
                                              "message": "the publisher disconnected"})
