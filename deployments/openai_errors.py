"""Errors of the OpenAI-compatible endpoints, in OpenAI's shape.

    {"error": {"message": str, "type": str, "param": str | null, "code": str | null}}

`code` is this service's stable error code (docs/protocol.md), the same one
the native protocol sends, plus a few that only the OpenAI surface has
(`model_not_found`, `unsupported_format`, `file_too_large`); `type` is
OpenAI's error class for the HTTP status, so the official SDKs raise the
matching exception (BadRequestError, AuthenticationError, RateLimitError...).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from captions.errors import CaptionsError
from deployments.relay import RelayError
from engine.errors import EngineError

# HTTP status by error code; anything else is a 400.
_STATUS = {
    "unauthorized": 401,
    "token_expired": 401,
    "model_not_found": 404,
    "file_too_large": 413,
    "unsupported_format": 415,
    "quota_exceeded": 429,
    "internal": 500,
    "overloaded": 503,
    "unavailable": 503,
}
# OpenAI's `type` by status (the tenant limits are quotas); anything else is an invalid request.
_TYPE = {429: "insufficient_quota", 500: "server_error", 503: "server_error"}


class OpenAIError(Exception):
    """A request this surface answers with an error body; `retry` False tells SDKs not to retry it."""

    def __init__(self, code: str, message: str, param: str | None = None, retry: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param
        self.status = _STATUS.get(code, 400)
        self.retry = retry

    @property
    def type(self) -> str:
        return _TYPE.get(self.status, "invalid_request_error")

    def body(self, event_id: str | None = None) -> dict[str, Any]:
        """The `error` object (Realtime error events add the client's `event_id`)."""
        error: dict[str, Any] = {"message": str(self), "type": self.type, "param": self.param, "code": self.code}
        if event_id is not None:
            error["event_id"] = event_id
        return error

    def response(self) -> JSONResponse:
        # The official SDKs retry 429 and 5xx unless told otherwise (x-should-retry is theirs).
        headers = {} if self.retry is None else {"x-should-retry": "true" if self.retry else "false"}
        return JSONResponse({"error": self.body()}, status_code=self.status, headers=headers)


def from_service_error(exc: RelayError | CaptionsError | EngineError, param: str | None = None,
                       retry: bool | None = None) -> OpenAIError:
    """The OpenAI-shaped form of an error the relay, the captions layer or the engine raised."""
    return OpenAIError(exc.code, str(exc), param, retry)
