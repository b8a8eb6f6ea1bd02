"""Transcript store: idempotent appends, tenant isolation, viewer tokens, atomic limits.

Every test runs on SQLite and on a live PostgreSQL (the `db_url` fixture).
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import sqlalchemy as sa

from captions.errors import BadRequest, TokenExpired, Unauthorized, UnknownStream
from captions.store import StreamStatus, TranscriptStore, WordBatch
from captions.writer import WordWriter


@pytest.fixture
def store(db_url: str) -> TranscriptStore:
    return TranscriptStore(db_url)


def test_append_is_idempotent_and_ordered(store: TranscriptStore):
    assert store.open_stream("acme", "s1", "en", max_concurrent=5)
    store.append_words("acme", "s1", 0, [("hello", 0.0, 0.4, False), ("world", 0.4, 0.8, True)])
    # A replay after re-homing re-sends seq 1 (with slightly different timing) and adds seq 2.
    store.append_words("acme", "s1", 1, [("world", 0.41, 0.79, False), ("again", 0.8, 1.2, False)])
    got = store.words("acme", "s1")
    assert [(w.seq, w.text, w.start) for w in got] == [(0, "hello", 0.0), (1, "world", 0.4), (2, "again", 0.8)]
    assert [w.text for w in store.words("acme", "s1", after_seq=1)] == ["again"]
    assert [w.utterance_end for w in got] == [False, True, False]


def test_concurrent_streams_share_transactions_and_a_foreign_stream_fails_alone(store: TranscriptStore):
    """Group commit: 12 streams' words in fewer transactions; the one write naming another
    tenant's stream gets UnknownStream, and the others are stored all the same."""
    for i in range(12):
        store.open_stream("acme", f"s{i}", "en", max_concurrent=20)
    writer = WordWriter(store)

    async def main() -> list[BaseException | None]:
        batches = [WordBatch("acme", f"s{i}", 0, [(f"w{i}", 0.0, 0.5, False)]) for i in range(12)]
        batches.append(WordBatch("globex", "s3", 1, [("intruder", 1.0, 1.5, False)]))
        return await asyncio.gather(*(writer.append(b) for b in batches), return_exceptions=True)

    results = asyncio.run(main())
    assert results[:12] == [None] * 12 and isinstance(results[12], UnknownStream)
    assert writer.transactions < 12
    assert [[w.text for w in store.words("acme", f"s{i}")] for i in range(12)] == [[f"w{i}"] for i in range(12)]


def test_a_database_from_before_utterance_ends_gains_the_column(db_url: str):
    old = sa.create_engine(db_url)
    with old.begin() as conn:  # the words table as it was created before the column existed
        conn.execute(sa.text("CREATE TABLE words (stream_id VARCHAR(64) NOT NULL, seq INTEGER NOT NULL, "
                             "text TEXT NOT NULL, start_s FLOAT NOT NULL, end_s FLOAT NOT NULL, "
                             "PRIMARY KEY (stream_id, seq))"))
        conn.execute(sa.text("INSERT INTO words VALUES ('s1', 0, 'old', 0.0, 0.5)"))
    old.dispose()
    store = TranscriptStore(db_url)
    store.open_stream("acme", "s1", None, 5)
    store.append_words("acme", "s1", 1, [("new", 0.5, 0.9, True)])
    assert [(w.text, w.utterance_end) for w in store.words("acme", "s1")] == [("old", False), ("new", True)]


def test_words_survive_a_new_store_on_the_same_database(db_url: str):
    first = TranscriptStore(db_url)
    first.open_stream("acme", "s1", None, 5)
    first.append_words("acme", "s1", 0, [("kept", 0.0, 0.5, False)])
    first.engine.dispose()  # the replica restarts
    assert [w.text for w in TranscriptStore(db_url).words("acme", "s1")] == ["kept"]


def test_a_group_commit_checks_the_owner_of_every_stream_this_store_did_not_open(db_url: str):
    """Streams this store opened skip the ownership query; any other stream (opened by another
    replica's store, closed, or another tenant's) is looked up, and a foreign one is refused."""
    here, there = TranscriptStore(db_url), TranscriptStore(db_url)
    here.open_stream("acme", "mine", None, 5)
    there.open_stream("acme", "theirs", None, 5)
    there.open_stream("globex", "foreign", None, 5)
    here.open_stream("acme", "closed", None, 5)
    here.close_stream("acme", "closed", StreamStatus.INTERRUPTED)
    batches = [WordBatch("acme", sid, 0, [(sid, 0.0, 0.5, False)]) for sid in ("mine", "theirs", "closed", "foreign")]
    refused = here.append_word_batches(batches)
    assert [b.stream_id for b in refused] == ["foreign"]
    for sid in ("mine", "theirs", "closed"):
        assert [w.text for w in here.words("acme", sid)] == [sid]
    assert here.words("globex", "foreign") == []


def test_other_tenant_sees_unknown_stream(store: TranscriptStore):
    store.open_stream("acme", "s1", "en", 5)
    store.append_words("acme", "s1", 0, [("secret", 0.0, 0.5, False)])
    for read in (
        lambda: store.stream("globex", "s1"),
        lambda: store.words("globex", "s1"),
        lambda: store.append_words("globex", "s1", 1, [("x", 1.0, 1.2, False)]),
        lambda: store.create_viewer_token("globex", "s1", 60),
        lambda: store.resume_stream("globex", "s1", 5),
    ):
        with pytest.raises(UnknownStream):
            read()
    store.close_stream("globex", "s1", StreamStatus.ENDED)  # a no-op, not a leak
    assert store.stream("acme", "s1").status is StreamStatus.OPEN
    assert [w.text for w in store.words("acme", "s1")] == ["secret"]


def test_unknown_and_malformed_ids(store: TranscriptStore):
    with pytest.raises(UnknownStream):
        store.words("acme", "nope")
    with pytest.raises(BadRequest):
        store.open_stream("acme", "../etc", None, 5)
    with pytest.raises(BadRequest):
        store.open_stream("acme", "x" * 65, None, 5)
    store.open_stream("acme", "dup", None, 5)
    with pytest.raises(BadRequest):
        store.open_stream("globex", "dup", None, 5)


def test_close_and_resume(store: TranscriptStore):
    store.open_stream("acme", "s1", None, 5, now=100.0)
    store.close_stream("acme", "s1", StreamStatus.INTERRUPTED, language="de", now=110.0)
    rec = store.stream("acme", "s1")
    assert (rec.status, rec.language, rec.ended_at) == (StreamStatus.INTERRUPTED, "de", 110.0)
    store.open_stream("acme", "s2", None, 5, now=120.0)
    assert not store.resume_stream("acme", "s1", max_concurrent=1, now=120.0)  # s2 holds the only slot
    assert store.stream("acme", "s1").status is StreamStatus.INTERRUPTED
    assert store.resume_stream("acme", "s1", max_concurrent=2, now=120.0)
    assert store.stream("acme", "s1").status is StreamStatus.OPEN
    assert store.resume_stream("acme", "s1", max_concurrent=2, now=121.0)  # re-homing an open stream
    store.close_stream("acme", "s1", StreamStatus.ENDED)
    with pytest.raises(BadRequest):
        store.resume_stream("acme", "s1", 5)  # an ended transcript is final


def test_concurrent_limit_counts_only_live_streams(store: TranscriptStore):
    assert store.open_stream("acme", "a", None, 2, now=1000.0)
    assert store.open_stream("acme", "b", None, 2, now=1000.0)
    assert not store.open_stream("acme", "c", None, 2, now=1000.0)
    assert store.open_stream("globex", "g", None, 2, now=1000.0)  # limits are per tenant
    store.close_stream("acme", "a", StreamStatus.ENDED)
    assert store.open_stream("acme", "c", None, 2, now=1000.0)
    # A stream whose replica died stops its heartbeat; after stale_s it no longer counts.
    assert not store.open_stream("acme", "d", None, 2, now=1000.0 + store.stale_s - 1)
    store.touch("acme", "c", now=1000.0 + store.stale_s + 5)
    assert store.open_stream("acme", "d", None, 2, now=1000.0 + store.stale_s + 5)


def test_concurrent_opens_from_many_threads_respect_the_limit(db_url: str):
    # Separate stores (engines, connections) on one database stand in for several ingest replicas.
    replicas = [TranscriptStore(db_url) for _ in range(4)]
    results: list[bool] = []
    lock = threading.Lock()

    def open_many(index: int) -> None:
        for j in range(5):
            ok = replicas[index].open_stream("acme", f"r{index}-{j}", None, 3)
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=open_many, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 3


def test_usage_charges_up_to_the_limit(store: TranscriptStore):
    assert store.add_usage("acme", "2026-11", 50.0, limit_s=60.0)
    assert not store.add_usage("acme", "2026-11", 20.0, limit_s=60.0)
    assert store.add_usage("acme", "2026-11", 10.0, limit_s=60.0)
    assert store.usage_s("acme", "2026-11") == 60.0
    assert store.usage_s("acme", "2026-12") == 0.0
    assert store.usage_s("globex", "2026-11") == 0.0


def test_viewer_tokens(store: TranscriptStore):
    store.open_stream("acme", "s1", None, 5)
    store.open_stream("acme", "s2", None, 5)
    token = store.create_viewer_token("acme", "s1", ttl_s=60, now=1000.0)
    record, expires_at = store.check_viewer_token("s1", token, now=1059.0)
    assert (record.stream_id, expires_at) == ("s1", 1060.0)
    with pytest.raises(TokenExpired):
        store.check_viewer_token("s1", token, now=1060.0)
    with pytest.raises(Unauthorized):
        store.check_viewer_token("s2", token, now=1000.0)  # a token opens one stream only
    with pytest.raises(Unauthorized):
        store.check_viewer_token("s1", token + "x", now=1000.0)
    with pytest.raises(BadRequest):
        store.create_viewer_token("acme", "s1", ttl_s=10 * 24 * 3600)
    # Only the hash is stored, and expired tokens are dropped when new ones are made.
    with store.engine.connect() as conn:
        assert token not in str(conn.exec_driver_sql("SELECT * FROM viewer_tokens").all())
    store.create_viewer_token("acme", "s2", ttl_s=60, now=2000.0)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM viewer_tokens").scalar() == 1


def test_any_replica_can_check_a_resume_token(store: TranscriptStore):
    assert store.open_stream("acme", "s1", "en", 5, resume_token="secret-token")
    assert store.open_stream("acme", "s2", "en", 5)  # a stream opened without one cannot be resumed elsewhere
    other = TranscriptStore(store.url)  # another ingest replica on the same database
    assert other.resume_token_matches("acme", "s1", "secret-token")
    assert not other.resume_token_matches("acme", "s1", "secret-tokeN")
    assert not other.resume_token_matches("acme", "s2", "")
    with pytest.raises(UnknownStream):
        other.resume_token_matches("globex", "s1", "secret-token")
