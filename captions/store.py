"""Transcript persistence in one SQL database (SQLAlchemy Core).

SQLite by default (a file; `CAPTIONS_DB_URL` or a URL argument selects
another, e.g. postgresql+psycopg://...), shared by every ingest replica:

- streams: owner tenant, status, language, timestamps, last activity
- words: committed words keyed by (stream_id, seq), so a replay after
  re-homing re-sends the same seqs and nothing is duplicated
- viewer_tokens: SHA-256 of random tokens (high entropy: no salt needed), expiry
- usage: audio seconds per tenant and period, for quotas (captions.quota)

Every read takes the tenant: another tenant's stream is reported as unknown,
never as forbidden, so stream ids do not leak.
"""

from __future__ import annotations

import enum
import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from captions.errors import BadRequest, TokenExpired, Unauthorized, UnknownStream

DEFAULT_DB_PATH = Path("artifacts/captions.sqlite3")
# Longest stream id accepted; ids come from clients (resume) and URLs.
MAX_ID_CHARS = 64
# Viewer tokens live at most this long.
MAX_VIEWER_TTL_S = 24 * 3600.0
# PostgreSQL advisory lock held while a replica creates or upgrades the schema;
# any fixed 64-bit number no other user of the database locks ("captions" in ASCII).
SCHEMA_LOCK_KEY = 0x63617074696F6E73

metadata = sa.MetaData()

tenants = sa.Table(
    "tenants",
    metadata,
    # One row per tenant seen, locked while its concurrent streams are counted (PostgreSQL).
    sa.Column("tenant_id", sa.String(64), primary_key=True),
)

streams = sa.Table(
    "streams",
    metadata,
    sa.Column("stream_id", sa.String(MAX_ID_CHARS), primary_key=True),
    sa.Column("tenant_id", sa.String(64), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("language", sa.String(16)),
    sa.Column("created_at", sa.Float, nullable=False),  # unix seconds
    sa.Column("ended_at", sa.Float),
    # Heartbeat of an open stream; a stale one no longer counts as concurrent (its replica died).
    sa.Column("active_at", sa.Float, nullable=False),
    # SHA-256 of the session's resume token: any ingest replica can check a resume.
    sa.Column("resume_hash", sa.String(64)),
)

words = sa.Table(
    "words",
    metadata,
    sa.Column("stream_id", sa.String(MAX_ID_CHARS), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),  # 0-based index of the word in its stream
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("start_s", sa.Float, nullable=False),
    sa.Column("end_s", sa.Float, nullable=False),
    # The speaker paused after this word (voice activity endpoint): exports break cues here.
    sa.Column("utterance_end", sa.Boolean, nullable=False, server_default=sa.false()),
)

viewer_tokens = sa.Table(
    "viewer_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("stream_id", sa.String(MAX_ID_CHARS), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

usage = sa.Table(
    "usage",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("period", sa.String(16), primary_key=True),  # e.g. "2026-11" for a monthly period
    sa.Column("audio_s", sa.Float, nullable=False),
)


class StreamStatus(str, enum.Enum):
    OPEN = "open"
    ENDED = "ended"  # finished normally (`end` from the client, FinalEvent)
    INTERRUPTED = "interrupted"  # client gone or failed; its committed words are kept


@dataclass(frozen=True)
class WordBatch:
    """Words `first_seq`, `first_seq + 1`, ... of one stream, each (text, start_s, end_s, utterance_end)."""

    tenant_id: str
    stream_id: str
    first_seq: int
    words: list[tuple[str, float, float, bool]]


@dataclass(frozen=True)
class StreamRecord:
    stream_id: str
    tenant_id: str
    status: StreamStatus
    language: str | None
    created_at: float
    ended_at: float | None

    def as_dict(self) -> dict[str, object]:
        return {
            "stream_id": self.stream_id,
            "status": self.status.value,
            "language": self.language,
            "created_at": self.created_at,
            "ended_at": self.ended_at,
        }


@dataclass(frozen=True)
class StoredWord:
    seq: int
    text: str
    start: float
    end: float
    utterance_end: bool = False


def database_url(url: str | None = None) -> str:
    """The URL argument, else $CAPTIONS_DB_URL, else a SQLite file under artifacts/."""
    return url or os.environ.get("CAPTIONS_DB_URL") or f"sqlite:///{DEFAULT_DB_PATH}"


def check_id(stream_id: str) -> str:
    """Stream ids are short printable tokens (they appear in URLs and logs)."""
    if not 0 < len(stream_id) <= MAX_ID_CHARS or not all(c.isascii() and (c.isalnum() or c in "-_") for c in stream_id):
        raise BadRequest(f"stream id must be 1-{MAX_ID_CHARS} characters of [A-Za-z0-9_-]")
    return stream_id


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TranscriptStore:
    """Streams, their committed words, viewer tokens and usage, in one database."""

    def __init__(self, url: str | None = None, stale_s: float = 60.0) -> None:
        url = database_url(url)
        self.url = url
        self.stale_s = stale_s
        self.engine = _make_engine(url)
        _create_schema(self.engine)
        # (tenant, stream) pairs this store opened or resumed and has not closed: known to be
        # the tenant's, so the group commit of their words needs no ownership query.
        self._owned: set[tuple[str, str]] = set()

    # ------------------------------------------------------------- streams
    def open_stream(
        self, tenant_id: str, stream_id: str, language: str | None, max_concurrent: int, now: float | None = None,
        resume_token: str | None = None,
    ) -> bool:
        """Record a new open stream unless the tenant has `max_concurrent` live ones; False if at the limit.

        Atomic across replicas: the count and the insert are one statement,
        and on PostgreSQL the tenant row is locked first so concurrent opens
        of one tenant are serialised (SQLite serialises all writers).
        """
        check_id(stream_id)
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            self._insert_ignore(conn, tenants, {"tenant_id": tenant_id}, ["tenant_id"])
            conn.execute(sa.select(tenants.c.tenant_id).where(tenants.c.tenant_id == tenant_id).with_for_update())
            if conn.execute(sa.select(streams.c.stream_id).where(streams.c.stream_id == stream_id)).first():
                raise BadRequest(f"stream id {stream_id!r} is already taken")
            live = (
                sa.select(sa.func.count())
                .select_from(streams)
                .where(
                    streams.c.tenant_id == tenant_id,
                    streams.c.status == StreamStatus.OPEN.value,
                    streams.c.active_at >= now - self.stale_s,
                )
                .scalar_subquery()
            )
            row = sa.select(
                sa.literal(stream_id, sa.String),
                sa.literal(tenant_id, sa.String),
                sa.literal(StreamStatus.OPEN.value, sa.String),
                sa.literal(language, sa.String),
                sa.literal(now, sa.Float),
                sa.literal(now, sa.Float),
                sa.literal(None if resume_token is None else _hash_token(resume_token), sa.String),
            ).where(live < max_concurrent)
            try:
                inserted = conn.execute(
                    streams.insert().from_select(
                        ["stream_id", "tenant_id", "status", "language", "created_at", "active_at", "resume_hash"],
                        row,
                    ),
                    # SQLAlchemy keeps an INSERT's rowcount only when asked: psycopg's cursor
                    # is closed (rowcount -1) by the time the result is returned.
                    execution_options={"preserve_rowcount": True},
                )
            except sa.exc.IntegrityError as err:
                # Another tenant opened this id since the check above: each tenant locks only its own row.
                raise BadRequest(f"stream id {stream_id!r} is already taken") from err
        if inserted.rowcount != 1:
            return False
        self._owned.add((tenant_id, stream_id))
        return True

    def resume_token_matches(self, tenant_id: str, stream_id: str, token: str) -> bool:
        """The stream is this tenant's and `token` is its resume token (UnknownStream otherwise)."""
        self.stream(tenant_id, stream_id)
        with self.engine.connect() as conn:
            stored = conn.execute(sa.select(streams.c.resume_hash).where(streams.c.stream_id == stream_id)).scalar()
        return stored is not None and secrets.compare_digest(stored, _hash_token(token))

    def touch(self, tenant_id: str, stream_id: str, now: float | None = None) -> None:
        """Heartbeat of an open stream (keeps it counted as concurrent)."""
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            conn.execute(
                streams.update()
                .where(streams.c.stream_id == stream_id, streams.c.tenant_id == tenant_id)
                .values(active_at=now)
            )

    def resume_stream(
        self, tenant_id: str, stream_id: str, max_concurrent: int, now: float | None = None
    ) -> bool:
        """Reopen an interrupted (or still open) stream of this tenant; False if at the concurrency limit.

        An ended stream cannot be resumed (BadRequest): its transcript is final.
        The count (other live streams) and the update are one statement, as in open_stream.
        """
        now = time.time() if now is None else now
        if self.stream(tenant_id, stream_id).status is StreamStatus.ENDED:
            raise BadRequest(f"stream {stream_id!r} has ended and cannot be resumed")
        with self.engine.begin() as conn:
            conn.execute(sa.select(tenants.c.tenant_id).where(tenants.c.tenant_id == tenant_id).with_for_update())
            others = sa.alias(streams, "others")
            live = (
                sa.select(sa.func.count())
                .select_from(others)
                .where(
                    others.c.tenant_id == tenant_id,
                    others.c.stream_id != stream_id,
                    others.c.status == StreamStatus.OPEN.value,
                    others.c.active_at >= now - self.stale_s,
                )
                .scalar_subquery()
            )
            updated = conn.execute(
                streams.update()
                .where(
                    streams.c.stream_id == stream_id,
                    streams.c.tenant_id == tenant_id,
                    streams.c.status != StreamStatus.ENDED.value,
                    live < max_concurrent,
                )
                .values(status=StreamStatus.OPEN.value, ended_at=None, active_at=now)
            )
        if updated.rowcount != 1:
            return False
        self._owned.add((tenant_id, stream_id))
        return True

    def close_stream(
        self, tenant_id: str, stream_id: str, status: StreamStatus, language: str | None = None,
        now: float | None = None,
    ) -> None:
        """Mark a stream ended or interrupted (it stops counting as concurrent)."""
        if status is StreamStatus.OPEN:
            raise ValueError("close_stream needs ENDED or INTERRUPTED")
        values: dict[str, object] = {"status": status.value, "ended_at": time.time() if now is None else now}
        if language is not None:
            values["language"] = language
        self._owned.discard((tenant_id, stream_id))
        with self.engine.begin() as conn:
            conn.execute(
                streams.update()
                .where(streams.c.stream_id == stream_id, streams.c.tenant_id == tenant_id)
                .values(**values)
            )

    def stream(self, tenant_id: str, stream_id: str) -> StreamRecord:
        """The stream if it belongs to `tenant_id`, else UnknownStream."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(streams).where(streams.c.stream_id == stream_id, streams.c.tenant_id == tenant_id)
            ).first()
        if row is None:
            raise UnknownStream(f"no stream {stream_id!r}")
        return StreamRecord(
            row.stream_id, row.tenant_id, StreamStatus(row.status), row.language, row.created_at, row.ended_at
        )

    # --------------------------------------------------------------- words
    def append_words(
        self, tenant_id: str, stream_id: str, first_seq: int, new_words: list[tuple[str, float, float, bool]]
    ) -> None:
        """Store words `first_seq`, `first_seq + 1`, ... of a stream; seqs already stored are kept as they were.

        A word is (text, start_s, end_s, utterance_end). UnknownStream if the stream is not the tenant's.
        """
        if self.append_word_batches([WordBatch(tenant_id, stream_id, first_seq, new_words)]):
            raise UnknownStream(f"no stream {stream_id!r}")

    def append_word_batches(self, batches: list[WordBatch]) -> list[WordBatch]:
        """Several streams' words in one transaction (captions.writer's group commit).

        Returns the batches not written because their stream is not their tenant's.
        Only streams this store did not open or resume are looked up; the
        streams' heartbeat is `touch` (every audio block), not their words:
        the ownership query and that update were two thirds of the CPU of a
        transaction that runs ~30 times a second at 64 streams.
        """
        owned = {(b.tenant_id, b.stream_id) for b in batches if (b.tenant_id, b.stream_id) in self._owned}
        unchecked = {b.stream_id for b in batches if (b.tenant_id, b.stream_id) not in owned}
        with self.engine.begin() as conn:
            if unchecked:
                owners = conn.execute(
                    sa.select(streams.c.stream_id, streams.c.tenant_id).where(streams.c.stream_id.in_(unchecked))
                ).all()
                owned |= {(row.tenant_id, row.stream_id) for row in owners}
            rows = [
                {"stream_id": b.stream_id, "seq": b.first_seq + i, "text": text, "start_s": start, "end_s": end,
                 "utterance_end": utterance_end}
                for b in batches if (b.tenant_id, b.stream_id) in owned
                for i, (text, start, end, utterance_end) in enumerate(b.words)
            ]
            if rows:
                self._insert_ignore(conn, words, rows, ["stream_id", "seq"])
        return [b for b in batches if (b.tenant_id, b.stream_id) not in owned]

    def words(self, tenant_id: str, stream_id: str, after_seq: int = -1) -> list[StoredWord]:
        """The stream's stored words with seq > after_seq, in order."""
        self.stream(tenant_id, stream_id)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(words)
                .where(words.c.stream_id == stream_id, words.c.seq > after_seq)
                .order_by(words.c.seq)
            ).all()
        return [StoredWord(r.seq, r.text, r.start_s, r.end_s, bool(r.utterance_end)) for r in rows]

    # -------------------------------------------------------- viewer tokens
    def create_viewer_token(self, tenant_id: str, stream_id: str, ttl_s: float, now: float | None = None) -> str:
        """A new read-only token for one stream; only its hash is stored."""
        self.stream(tenant_id, stream_id)
        if not 0 < ttl_s <= MAX_VIEWER_TTL_S:
            raise BadRequest(f"ttl_s must be in (0, {MAX_VIEWER_TTL_S:.0f}]")
        token = secrets.token_urlsafe(32)
        now = time.time() if now is None else now
        expires = now + ttl_s
        with self.engine.begin() as conn:
            # Expired tokens are useless; dropping them here keeps the table bounded without a janitor.
            conn.execute(viewer_tokens.delete().where(viewer_tokens.c.expires_at <= now))
            conn.execute(viewer_tokens.insert().values(token_hash=_hash_token(token), stream_id=stream_id,
                                                       expires_at=expires))
        return token

    def check_viewer_token(self, stream_id: str, token: str, now: float | None = None) -> tuple[StreamRecord, float]:
        """The stream a token grants and when the token expires, or Unauthorized / TokenExpired."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(viewer_tokens.c.expires_at, streams.c.tenant_id)
                .join(streams, streams.c.stream_id == viewer_tokens.c.stream_id)
                .where(viewer_tokens.c.token_hash == _hash_token(token), viewer_tokens.c.stream_id == stream_id)
            ).first()
        if row is None:
            raise Unauthorized("unknown viewer token for this stream")
        if row.expires_at <= (time.time() if now is None else now):
            raise TokenExpired("viewer token has expired")
        return self.stream(row.tenant_id, stream_id), row.expires_at

    # ---------------------------------------------------------------- usage
    def add_usage(self, tenant_id: str, period: str, audio_s: float, limit_s: float) -> bool:
        """Add `audio_s` to the tenant's period usage unless that would pass `limit_s`; False then."""
        with self.engine.begin() as conn:
            self._insert_ignore(conn, usage, {"tenant_id": tenant_id, "period": period, "audio_s": 0.0},
                                ["tenant_id", "period"])
            # One conditional UPDATE: atomic against other replicas charging the same row.
            updated = conn.execute(
                usage.update()
                .where(usage.c.tenant_id == tenant_id, usage.c.period == period,
                       usage.c.audio_s + audio_s <= limit_s)
                .values(audio_s=usage.c.audio_s + audio_s)
            )
            return updated.rowcount == 1

    def usage_s(self, tenant_id: str, period: str) -> float:
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(usage.c.audio_s).where(usage.c.tenant_id == tenant_id, usage.c.period == period)
            ).scalar()
        return float(value or 0.0)

    # -------------------------------------------------------------- helpers
    def _insert_ignore(self, conn: Connection, table: sa.Table, rows: object, keys: list[str]) -> None:
        """INSERT ... ON CONFLICT DO NOTHING, in the dialect's own syntax."""
        dialect = {"sqlite": sqlite, "postgresql": postgresql}.get(conn.dialect.name)
        if dialect is None:
            raise ValueError(f"unsupported database {conn.dialect.name!r}: use SQLite or PostgreSQL")
        conn.execute(dialect.insert(table).on_conflict_do_nothing(index_elements=keys), rows)


def _create_schema(engine: Engine) -> None:
    """Missing tables and columns, in one transaction; on PostgreSQL one replica at a time.

    Replicas start together: two CREATE TABLEs of one name collide in PostgreSQL's
    catalog (a unique violation, not "already exists"), so a transaction-scoped
    advisory lock serialises the step; PostgreSQL's DDL is transactional, so the
    next replica sees the finished schema. SQLite (one host, tests and local runs)
    is left unguarded.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
        metadata.create_all(conn)
        _add_missing_columns(conn)


def _add_missing_columns(conn: Connection) -> None:
    """Columns added since a database was created (create_all makes only missing tables).

    Each has a server default, so existing rows read as before.
    """
    added = {("words", "utterance_end"): "BOOLEAN NOT NULL DEFAULT FALSE", ("streams", "resume_hash"): "VARCHAR(64)"}
    inspector = sa.inspect(conn)
    for (table, column), ddl in added.items():
        if column not in {c["name"] for c in inspector.get_columns(table)}:
            conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Wait for other writers (replicas) instead of failing with "database is locked".
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            # WAL lets readers (viewers, exports) run while a replica writes. synchronous=NORMAL
            # syncs at checkpoints, not at every commit: a killed process loses nothing (the
            # WAL is in the OS's cache), only a power cut can lose the last commits.
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)
