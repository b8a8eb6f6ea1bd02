"""Group commit of committed words: every stream of an ingest replica, one transaction at a time.

Each stream's words must be stored before its client sees them, so a
stream waits for its write; but one transaction per `words` event (a
thread hop, an ownership query, an insert and a commit each) was a tenth
of an ingest replica's CPU at 40 streams. Here a stream's write joins
whatever is waiting while the previous transaction runs, and the next
transaction stores them all: no added wait, and fewer transactions the
busier the replica is.
"""

from __future__ import annotations

import asyncio

from starlette.concurrency import run_in_threadpool

from captions.errors import UnknownStream
from captions.store import TranscriptStore, WordBatch


class WordWriter:
    """One per ingest replica (and event loop): `await append(batch)` returns once the words are stored."""

    def __init__(self, store: TranscriptStore) -> None:
        self.store = store
        self._waiting: list[tuple[WordBatch, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task | None = None
        # Transactions run so far (for tests and figures).
        self.transactions = 0

    async def append(self, batch: WordBatch) -> None:
        """Store the batch's words; UnknownStream if the stream is not its tenant's; database errors raise."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((batch, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        await done

    async def _flush(self) -> None:
        while self._waiting:
            taken, self._waiting = self._waiting, []
            try:
                refused = await run_in_threadpool(self.store.append_word_batches, [b for b, _ in taken])
            except Exception as exc:
                # The database failed this transaction: every stream in it gets the error.
                for _, done in taken:
                    if not done.done():
                        done.set_exception(exc)
                continue
            finally:
                self.transactions += 1
            refused_ids = {id(b) for b in refused}
            for batch, done in taken:
                if done.done():
                    continue  # its stream stopped waiting (cancelled)
                if id(batch) in refused_ids:
                    done.set_exception(UnknownStream(f"no stream {batch.stream_id!r}"))
                else:
                    done.set_result(None)
