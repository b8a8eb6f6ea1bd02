"""ASGI middleware: WebSocket handlers read every frame their client sent, even after it hung up.

Behind HAProxy (deployments/run.py: CLUSTER_ENV) each ingest replica serves
its sockets itself, and Serve's direct-ingress server cancels a handler the
moment its client disconnects, before the handler has read the frames still
queued: a client that sends its last audio and `end`, then closes without
waiting for `final`, would lose them (Serve's proxy actor delivered them
first). Here each WebSocket handler runs as its own task, shielded from that
cancellation: it reads the queued frames, then the disconnect, and finishes
as it would on any dropped socket (the session stays for resume).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("ray.serve")


class OutliveDisconnect:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Handlers whose request was cancelled, kept referenced until they finish.
        self._running: set[asyncio.Task] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        task = asyncio.ensure_future(self.app(scope, receive, send))
        self._running.add(task)
        task.add_done_callback(self._finished)
        await asyncio.shield(task)

    def _finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a WebSocket handler failed after its request ended", exc_info=task.exception())
