"""Errors of the captions layer, each with the stable wire `code` it maps to.

The ingest sends them as `error {code, message}` frames (WebSocket) or JSON
bodies (HTTP, with `http_status`), so codes are part of the protocol.
"""

from __future__ import annotations


class CaptionsError(Exception):
    """Base class: a clear, client-presentable failure."""

    code = "internal"
    http_status = 500


class Unauthorized(CaptionsError):
    """Missing, malformed or unknown API key or viewer token."""

    code = "unauthorized"
    http_status = 401


class TokenExpired(CaptionsError):
    """A viewer token that was valid but has expired."""

    code = "token_expired"
    http_status = 401


class QuotaExceeded(CaptionsError):
    """A tenant limit (concurrent streams, audio minutes per period) is reached."""

    code = "quota_exceeded"
    http_status = 429


class UnknownStream(CaptionsError):
    """No such stream for this tenant (also when it belongs to another tenant, so ids do not leak)."""

    code = "unknown_stream"
    http_status = 404


class BadRequest(CaptionsError):
    """A malformed or oversized request."""

    code = "bad_request"
    http_status = 400


class ConfigError(CaptionsError):
    """The keys file or another configuration input is invalid."""

    code = "config"
