"""The per-stream glue the ingest calls: quota, persistence and fan-out together."""

from __future__ import annotations

import asyncio

import pytest

from captions.errors import QuotaExceeded
from captions.fanout import CaptionHub
from captions.quota import QuotaLedger
from captions.session import CaptionSession
from captions.store import StreamStatus, TranscriptStore
from captions.tenants import Limits, Tenant
from captions.writer import WordWriter

TENANT = Tenant("acme", Limits(max_concurrent_streams=1, audio_minutes_per_period=1.0))


def words_msg(*words: tuple[str, float, float]) -> dict:
    return {"type": "words", "words": [{"text": t, "start": s, "end": e} for t, s, e in words], "language": "en"}


@pytest.fixture
def parts(db_url: str):
    store = TranscriptStore(db_url)
    return store, QuotaLedger(store), CaptionHub(), WordWriter(store)


def test_session_stores_fans_out_and_closes(parts):
    store, ledger, hub, writer = parts

    async def main():
        session = await CaptionSession.start(store, ledger, hub, writer, TENANT, "s1", "auto")
        viewer = hub.subscribe("s1")
        with pytest.raises(QuotaExceeded):
            await CaptionSession.start(store, ledger, hub, writer, TENANT, "s2", None)  # one stream at a time
        await session.on_audio(2.0)
        await session.on_message(words_msg(("hello", 0.0, 0.4), ("world", 0.4, 0.9)))
        await session.on_message({"type": "partial", "text": "aga"})
        # After re-homing, the ingest replays word 1 and adds word 2.
        await session.on_message(words_msg(("world", 0.4, 0.9), ("again", 1.0, 1.3)), first_seq=1)
        await session.committed([{"text": "flushed", "start": 1.4, "end": 1.8}])
        await session.on_message({"type": "final", "session_id": "s1", "text": "...", "words": []})
        await session.close(StreamStatus.ENDED)
        kinds = []
        while (event := await viewer.next(timeout_s=1.0)) is not None:
            kinds.append(event["type"])
        assert kinds == ["words", "partial", "words", "final"]
        assert [w.text for w in store.words("acme", "s1")] == ["hello", "world", "again", "flushed"]
        record = store.stream("acme", "s1")
        assert (record.status, record.language) == (StreamStatus.ENDED, "en")
        assert ledger.used_s(TENANT) == pytest.approx(2.0)  # the block charged ahead was refunded
        await CaptionSession.start(store, ledger, hub, writer, TENANT, "s2", None)  # the slot is free again

    asyncio.run(main())


def test_interrupted_stream_keeps_words_tells_viewers_and_resumes(parts):
    store, ledger, hub, writer = parts

    async def main():
        session = await CaptionSession.start(store, ledger, hub, writer, TENANT, "s1", None)
        await session.on_message(words_msg(("kept", 0.0, 0.3)))
        viewer = hub.subscribe("s1")
        await session.close(StreamStatus.INTERRUPTED)
        assert (await viewer.next(timeout_s=1.0))["type"] == "words"  # the replay
        assert (await viewer.next(timeout_s=1.0))["code"] == "stream_interrupted"
        resumed = await CaptionSession.start(store, ledger, hub, writer, TENANT, "s1", None, resume=True)
        assert resumed.next_seq == 1
        await resumed.on_message(words_msg(("more", 0.5, 0.8)))
        assert [(w.seq, w.text) for w in store.words("acme", "s1")] == [(0, "kept"), (1, "more")]

    asyncio.run(main())


def test_audio_past_the_quota_is_refused(parts):
    store, ledger, hub, writer = parts

    async def main():
        session = await CaptionSession.start(store, ledger, hub, writer, TENANT, "s1", None)
        await session.on_audio(59.0)
        with pytest.raises(QuotaExceeded):
            await session.on_audio(2.0)

    asyncio.run(main())
