"""The WebSocket wire format (docs/protocol.md): msgpack maps with a `type`.

Parsing is strict: a frame that is not a msgpack map, has no string `type`,
or has fields of the wrong kind raises ProtocolError with a stable code, so
the ingest can answer `error {code, message}` without guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from engine.audio import ENCODINGS

# Sample rates a client may send; the ingest resamples to 16 kHz.
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 96_000


class ProtocolError(Exception):
    """A client frame the ingest cannot accept; `fatal` ones close the stream."""

    def __init__(self, code: str, message: str, fatal: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.fatal = fatal


@dataclass(frozen=True)
class Resume:
    session_id: str
    token: str
    # Words the client already has (they are not sent again); None: it has them all,
    # as far as the ingest holding the session knows.
    words: int | None = None


@dataclass(frozen=True)
class Start:
    sample_rate: int
    encoding: str
    language: str | None
    resume: Resume | None


@dataclass(frozen=True)
class Audio:
    data: bytes


@dataclass(frozen=True)
class End:
    pass


ClientFrame = Start | Audio | End


def parse_client_frame(raw: bytes | str | None, max_bytes: int) -> ClientFrame:
    """One client frame, or ProtocolError (bad_frame, frame_too_large, unknown_type, ...)."""
    if raw is None or isinstance(raw, str):
        raise ProtocolError("bad_frame", "frames must be binary msgpack, got a text frame")
    if len(raw) > max_bytes:
        raise ProtocolError("frame_too_large", f"frame of {len(raw)} bytes exceeds the {max_bytes} byte limit")
    try:
        msg = msgpack.unpackb(raw, raw=False)
    except (msgpack.UnpackException, ValueError) as exc:
        raise ProtocolError("bad_frame", f"frame is not valid msgpack: {exc}") from exc
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_frame", "a frame must be a msgpack map with a string 'type'")
    kind = msg["type"]
    if kind == "audio":
        data = msg.get("data")
        if not isinstance(data, bytes):
            raise ProtocolError("bad_frame", "audio.data must be msgpack bin (bytes)")
        return Audio(data)
    if kind == "end":
        return End()
    if kind == "start":
        return _parse_start(msg)
    # Unknown types are answered but not fatal, so newer clients can add frame types.
    raise ProtocolError("unknown_type", f"unknown frame type {kind!r}", fatal=False)


def _parse_start(msg: dict[str, Any]) -> Start:
    rate = msg.get("sample_rate")
    if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ProtocolError(
            "bad_frame", f"start.sample_rate must be an integer in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}]"
        )
    encoding = msg.get("encoding")
    # The type first: `in` on a dict raises TypeError for a list or map.
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise ProtocolError(
            "unsupported_encoding", f"encoding {encoding!r} is not one of {sorted(ENCODINGS)}"
        )
    language = msg.get("language")
    if language is not None and not isinstance(language, str):
        raise ProtocolError("bad_frame", "start.language must be a string")
    resume = msg.get("resume")
    if resume is not None:
        words = resume.get("words") if isinstance(resume, dict) else None
        if not (
            isinstance(resume, dict)
            and isinstance(resume.get("session_id"), str)
            and isinstance(resume.get("token"), str)
            and (words is None or (isinstance(words, int) and not isinstance(words, bool) and words >= 0))
        ):
            raise ProtocolError("bad_frame", "start.resume must be {session_id: str, token: str, words?: int >= 0}")
        resume = Resume(resume["session_id"], resume["token"], words)
    return Start(rate, encoding, None if language in (None, "auto") else language, resume)


def pack(kind: str, **fields: Any) -> bytes:
    """A server frame."""
    return msgpack.packb({"type": kind, **fields}, use_bin_type=True)


def error_frame(code: str, message: str) -> bytes:
    return pack("error", code=code, message=message)
