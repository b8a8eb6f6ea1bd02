"""The ingest's transport to the model replicas: one link per replica, not a call per frame.

    Relay (one per stream) --audio--> Link (one per model replica) --push, every tick--> ASRModel
    Relay <--events-- Link <--one streaming `events` call-- ASRModel

A Link carries every stream this ingest replica holds on one model replica:
a sender task gathers their unsent audio, ends and aborts into one `push`
call at most every `tick_s` (one call in flight, so order is kept), and a
receiver task reads one long-lived streaming `events` response whose
batches hold the events of all of them. Calls are routed with the key
`@<replica>`, which the StickyRouter pins to that replica: a stream stays
where it was opened (session affinity) for as long as the replica lives.

New streams go to the replica with the fewest open streams, as the replicas
last reported them (one `stats` broadcast per `placement_refresh_s`) plus
those placed here since. When a replica is lost (its calls fail, or it left
and a call landed elsewhere), the link ends and every stream on it re-homes
(Relay.rehome).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments.asr import pin
from deployments.config import IngestConfig
from deployments.session import Outgoing
from engine.features import SAMPLE_RATE

if TYPE_CHECKING:
    from deployments.relay import Relay

log = logging.getLogger("ray.serve")

# Exceptions of a call whose replica is gone (died, or left the deployment).
LOST = (RayActorError, ActorUnavailableError, ReplicaUnavailableError)
# The pause before audio a replica refused as `overloaded` is offered again.
BACKPRESSURE_WAIT_S = 0.1


class NoReplica(Exception):
    """No model replica could take the stream; `code` is the client-visible reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ModelLinks:
    """This ingest replica's links to the model deployment, and where new streams go."""

    def __init__(self, handle: DeploymentHandle, cfg: IngestConfig) -> None:
        self.handle = handle
        self.cfg = cfg
        # Names this ingest replica's links on every model replica.
        self.id = uuid.uuid4().hex[:12]
        self.links: dict[str, Link] = {}
        self._loads: dict[str, float] = {}
        self._loads_at = float("-inf")
        self._placed: collections.Counter[str] = collections.Counter()
        self._refresh = asyncio.Lock()

    async def place(self, relay: Relay, avoid: str | None = None) -> Link:
        """Open the relay's current stream on the least-loaded replica; NoReplica if none takes it."""
        session = relay.session
        loads = await self._replica_loads()
        ranked = sorted(loads, key=lambda r: (r == avoid, loads[r] + self._placed[r], r))
        refusal = NoReplica("unavailable", "no model replica is available")
        for replica in ranked:
            # Counted before the call, so streams placed at the same moment spread out.
            self._placed[replica] += 1
            try:
                reply = await self.handle.options(session_id=pin(replica)).open.remote(
                    self.id, replica, session.stream_key, session.language_hint(), session.context()
                )
            except LOST:
                self._forget(replica)
                continue
            error = reply.get("error")
            if error is not None:
                self._placed[replica] -= 1
            if error is None:
                link = self._link(replica)
                link.add(relay)
                log.info("session %s: stream %s opened on replica %s", session.session_id, session.stream_key,
                         replica)
                return link
            if error["code"] == "wrong_replica":
                self._forget(replica)
            elif error["code"] == "overloaded":
                refusal = NoReplica("overloaded", error["message"])
            else:
                raise NoReplica(error["code"], error["message"])
        raise refusal

    def link_lost(self, link: Link) -> None:
        if self.links.get(link.replica) is link:
            del self.links[link.replica]
        self._forget(link.replica)

    async def _replica_loads(self) -> dict[str, float]:
        """Open streams per live replica, refreshed at most every placement_refresh_s."""
        async with self._refresh:
            if time.monotonic() - self._loads_at > self.cfg.placement_refresh_s or not self._loads:
                results = await self.handle.broadcast("stats").results_async(timeout_s=10.0, return_exceptions=True)
                self._loads = {r["replica"]: float(r["open_streams"]) for r in results if isinstance(r, dict)}
                self._loads_at = time.monotonic()
                self._placed.clear()
            return dict(self._loads)

    def _forget(self, replica: str) -> None:
        self._loads.pop(replica, None)

    def _link(self, replica: str) -> Link:
        link = self.links.get(replica)
        if link is None:
            link = self.links[replica] = Link(self, replica)
        return link


class Link:
    """Every stream of this ingest replica on one model replica: one push per tick, one event stream."""

    def __init__(self, owner: ModelLinks, replica: str) -> None:
        self.owner = owner
        self.replica = replica
        self.cfg = owner.cfg
        self.streams: dict[str, Relay] = {}
        self._ended: set[str] = set()
        self._aborts: list[str] = []
        self._wake = asyncio.Event()
        self._last_push = float("-inf")
        self.closed = False
        self._tasks = [_spawn(self._send_loop(), f"link {replica} sender", self),
                       _spawn(self._receive_loop(), f"link {replica} receiver", self)]

    def add(self, relay: Relay) -> None:
        self.streams[relay.session.stream_key] = relay
        self._wake.set()

    def remove(self, relay: Relay, abort: bool = False) -> None:
        """The relay leaves the link (it re-homed or finished); `abort` drops its stream on the replica."""
        key = relay.session.stream_key
        self.streams.pop(key, None)
        self._ended.discard(key)
        if abort:
            self._aborts.append(key)
            self._wake.set()

    def nudge(self) -> None:
        """A stream has new audio (or ended)."""
        self._wake.set()

    # ------------------------------------------------------------ sending
    async def _send_loop(self) -> None:
        max_send = int(self.cfg.max_send_s * SAMPLE_RATE)
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            # At most one push per tick: audio of every stream that arrived meanwhile goes together.
            await asyncio.sleep(max(0.0, self._last_push + self.cfg.tick_s - time.monotonic()))
            outgoing, ends = self._gather(max_send)
            aborts, self._aborts = self._aborts, []
            if not (outgoing or ends or aborts):
                continue
            self._last_push = time.monotonic()
            audio = {key: out.audio for key, out in outgoing.items() if len(out.audio)}
            pauses = {key: out.pause for key, out in outgoing.items() if out.pause is not None}
            try:
                reply = await self.owner.handle.options(session_id=pin(self.replica)).push.remote(
                    self.owner.id, self.replica, audio, ends, aborts, pauses
                )
            except LOST as exc:
                log.warning("link %s: push failed (%s): its streams re-home", self.replica, type(exc).__name__)
                self._lose()
                return
            if "error" in reply:
                log.warning("link %s: %s: its streams re-home", self.replica, reply["error"]["message"])
                self._lose()
                return
            self._apply(outgoing, ends, reply)

    def _gather(self, max_send: int) -> tuple[dict[str, Outgoing], list[str]]:
        outgoing, ends = {}, []
        for key, relay in self.streams.items():
            session = relay.session
            out = session.unsent(max_send)
            if out:
                outgoing[key] = out
            elif session.ended and session.gate_flushed and key not in self._ended:
                ends.append(key)
        return outgoing, ends

    def _apply(self, outgoing: dict[str, Outgoing], ends: list[str], reply: dict[str, Any]) -> None:
        rejected = reply["rejected"]
        for key, out in outgoing.items():
            relay = self.streams.get(key)
            if relay is None:
                continue  # re-homed or finished meanwhile: the new incarnation replays it
            error = rejected.get(key)
            if error is None:
                relay.session.mark_sent(out)
            elif error["code"] == "overloaded":
                asyncio.get_running_loop().call_later(BACKPRESSURE_WAIT_S, self._wake.set)
            elif error["code"] == "unknown_stream":
                relay.lost(self)
            # stream_closed, bad_audio: the stream's error event comes through the event stream.
        for key in ends:
            relay = self.streams.get(key)
            if relay is not None and rejected.get(key, {}).get("code") == "unknown_stream":
                relay.lost(self)
            elif relay is not None:
                self._ended.add(key)  # accepted, or the stream already closed (its events say why)
        # More than max_send_s was waiting, or a stream sent its last audio and its end is due.
        if any(key not in rejected and (r.session.unsent(1) or (r.session.ended and key not in self._ended))
               for key, r in self.streams.items()):
            self._wake.set()

    # ------------------------------------------------------------ receiving
    async def _receive_loop(self) -> None:
        responses = self.owner.handle.options(session_id=pin(self.replica), stream=True).events.remote(
            self.owner.id, self.replica
        )
        try:
            async for events in responses:
                for event in events:
                    if event["type"] == "wrong_replica":
                        log.warning("link %s: the replica left: its streams re-home", self.replica)
                        return
                    relay = self.streams.get(event["stream"])
                    if relay is not None:
                        relay.on_event(event)
        except LOST as exc:
            log.warning("link %s: event stream lost (%s): its streams re-home", self.replica, type(exc).__name__)
        finally:
            self._lose()

    def _lose(self) -> None:
        """The replica is gone: every stream on it re-homes."""
        if self.closed:
            return
        self.closed = True
        self.owner.link_lost(self)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        for relay in list(self.streams.values()):
            relay.lost(self)
        self.streams.clear()


def _spawn(coro: Awaitable[None], name: str, link: Link) -> asyncio.Task:
    """A link task, logged if it fails, in an empty context.

    Inside a request, Serve copies the request's internal id into every
    downstream call, and in 2.60 two concurrent calls with one id collide in
    the router's pending-request index (one is never routed). Outside any
    request context each call gets its own id.
    """

    async def guarded() -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("%s crashed; its streams re-home", name)
            link._lose()
            raise

    loop = asyncio.get_running_loop()
    return contextvars.Context().run(loop.create_task, guarded())
