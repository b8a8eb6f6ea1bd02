"""HTTP routes for viewers, transcripts and the browser page, mounted by the ingest.

    GET  /                                      the publisher page (captions/static/index.html)
    GET  /static/*                              page assets, viewer.html
    GET  /v1/streams/{id}/transcript.{fmt}      json | vtt | srt
    GET  /v1/streams/{id}/events                live captions as Server-Sent Events
    POST /v1/streams/{id}/viewer-tokens         {"ttl_s"?} -> {"token", "expires_in_s", "viewer_path"}

Reads accept the owner's API key (Bearer or ?key=) or a viewer token
(?token=) of that stream; creating viewer tokens needs the API key. Errors
are JSON {"error": {"code", "message"}}. Blocking work (scrypt, database)
runs in the thread pool so it never stalls the ingest's event loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from captions.errors import BadRequest, CaptionsError, TokenExpired
from captions.exports import to_json, to_srt, to_vtt
from captions.fanout import CaptionHub, Subscription
from captions.store import StreamRecord, StreamStatus, TranscriptStore, check_id
from captions.tenants import Authenticator

STATIC_DIR = Path(__file__).parent / "static"
# Bodies of the small JSON requests here; anything bigger is refused unread.
MAX_BODY_BYTES = 4096
# A comment line this often keeps proxies from closing an idle event stream.
KEEPALIVE_S = 15.0
# How often a viewer on a replica that does not publish the stream polls the database.
POLL_S = 1.0
DEFAULT_VIEWER_TTL_S = 3600.0

EXPORTS = {
    "vtt": ("text/vtt; charset=utf-8", to_vtt),
    "srt": ("application/x-subrip; charset=utf-8", to_srt),
}

Handler = Callable[[Request], Awaitable[Response]]


def error_response(exc: CaptionsError) -> JSONResponse:
    return JSONResponse({"error": {"code": exc.code, "message": str(exc)}}, status_code=exc.http_status)


# Starlette's own answers (no route, wrong method) in the same JSON shape as every other error.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def http_exception_response(request: Request, exc: Exception) -> JSONResponse:
    """The app's handler for Starlette's HTTPException: e.g. a stream id holding '/' matches no route."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "bad_request")
    return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code,
                        headers=exc.headers)


def _errors_as_json(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except CaptionsError as exc:
            return error_response(exc)

    return wrapped


def _sse(event: dict) -> str:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n"


class CaptionRoutes:
    """The endpoints, over the store, the authenticator and this replica's hub."""

    def __init__(self, store: TranscriptStore, auth: Authenticator, hub: CaptionHub) -> None:
        self.store = store
        self.auth = auth
        self.hub = hub

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", lambda _: FileResponse(STATIC_DIR / "index.html")),
            Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
            Route("/v1/streams/{stream_id}/transcript.{fmt}", _errors_as_json(self.transcript)),
            Route("/v1/streams/{stream_id}/events", _errors_as_json(self.events)),
            Route("/v1/streams/{stream_id}/viewer-tokens", _errors_as_json(self.viewer_token), methods=["POST"]),
        ]

    # ---------------------------------------------------------------- access
    def _read_access(self, request: Request) -> tuple[StreamRecord, float | None]:
        """The stream and, for a viewer token, when it expires (blocking: call in the thread pool)."""
        stream_id = check_id(request.path_params["stream_id"])
        token = request.query_params.get("token")
        if token is not None:
            return self.store.check_viewer_token(stream_id, token)
        tenant = self.auth.authenticate(request.headers, request.query_params)
        return self.store.stream(tenant.id, stream_id), None

    # ------------------------------------------------------------- endpoints
    async def transcript(self, request: Request) -> Response:
        fmt = request.path_params["fmt"]
        if fmt != "json" and fmt not in EXPORTS:
            raise BadRequest(f"unknown transcript format {fmt!r}: use json, vtt or srt")
        record, _ = await run_in_threadpool(self._read_access, request)
        words = await run_in_threadpool(self.store.words, record.tenant_id, record.stream_id)
        if fmt == "json":
            return JSONResponse(to_json(words, record.as_dict()))
        media_type, render = EXPORTS[fmt]
        return Response(
            render(words),
            media_type=media_type,
            headers={"Content-Disposition": f'attachment; filename="{record.stream_id}.{fmt}"'},
        )

    async def viewer_token(self, request: Request) -> Response:
        body = await _small_json(request)
        ttl_s = body.get("ttl_s", DEFAULT_VIEWER_TTL_S)
        if not isinstance(ttl_s, (int, float)) or isinstance(ttl_s, bool):
            raise BadRequest("ttl_s must be a number of seconds")
        stream_id = check_id(request.path_params["stream_id"])

        def create() -> str:
            tenant = self.auth.authenticate(request.headers, request.query_params)
            return self.store.create_viewer_token(tenant.id, stream_id, float(ttl_s))

        token = await run_in_threadpool(create)
        return JSONResponse(
            {
                "token": token,
                "expires_in_s": ttl_s,
                "viewer_path": f"/static/viewer.html?stream={stream_id}&token={token}",
            },
            status_code=201,
        )

    async def events(self, request: Request) -> Response:
        record, expires_at = await run_in_threadpool(self._read_access, request)
        sub = self.hub.subscribe(record.stream_id)
        if sub is None:
            feed = self._poll_store(record, expires_at)
        else:
            feed = self._follow_hub(sub, expires_at)
        return StreamingResponse(
            feed, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    # ----------------------------------------------------------------- feeds
    async def _follow_hub(self, sub: Subscription, expires_at: float | None) -> AsyncIterator[str]:
        """Live events published on this replica."""
        try:
            while True:
                timeout = KEEPALIVE_S if expires_at is None else min(KEEPALIVE_S, expires_at - time.time())
                event = await sub.next(timeout_s=max(timeout, 0.0))
                if event is not None:
                    yield _sse(event)
                elif sub.closed is not None:
                    if sub.closed.code != "stream_ended":
                        yield _sse({"type": "error", "code": sub.closed.code, "message": sub.closed.message})
                    return
                elif expires_at is not None and time.time() >= expires_at:
                    yield _sse({"type": "error", "code": TokenExpired.code, "message": "viewer token has expired"})
                    return
                else:
                    yield ": keepalive\n\n"
        finally:
            self.hub.unsubscribe(sub)

    async def _poll_store(self, record: StreamRecord, expires_at: float | None) -> AsyncIterator[str]:
        """Committed words from the database: a finished stream, or one published by another replica."""
        last_seq, texts = -1, []
        while True:
            # Status before words: a stream is closed after its last words are stored,
            # so a closed status read first means the words read next are complete.
            record = await run_in_threadpool(self.store.stream, record.tenant_id, record.stream_id)
            words = await run_in_threadpool(self.store.words, record.tenant_id, record.stream_id, last_seq)
            if words:
                last_seq = words[-1].seq
                texts += [w.text for w in words]
                yield _sse({"type": "words", "words": to_json(words, {})["words"]})
            if record.status is not StreamStatus.OPEN:
                yield _sse({"type": "final", "session_id": record.stream_id, "text": " ".join(texts), "words": [],
                            "status": record.status.value})
                return
            if expires_at is not None and time.time() >= expires_at:
                yield _sse({"type": "error", "code": TokenExpired.code, "message": "viewer token has expired"})
                return
            await asyncio.sleep(POLL_S)


async def _small_json(request: Request) -> dict:
    """The request's JSON object body (empty allowed), refusing anything over MAX_BODY_BYTES."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise BadRequest(f"request body over {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest(f"request body over {MAX_BODY_BYTES} bytes")
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    except RecursionError:  # 4 KiB of '[' nest deeper than the parser's recursion limit
        raise BadRequest("request body nests too deeply") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object")
    return doc


def caption_routes(store: TranscriptStore, auth: Authenticator, hub: CaptionHub) -> list[BaseRoute]:
    """Routes to add to the ingest app: `Starlette(routes=[*ingest_routes, *caption_routes(...)])`."""
    return CaptionRoutes(store, auth, hub).routes()
