"""Session-affinity request router: a stream's calls always reach the replica holding it.

Ray's experimental ConsistentHashRouter moves live sessions when replicas are
added (RAY_NOTES.md: 3 of 6 moved on 1 -> 3). This router keeps a table
instead: a session's first request goes to the replica with the fewest
sessions in the table, and every later request to that owner, with backoff
while the owner is busy. The table lives in the caller's process, which is
enough because all calls of a stream come from the ingest replica holding
its WebSocket. When the owner leaves (died, drained, scaled down) its
sessions are forgotten; their next call lands on another replica, which
answers `unknown_stream`, and the ingest re-homes the stream.
"""

from __future__ import annotations

import collections
import logging

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

log = logging.getLogger("ray.serve")

# Sessions remembered per router; the least recently used beyond this are forgotten
# (a forgotten live session is re-homed, never misrouted silently).
MAX_SESSIONS = 100_000


class StickyRouter(RequestRouter):
    """Routes by `session_id` through an owner table; never moves a live session."""

    def initialize_state(self, max_sessions: int = MAX_SESSIONS, **kwargs: object) -> None:
        # session id -> owning replica; OrderedDict as an LRU.
        self._owners: collections.OrderedDict[str, ReplicaID] = collections.OrderedDict()
        self._max_sessions = max_sessions

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        live = {r.replica_id for r in replicas}
        gone = [sid for sid, owner in self._owners.items() if owner not in live]
        for sid in gone:
            del self._owners[sid]
        if gone:
            log.info("sticky router: %d sessions lost their replica and will re-home", len(gone))

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is None or not pending_request.metadata.session_id:
            return [candidate_replicas]
        session_id = pending_request.metadata.session_id
        owner = self._owners.get(session_id)
        if owner is not None:
            self._owners.move_to_end(session_id)
            # Strict: wait (with backoff) for a busy owner rather than go elsewhere.
            pending_request.routing_context.should_backoff = True
            return [[r] for r in candidate_replicas if r.replica_id == owner]
        # A new session: least sessions first; the rest are fallbacks in order.
        counts = collections.Counter(self._owners.values())
        ranked = sorted(candidate_replicas, key=lambda r: (counts[r.replica_id], r.replica_id.unique_id))
        return [[r] for r in ranked]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: object) -> None:
        session_id = pending_request.metadata.session_id
        if session_id and session_id not in self._owners:
            self._owners[session_id] = replica_id
            while len(self._owners) > self._max_sessions:
                self._owners.popitem(last=False)
