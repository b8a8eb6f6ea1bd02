"""Session-affinity request router: a stream's calls always reach the replica holding it.

Ray's experimental ConsistentHashRouter moves live sessions when replicas are
added (RAY_NOTES.md: 3 of 6 moved on 1 -> 3). This router keeps a table
instead: a session's first request goes to the replica with the fewest
active sessions, and every later request to that owner, with backoff while
the owner is busy. The table lives in the caller's process, which is enough
because all calls of a stream come from the ingest replica holding its
WebSocket. When the owner leaves (died, drained, scaled down) its sessions
are forgotten; their next call lands on another replica, which answers
`unknown_stream`, and the ingest re-homes the stream. An owner is only ever
a live replica: Serve reports a routed request after awaiting the replica's
answer, by which time the replica may have left (the session would otherwise
wait forever for a replica that is gone).
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

log = logging.getLogger("ray.serve")

# A session called within this window counts towards its replica's load.
ACTIVE_WINDOW_S = 10.0
# Sessions not called for this long are forgotten (a live stream never is).
FORGET_AFTER_S = 600.0
# Session keys naming a replica itself.
PIN = "@"


@dataclass
class _Owner:
    replica: ReplicaID
    last_call: float


class StickyRouter(RequestRouter):
    """Routes by `session_id` through an owner table; never moves a live session."""

    def initialize_state(self, forget_after_s: float = FORGET_AFTER_S, **kwargs: object) -> None:
        # session id -> owner, least recently called first.
        self._owners: collections.OrderedDict[str, _Owner] = collections.OrderedDict()
        self._forget_after_s = forget_after_s
        # New sessions being routed -> their first-choice replica, counted as load so
        # that sessions opened at the same moment spread out.
        self._placing: dict[str, ReplicaID] = {}

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        live = {r.replica_id for r in replicas}
        gone = [sid for sid, owner in self._owners.items() if owner.replica not in live]
        for sid in gone:
            del self._owners[sid]
        self._placing = {sid: r for sid, r in self._placing.items() if r in live}
        if gone:
            log.info("sticky router: %d sessions lost their replica and will re-home", len(gone))

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is None or not pending_request.metadata.session_id:
            return [candidate_replicas]
        session_id = pending_request.metadata.session_id
        if session_id.startswith(PIN):
            return self._pinned(session_id[len(PIN):], candidate_replicas, pending_request)
        owner = self._owners.get(session_id)
        if owner is not None and owner.replica not in self.curr_replicas:
            # Died without an update_replicas (on_replica_actor_died): place anew.
            log.info("sticky router: session %s lost its replica and will re-home", session_id)
            del self._owners[session_id]
            owner = None
        if owner is not None:
            owner.last_call = time.monotonic()
            self._owners.move_to_end(session_id)
            # Strict: wait (with backoff) for a busy owner rather than go elsewhere.
            pending_request.routing_context.should_backoff = True
            return [[r] for r in candidate_replicas if r.replica_id == owner.replica]
        # A new session: fewest active sessions first; the rest are fallbacks in order.
        self._placing.pop(session_id, None)
        load = self._active_load()
        ranked = sorted(candidate_replicas, key=lambda r: (load[r.replica_id], r.replica_id.unique_id))
        if ranked:
            self._placing[session_id] = ranked[0].replica_id
        return [[r] for r in ranked]

    def _pinned(self, target: str, candidates: list[RunningReplica],
                pending_request: PendingRequest) -> list[list[RunningReplica]]:
        chosen = [r for r in candidates if r.replica_id.unique_id == target]
        if chosen:
            pending_request.routing_context.should_backoff = True
            return [chosen]
        return [[r] for r in candidates]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: object) -> None:
        session_id = pending_request.metadata.session_id
        if session_id and not session_id.startswith(PIN) and session_id not in self._owners and replica_id in self.curr_replicas:
            self._owners[session_id] = _Owner(replica_id, time.monotonic())
            self._placing.pop(session_id, None)
        self._forget_idle()

    def _active_load(self) -> collections.Counter[ReplicaID]:
        since = time.monotonic() - ACTIVE_WINDOW_S
        load = collections.Counter(o.replica for o in self._owners.values() if o.last_call >= since)
        load.update(self._placing.values())
        return load

    def _forget_idle(self) -> None:
        horizon = time.monotonic() - self._forget_after_s
        while self._owners and next(iter(self._owners.values())).last_call < horizon:
            self._owners.popitem(last=False)
