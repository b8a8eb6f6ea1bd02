"""Live caption fan-out from one publisher to any number of read-only viewers.

`publish` is synchronous and O(viewers) with no awaits: it only appends to
each viewer's queue. A viewer whose queue is full is cut off (its queue is
replaced by a `slow_consumer` close) instead of ever making the publisher
wait. Late joiners first get the stream's recent `words` events (a bounded
replay buffer) and its latest `partial`.

All methods must be called from the event loop that runs the ingest (the
queues are asyncio queues); events are protocol dicts such as
{"type": "words", "words": [...]}, passed through unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Event types after which a stream has nothing more to say.
_TERMINAL = ("final", "error")


@dataclass(frozen=True)
class Closed:
    """Why a viewer's feed ended: `stream_ended`, or `slow_consumer` if it fell behind."""

    code: str
    message: str


@dataclass(eq=False)
class Subscription:
    """One viewer's feed of a stream."""

    stream_id: str
    limit: int  # events it may have waiting before it is cut off
    queue: asyncio.Queue[dict | Closed] = field(default_factory=asyncio.Queue)
    closed: Closed | None = None  # set once the close has been read

    async def next(self, timeout_s: float | None = None) -> dict | None:
        """The next event, None on timeout or once closed (then `closed` says why)."""
        if self.closed is not None:
            return None
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout_s)
        except asyncio.TimeoutError:
            return None
        if isinstance(item, Closed):
            self.closed = item
            return None
        return item

    def _offer(self, item: dict | Closed) -> bool:
        """Queue an event; False if the viewer has fallen `limit` events behind."""
        if isinstance(item, dict) and self.queue.qsize() >= self.limit:
            return False
        self.queue.put_nowait(item)
        return True

    def _cut_off(self, reason: Closed) -> None:
        # Drop what it has not read so the close is the next thing it sees.
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(reason)


@dataclass
class _Channel:
    """Fan-out state of one stream."""

    recent: collections.deque[dict]  # last words events, replayed to late joiners
    partial: dict | None = None  # latest partial event
    terminal: dict | None = None  # final or error event, once the stream is over
    viewers: set[Subscription] = field(default_factory=set)


class CaptionHub:
    """In-process fan-out of every stream published on this ingest replica."""

    def __init__(self, queue_limit: int = 256, replay_events: int = 64, keep_finished: int = 64) -> None:
        self.queue_limit = queue_limit
        self.replay_events = replay_events
        self.keep_finished = keep_finished
        self._channels: dict[str, _Channel] = {}
        # Finished streams stay replayable from memory for a while, oldest forgotten first; later
        # viewers read the stored transcript (captions/http.py). Each holds its whole final
        # transcript and up to replay_events events: 1024 streams of 30 s held ~20 MB, and a
        # churning ingest replica grew by that much in its first hour (benchmarks/soak.py).
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()

    def open(self, stream_id: str) -> None:
        """Start (or restart, after a resume) a stream's channel; viewers may join from now on."""
        channel = self._channels.get(stream_id)
        if channel is None:
            self._channels[stream_id] = _Channel(collections.deque(maxlen=self.replay_events))
        else:
            channel.terminal = None
            self._finished.pop(stream_id, None)

    def is_live(self, stream_id: str) -> bool:
        """Whether the stream is being published here and has not ended."""
        channel = self._channels.get(stream_id)
        return channel is not None and channel.terminal is None

    def publish(self, stream_id: str, event: dict) -> None:
        """Hand an event to every viewer; never waits."""
        if stream_id not in self._channels:
            self.open(stream_id)
        channel = self._channels[stream_id]
        kind = event.get("type")
        if kind == "words":
            channel.recent.append(event)
            channel.partial = None
        elif kind == "partial":
            channel.partial = event
        slow = [viewer for viewer in channel.viewers if not viewer._offer(event)]
        for viewer in slow:
            log.info("stream %s: viewer fell %d events behind, cut off", stream_id, viewer.limit)
            viewer._cut_off(Closed("slow_consumer", f"viewer fell {viewer.limit} events behind the live captions"))
            channel.viewers.discard(viewer)
        if kind in _TERMINAL:
            channel.terminal, channel.partial = event, None
            for viewer in channel.viewers:
                viewer.queue.put_nowait(Closed("stream_ended", "the stream has ended"))
            channel.viewers.clear()
            self._finished[stream_id] = None
            while len(self._finished) > self.keep_finished:
                self._channels.pop(self._finished.popitem(last=False)[0], None)

    def subscribe(self, stream_id: str) -> Subscription | None:
        """A feed starting with the recent captions; None if this replica has no such stream."""
        channel = self._channels.get(stream_id)
        if channel is None:
            return None
        sub = Subscription(stream_id, self.queue_limit)
        backlog = [*channel.recent, *([channel.partial] if channel.partial else [])]
        for event in backlog:
            sub.queue.put_nowait(event)
        if channel.terminal is not None:
            sub.queue.put_nowait(channel.terminal)
            sub.queue.put_nowait(Closed("stream_ended", "the stream has ended"))
        else:
            channel.viewers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """The viewer left."""
        channel = self._channels.get(sub.stream_id)
        if channel is not None:
            channel.viewers.discard(sub)

    def viewers(self, stream_id: str) -> int:
        channel = self._channels.get(stream_id)
        return len(channel.viewers) if channel else 0
