"""The transcript store on a live PostgreSQL: what SQLite's one-writer-at-a-time lock cannot show.

Ingest replicas are separate processes, each with its own TranscriptStore
(engine, pool); here they are threads or processes with a store each,
racing on one tenant. The tests shared with SQLite are in
test_captions_store.py, test_captions_tenants.py and test_captions_session.py.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest
import sqlalchemy as sa

from captions.errors import BadRequest, QuotaExceeded
from captions.fanout import CaptionHub
from captions.quota import QuotaLedger
from captions.session import CaptionSession
from captions.store import StreamStatus, TranscriptStore
from captions.tenants import Limits, Tenant
from captions.writer import WordWriter

T = TypeVar("T")
# Seconds a racing thread or process may take before the test calls it stuck.
RACE_TIMEOUT_S = 60


def race(calls: list[Callable[[], T]]) -> list[T]:
    """Run the calls in threads released together; their results (an exception is re-raised)."""
    barrier = threading.Barrier(len(calls))
    results: list[T | BaseException | None] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as err:  # handed to the test thread, which re-raises it
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RACE_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "a racing call did not finish (deadlock?)"
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results  # type: ignore[return-value]


def live_streams(store: TranscriptStore, tenant_id: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT count(*) FROM streams WHERE tenant_id = :t AND status = 'open'"), {"t": tenant_id}
        ).scalar_one()


# ------------------------------------------------------------ concurrent limit
def _open_in_process(url: str, index: int, tries: int, limit: int, barrier, out) -> None:  # type: ignore[no-untyped-def]
    """One ingest replica (a process of its own): open `tries` streams of one tenant as soon as all start."""
    store = TranscriptStore(url)
    barrier.wait(RACE_TIMEOUT_S)
    out.put([store.open_stream("acme", f"p{index}-{j}", None, limit) for j in range(tries)])


def test_two_replica_processes_racing_opens_get_exactly_the_limit(postgres_url: str):
    TranscriptStore(postgres_url)  # the schema, so the replicas race on opens, not on CREATE TABLE
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, as a replica is
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_open_in_process, args=(postgres_url, i, 6, 4, barrier, out)) for i in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=RACE_TIMEOUT_S) for _ in procs]
    for p in procs:
        p.join(RACE_TIMEOUT_S)
        assert p.exitcode == 0
    assert sum(sum(r) for r in results) == 4
    assert live_streams(TranscriptStore(postgres_url), "acme") == 4


def test_racing_opens_and_resumes_on_two_replicas_never_pass_the_limit(postgres_url: str):
    replicas = [TranscriptStore(postgres_url), TranscriptStore(postgres_url)]
    for i in range(4):  # four interrupted streams, resumable, none counted
        replicas[0].open_stream("acme", f"old{i}", None, 10)
        replicas[0].close_stream("acme", f"old{i}", StreamStatus.INTERRUPTED)
    opens = [lambda i=i: replicas[i % 2].open_stream("acme", f"new{i}", None, 3) for i in range(6)]
    resumes = [lambda i=i: replicas[i % 2].resume_stream("acme", f"old{i}", 3) for i in range(4)]
    assert sum(race(opens + resumes)) == 3
    assert live_streams(replicas[1], "acme") == 3


def test_first_streams_of_a_new_tenant_race_on_its_row(postgres_url: str):
    # No tenants row yet: both replicas insert it (ON CONFLICT DO NOTHING) before locking it.
    replicas = [TranscriptStore(postgres_url), TranscriptStore(postgres_url)]
    opens = [lambda i=i: replicas[i % 2].open_stream("newco", f"s{i}", None, 1) for i in range(8)]
    assert sum(race(opens)) == 1


def test_racing_audio_charges_stop_exactly_at_the_limit(postgres_url: str):
    replicas = [TranscriptStore(postgres_url), TranscriptStore(postgres_url)]

    def charge(store: TranscriptStore) -> int:
        return sum(store.add_usage("acme", "2026-12", 1.0, limit_s=25.0) for _ in range(10))

    assert sum(race([lambda i=i: charge(replicas[i % 2]) for i in range(6)])) == 25
    assert replicas[0].usage_s("acme", "2026-12") == 25.0


def test_one_stream_id_opened_by_two_tenants_at_once_is_a_bad_request(postgres_url: str):
    # Different tenants lock different rows, so both pass the "already taken" check;
    # the loser must still get BadRequest (400), not a database error (500).
    replicas = [TranscriptStore(postgres_url), TranscriptStore(postgres_url)]
    outcomes: list[str] = []
    for attempt in range(10):
        def open_as(tenant: str, store: TranscriptStore) -> str:
            try:
                return "opened" if store.open_stream(tenant, f"same{attempt}", None, 100) else "refused"
            except BadRequest:
                return "taken"

        outcomes += race([lambda: open_as("acme", replicas[0]), lambda: open_as("globex", replicas[1])])
    assert outcomes.count("opened") == 10 and outcomes.count("taken") == 10


# ------------------------------------------------------------ schema
def test_replicas_starting_together_on_an_empty_database_all_come_up(postgres_server):
    # Every replica runs create_all at start; on PostgreSQL two concurrent CREATE TABLEs of
    # one name collide in the catalog unless the schema step is serialised.
    for _ in range(3):
        url = postgres_server.create_database()
        stores = race([lambda: TranscriptStore(url) for _ in range(4)])
        assert stores[0].open_stream("acme", "s1", None, 1)
        postgres_server.drop_database(url)


def test_the_utterance_end_migration_makes_a_real_boolean_column(postgres_url: str):
    old = sa.create_engine(postgres_url)
    with old.begin() as conn:  # the words table as it was before utterance ends, with a row
        conn.execute(sa.text("CREATE TABLE words (stream_id VARCHAR(64) NOT NULL, seq INTEGER NOT NULL, "
                             "text TEXT NOT NULL, start_s FLOAT NOT NULL, end_s FLOAT NOT NULL, "
                             "PRIMARY KEY (stream_id, seq))"))
        conn.execute(sa.text("INSERT INTO words VALUES ('s1', 0, 'old', 0.0, 0.5)"))
    old.dispose()
    race([lambda: TranscriptStore(postgres_url) for _ in range(3)])  # replicas upgrading together
    store = TranscriptStore(postgres_url)
    column = {c["name"]: c for c in sa.inspect(store.engine).get_columns("words")}["utterance_end"]
    assert isinstance(column["type"], sa.Boolean) and not column["nullable"]
    store.open_stream("acme", "s1", None, 5)
    store.append_words("acme", "s1", 0, [("replayed", 0.0, 0.5, True), ("new", 0.5, 0.9, True)])
    assert [(w.text, w.utterance_end) for w in store.words("acme", "s1")] == [("old", False), ("new", True)]


# ------------------------------------------------------------ replays
def test_overlapping_replays_from_two_replicas_store_each_word_once(postgres_url: str):
    replicas = [TranscriptStore(postgres_url), TranscriptStore(postgres_url)]
    replicas[0].open_stream("acme", "s1", None, 5)
    words = [(f"w{i}", i * 0.5, i * 0.5 + 0.4, i % 5 == 4) for i in range(40)]

    def replay(store: TranscriptStore, first: int) -> None:
        for seq in range(first, 40, 8):  # batches of 8 that overlap the other replica's
            store.append_words("acme", "s1", seq, words[seq:seq + 8])

    race([lambda: replay(replicas[0], 0), lambda: replay(replicas[1], 4), lambda: replay(replicas[0], 2)])
    got = replicas[1].words("acme", "s1")
    assert [(w.seq, w.text, w.start, w.end, w.utterance_end) for w in got] == [
        (i, *word) for i, word in enumerate(words)
    ]


# ------------------------------------------------------------ two ingests
def test_a_stream_moves_between_two_ingests_sharing_the_database(postgres_url: str):
    tenant = Tenant("acme", Limits(max_concurrent_streams=1, audio_minutes_per_period=1.0))
    # Each ingest replica has its own store, ledger, hub and writer; only the database is shared.
    first_store, second_store = TranscriptStore(postgres_url), TranscriptStore(postgres_url)
    first = (first_store, QuotaLedger(first_store), CaptionHub(), WordWriter(first_store))
    second = (second_store, QuotaLedger(second_store), CaptionHub(), WordWriter(second_store))

    def words_msg(*texts: str, start: float) -> dict:
        return {"type": "words", "language": "en",
                "words": [{"text": t, "start": start + i, "end": start + i + 0.5} for i, t in enumerate(texts)]}

    async def main() -> None:
        session = await CaptionSession.start(*first, tenant, "s1", "en")
        await session.on_audio(20.0)
        await session.on_message(words_msg("one", "two", start=0.0))
        with pytest.raises(QuotaExceeded):  # the tenant's one slot is held through the other ingest
            await CaptionSession.start(*second, tenant, "s2", None)
        await session.close(StreamStatus.INTERRUPTED)  # the client's connection dropped
        moved = await CaptionSession.start(*second, tenant, "s1", None, resume=True)
        assert moved.next_seq == 2
        await moved.on_message(words_msg("two", "three", start=1.0), first_seq=1)  # the replay overlaps
        with pytest.raises(QuotaExceeded):  # the audio quota is shared too: 20 s + 41 s > 60 s
            await moved.on_audio(41.0)
        await moved.on_audio(30.0)
        await moved.close(StreamStatus.ENDED)
        await CaptionSession.start(*first, tenant, "s2", None)  # the slot is free again, seen from the first

    asyncio.run(main())
    assert [w.text for w in first_store.words("acme", "s1")] == ["one", "two", "three"]
    assert first_store.stream("acme", "s1").status is StreamStatus.ENDED
    assert QuotaLedger(first_store).used_s(tenant) == pytest.approx(50.0)
