"""Hostile input through the real service, beside one clean stream of speech.

A seeded generator builds a few hundred hostile inputs: WebSocket frames of every malformed kind,
floods, oversized frames, slow handshakes, bad keys; stream ids with path, SQL and unicode characters
on every HTTP route; garbage uploads and multipart bodies. They are sent eight at a time while tenant
globex streams speech. Each category states the answers it may get: an `error` frame whose code
docs/protocol.md gives for that input, with the close code that goes with it, or a JSON error with a
4xx status. Never a 5xx, a dropped socket without an answer, or a hang (every exchange is bounded).
Afterwards the clean stream's words are those of the same audio streamed alone, no replica was
restarted and the ingest's memory did not grow.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import msgpack
import numpy as np
import pytest
import soundfile

from deployments.openai_params import served_model_id
from deployments.run import APP

from .conftest import SERVICE_PORT, Tenants, speech
from .service_client import WS_URL, stream_samples

SEED = 20_261_202
CONCURRENCY = 8
MAX_FRAME_BYTES = 262_144  # ingest.max_frame_bytes
IDLE_S = 5.0  # the test service's handshake_timeout_s and idle_timeout_s
# Every exchange ends within this (an idle one after IDLE_S); longer is a hang.
EXCHANGE_LIMIT_S = 30.0
MAX_RSS_GROWTH_BYTES = 200 * 2**20
# Close codes by final error code (docs/protocol.md); every other code closes with 1008.
CLOSE_FOR = {"frame_too_large": 1009, "overloaded": 1013, "unavailable": 1013, "internal": 1011}
FINAL = "final"  # an expected outcome: the stream goes on to its final frame (close 1000)


# ------------------------------------------------------------------ frames
def pack(fields: object) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def start(**overrides: object) -> bytes:
    return pack({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "language": "en", **overrides})


def audio(data: object) -> bytes:
    return pack({"type": "audio", "data": data})


END = pack({"type": "end"})


def s16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def padded(fields: dict, size: int) -> bytes:
    """`fields` plus a `pad` string making the frame exactly `size` (> 64 KiB) bytes."""
    base = len(pack({**fields, "pad": ""}))
    # A string over 64 KiB has a 5-byte header, the empty one a 1-byte fixstr.
    frame = pack({**fields, "pad": "a" * (size - base - 4)})
    assert len(frame) == size, (len(frame), size)
    return frame


@dataclass(frozen=True)
class Fragmented:
    """One message sent as fragments, `pause_s` apart (a handshake that trickles in)."""

    message: bytes
    pieces: int
    pause_s: float


@dataclass(frozen=True)
class WsCase:
    category: str
    steps: tuple[bytes | str | float | Fragmented, ...]  # a float: pause that long
    outcomes: frozenset[str]  # the final error code, or FINAL
    headers: tuple[tuple[str, str], ...] = ()
    query: str = ""
    tenant: str | None = "acme"  # whose key goes in a Bearer header


@dataclass(frozen=True)
class HttpCase:
    category: str
    method: str
    target: bytes
    outcomes: frozenset[tuple[int, str]]  # (status, error code)
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    content_length: int | None = None  # declared instead of len(body)
    tenant: str | None = "acme"  # whose key goes in a Bearer header
    plain_400_ok: bool = False  # a request line the HTTP server itself refuses (no JSON: it never reaches the app)
    closed_ok: bool = False  # the HTTP server may close the connection without an answer


# ------------------------------------------------------------------ the generator
WRONG_VALUES: tuple[object, ...] = (
    None, True, False, 0, -1, 2**63, -(2**63), 1.5, float("nan"), float("inf"), "", "x" * 1000, b"\x00\x01\x02",
    [], [1, "a"], {}, {"a": {"b": 1}}, msgpack.ExtType(5, b"x"),
)


def ws_cases(rng: random.Random, clean: np.ndarray) -> list[WsCase]:
    pcm = s16(clean[:3200])  # 0.2 s of speech
    cases: list[WsCase] = []

    def add(category: str, steps: list, *outcomes: str, **kw: object) -> None:
        cases.append(WsCase(category, tuple(steps), frozenset(outcomes), **kw))

    # Random bytes and text, as the first frame and after a valid start.
    for i in range(40):
        blob = rng.randbytes(rng.randint(1, 4096))
        add("random bytes", [blob] if i % 2 else [start(), blob], "bad_frame")
    for _ in range(6):
        add("random text frame", [start(), "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(1, 500)))],
            "bad_frame")
    # Truncated msgpack: a valid frame cut short anywhere (b"" included).
    whole = [start(), audio(pcm), END, start(resume={"session_id": "s" * 20, "token": "t" * 30}),
             pack({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "extra": [{"a": [1, 2]}] * 9})]
    for i in range(30):
        frame = rng.choice(whole)
        cut = frame[: rng.randrange(len(frame))]
        add("truncated msgpack", [cut] if i % 2 else [start(), cut], "bad_frame")
    # Deep nesting: past msgpack's stack limit it is not msgpack; within it, not a frame.
    for depth in (100, 1000, 5000, 80_000):
        add("deeply nested msgpack", [b"\x91" * depth + b"\xc0"], "bad_frame")
        add("deeply nested msgpack", [start(), b"\x81\xa1k" * depth + b"\xc0"], "bad_frame")  # < 256 KiB
    add("deeply nested msgpack", [pack({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le",
                                        "extra": _nested(100)}), END], FINAL)
    # A start frame whose last field is a list nested 50000 deep.
    deep_start = pack({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "extra": 0})
    add("deeply nested msgpack", [deep_start[:-1] + b"\x91" * 50_000 + b"\xc0"], "bad_frame")
    # Huge maps and strings, one byte under and over max_frame_bytes.
    for size, outcome in ((MAX_FRAME_BYTES, None), (MAX_FRAME_BYTES + 1, "frame_too_large")):
        unknown = padded({"type": "subtitles"}, size)
        big_start = padded({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "language": "en"}, size)
        add("huge strings", [start(), unknown, END], *(["unknown_type", FINAL] if outcome is None else [outcome]))
        add("huge strings", [big_start, END], outcome or FINAL)
    keys = {f"k{i:06d}": i % 7 for i in range(24_000)}  # ~ 240 KiB: under the limit
    add("huge maps", [pack({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", **keys}), END], FINAL)
    add("huge maps", [pack({"type": "end", **keys, **{f"m{i:06d}": i for i in range(24_000)}})], "frame_too_large")
    add("huge maps", [b"\xdf\xff\xff\xff\xff" + b"\xa4type\xa3end"], "bad_frame")  # claims 2**32-1 entries
    add("huge maps", [start(), b"\x81\xa4type\xdb\xff\xff\xff\xffend"], "bad_frame")  # a 4 GiB string, truncated
    # Wrong types for every field.
    for value in WRONG_VALUES:
        add("wrong type: start.sample_rate", [start(sample_rate=value)], "bad_frame")
        add("wrong type: start.encoding", [start(encoding=value)], "unsupported_encoding")
        add("wrong type: type", [pack({"type": value, "sample_rate": 16000, "encoding": "pcm_s16le"})], "bad_frame")
        if isinstance(value, str):  # a type, only not one this server knows: skipped once the stream runs
            add("wrong type: type", [start(), pack({"type": value, "data": pcm}), END], "unknown_type", FINAL)
        else:
            add("wrong type: type", [start(), pack({"type": value, "data": pcm})], "bad_frame")
        data_outcome = "bad_audio" if isinstance(value, bytes) else "bad_frame"
        add("wrong type: audio.data", [start(), audio(value)], data_outcome)
        if value is not None:  # no language and no resume are valid
            add("wrong type: start.language", [start(language=value), END],
                *(("bad_request", FINAL) if isinstance(value, str) else ("bad_frame",)))
            add("wrong type: start.resume", [start(resume=value)], "bad_frame")
        resumed = "resume_failed" if isinstance(value, str) else "bad_frame"  # a string: only no such session
        add("wrong type: start.resume.session_id", [start(resume={"session_id": value, "token": "t" * 20})], resumed)
        add("wrong type: start.resume.token", [start(resume={"session_id": "s" * 20, "token": value})], resumed)
        add("wrong type: end (extra field)", [start(), pack({"type": "end", "data": value})], FINAL)
    for session_id, token in (("s" * 20, "t"), ("'; DROP TABLE streams; --", "x"), ("é" * 500, "\x00" * 9),
                              ("../" * 300, "t" * 10_000)):
        add("resume of no session", [start(resume={"session_id": session_id, "token": token})], "resume_failed")
    # NaN/inf float32 audio (pcm_f32le), at 16 kHz and resampled.
    for rate in (16000, 44100):
        n = rate // 4
        for bad in (np.nan, np.inf, -np.inf, 1e30, 2.0):
            x = np.zeros(n, np.float32)
            # One sample at 16 kHz; a stretch when resampled, whose filter would average one out of range.
            at = rng.randrange(n // 2)
            x[at : at + (1 if rate == 16000 else n // 4)] = bad
            add("NaN/inf float32 audio", [start(encoding="pcm_f32le", sample_rate=rate), audio(x.tobytes()),
                                          audio(x.tobytes())], "bad_audio")
        add("NaN/inf float32 audio", [start(encoding="pcm_f32le", sample_rate=rate), audio(b"\x00" * 4001)],
            "bad_audio")
    add("NaN/inf float32 audio", [start(), audio(b"\x00" * 3)], "bad_audio")  # odd s16 byte count
    # Sample rates out of range (and the range's ends, which work).
    for rate in (0, -1, 10**9, 7999, 96_001, 2**31, 2**64 - 1):
        add("sample rate", [start(sample_rate=rate)], "bad_frame")
    for rate in (8000, 96_000):
        add("sample rate", [start(sample_rate=rate), audio(b"\x00" * 3200), END], FINAL)
    # Frames before start, a second start, audio after end.
    add("before start", [audio(pcm)], "bad_frame")
    add("before start", [audio(pcm), start()], "bad_frame")
    add("before start", [END], "bad_frame")
    add("before start", [END, start()], "bad_frame")
    add("before start", [pack({"type": "subtitles"}), start()], "bad_frame")
    add("second start", [start(), start()], "bad_frame")
    add("second start", [start(), audio(pcm), start(sample_rate=8000)], "bad_frame")
    add("second start", [start(), start(resume={"session_id": "s" * 20, "token": "t" * 20})], "bad_frame")
    add("audio after end", [start(), audio(pcm), END, audio(pcm)], "bad_frame")
    add("audio after end", [start(), audio(pcm), END, audio(b"")], "bad_frame")
    add("audio after end", [start(), audio(pcm), END, END], FINAL)  # a second end asks nothing new
    # Faster than real time: one frame over max_pending_s, and 40 s of speech as fast as it goes.
    flood = s16(np.tile(clean, 5))
    add("flood", [start(), audio(s16(np.tile(clean, 2))[: 6 * 32000])], "overloaded")
    add("flood", [start(), *(audio(flood[i : i + 3200]) for i in range(0, len(flood), 3200))], "overloaded")
    # 1 MB frames.
    mb = rng.randbytes(2**20)
    add("1 MB frame", [start(), audio(mb)], "frame_too_large")
    add("1 MB frame", [audio(mb)], "frame_too_large")
    add("1 MB frame", [start(), mb], "frame_too_large")
    add("1 MB frame", [start(), "t" * 2**20], "bad_frame")  # a text frame is refused before its size counts
    # Slow handshakes and silent streams.
    add("slow handshake", [], "idle_timeout")
    add("slow handshake", [IDLE_S + 1.5, start()], "idle_timeout")
    add("slow handshake", [Fragmented(start(), 8, 1.0)], "idle_timeout")
    add("slow handshake", [start()], "idle_timeout")
    add("slow handshake", [start(), audio(pcm), 1.0, *([pack({"type": "ping"}), 1.0] * 6)],
        "idle_timeout", "unknown_type")
    # API keys: non-UTF-8, very long, malformed, unknown.
    # Long, but under the 8 KiB line the HTTP server's WebSocket handshake reads
    # (over it: test_websocket_upgrade_with_an_over_8_kib_header_line_is_answered).
    for header in ("Bearer \xff\xfe\xfd\x80", "Bearer ck_" + "a" * 8000, "Bearer ck_nokeyid_secret", "Basic YTpi",
                   "Bearer", "Bearer ck_\xe9\xe9_" + "\xff" * 40, "ck_a_b"):
        add("API key", [start(), END], "unauthorized", headers=(("Authorization", header),), tenant=None)
    for query in ("?key=%FF%FE%FD", "?key=ck_" + "x" * 8000, "?key=%27%20OR%201%3D1--", "?key=", ""):
        add("API key", [start(), END], "unauthorized", query=query, tenant=None)
    # Map keys that are not UTF-8, very long, or bin.
    add("map keys", [b"\x81\xa4\xff\xfe\xfd\xfc\xa3end"], "bad_frame")
    add("map keys", [start(), b"\x82\xa4type\xa3end\xa3\xc3\x28\xa1\x01"], "bad_frame")
    add("map keys", [pack({b"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le"})], "bad_frame")
    add("map keys", [pack({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "k" * 200_000: 1}), END],
        FINAL)
    add("map keys", [pack({1: "start"})], "bad_frame")
    return cases


def _nested(depth: int) -> object:
    value: object = None
    for _ in range(depth):
        value = [value]
    return value


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def with_rate(wav: bytes, rate: int) -> bytes:
    """A PCM wav whose header claims `rate` (fmt chunk at byte 12: sample rate at 24, byte rate at 28)."""
    assert wav[12:16] == b"fmt "
    return wav[:24] + struct.pack("<II", rate, rate * 2) + wav[32:]


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "fuzzboundary") -> tuple[bytes, bytes]:
    """A multipart/form-data body of (name, filename or None, content), and its content type."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode("utf-8", "surrogateescape")
        out += b"Content-Type: application/octet-stream\r\n\r\n" if filename is not None else b"\r\n"
        out += content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}".encode()


# As written on the wire, percent-encoded where a client would.
HOSTILE_IDS = (
    "..", "../", "../../etc/passwd", "%2e%2e", "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd", "..%2F..%2F", "%252e%252e",
    quote("'; DROP TABLE streams; --", safe=""), quote("1' OR '1'='1", safe=""), quote('" OR 1=1 --', safe=""),
    "stream%00id", quote("café", safe=""), quote("²³", safe=""), quote("\u202eevil", safe=""),
    quote("😀", safe=""),
    "%FF%FE", "a" * 10_240, quote("é", safe="") * 1700, "", "%20", "a;b", quote("$(id)", safe=""),
    quote("<script>alert(1)</script>", safe=""), "x" * 65, "%0d%0aSet-Cookie:%20x=1",
)
# Well-formed ids that no stream has.
UNKNOWN_IDS = ("x" * 64, "nope-unknown_id", "0")
ID_ROUTES = (("GET", "/transcript.json"), ("GET", "/transcript.vtt"), ("GET", "/transcript.srt"), ("GET", "/events"),
             ("POST", "/viewer-tokens"))
BAD_ID = frozenset({(400, "bad_request"), (404, "not_found")})
BAD_KEYS = (b"Bearer \xff\xfe\xfd\x80", b"Bearer ck_" + b"a" * 10_000, b"Bearer ck_nokeyid_secret", b"Basic YTpi",
            b"Bearer", b"ck_a_b", b"Bearer ck_\xc3\x28_\xff")


def http_cases(rng: random.Random, real_id: str, model_id: str) -> list[HttpCase]:
    """`real_id`: a finished stream of tenant globex; `model_id`: the served model."""
    cases: list[HttpCase] = []

    def add(category: str, method: str, target: str | bytes, *outcomes: tuple[int, str], **kw: object) -> None:
        target = target.encode() if isinstance(target, str) else target
        cases.append(HttpCase(category, method, target, frozenset(outcomes), **kw))

    token_body = b'{"ttl_s": 60}'
    random_ids = ["".join(chr(rng.choice([rng.randint(33, 126), rng.randint(0xA0, 0x2FFF)])) for _ in
                      range(rng.randint(1, 120))) for _ in range(12)]
    for stream_id, outcomes, category in (
        *((i, BAD_ID, "hostile stream id") for i in HOSTILE_IDS),
        *((quote(i, safe=""), BAD_ID | {(404, "unknown_stream")}, "random stream id") for i in random_ids),
        *((i, frozenset({(404, "unknown_stream")}), "unknown stream id") for i in UNKNOWN_IDS),
    ):
        for method, tail in ID_ROUTES:
            add(category, method, f"/v1/streams/{stream_id}{tail}", *outcomes,
                body=token_body if method == "POST" else b"")
    # Raw bytes a client should have encoded: the HTTP server may refuse the request line itself.
    for target in (b"/v1/streams/caf\xc3\xa9/transcript.json", b"/v1/streams/\xff\xfe/events",
                   b"/v1/streams/a b/transcript.srt", b"/v1/streams/%/transcript.vtt"):
        add("raw bytes in the path", "GET", target, *BAD_ID, plain_400_ok=True)
    # globex's stream (the clean one, finished): its owner's key with bad input, others without.
    for token in ("%27%20OR%201%3D1--", "%FF%FE", "t" * 10_000, "", "..%2F..%2F"):
        for tail in ("/transcript.json", "/events"):
            add("viewer token", "GET", f"/v1/streams/{real_id}{tail}?token={token}", (401, "unauthorized"),
                tenant=None)
    for tail in ("/transcript.json", "/events", "/viewer-tokens"):
        add("another tenant's stream", "POST" if tail == "/viewer-tokens" else "GET", f"/v1/streams/{real_id}{tail}",
            (404, "unknown_stream"), body=token_body if tail == "/viewer-tokens" else b"")
    for fmt in ("xml", "json%00", "JSON", "vtt.exe", ""):  # "": no route
        add("transcript format", "GET", f"/v1/streams/{real_id}/transcript.{fmt}",
            (400, "bad_request") if fmt else (404, "not_found"), tenant="globex")
    for body in (b"x" * 5000, b"{not json", b"[1, 2]", b'{"ttl_s": "long"}', b'{"ttl_s": NaN}', b"\xff\xfe",
                 b'{"ttl_s": 1e999}', b'{"ttl_s": -1}', b'{"ttl_s": 0}', b'{"ttl_s": true}', b'{"ttl_s": null}',
                 b'{"ttl_s": ' + b"[" * 1000 + b"]" * 1000 + b"}", b'"a string"'):
        add("viewer token body", "POST", f"/v1/streams/{real_id}/viewer-tokens", (400, "bad_request"), body=body,
            tenant="globex")
    for key in BAD_KEYS:
        for method, target in (("GET", f"/v1/streams/{real_id}/transcript.json"),
                               ("GET", f"/v1/streams/{real_id}/events"), ("POST", "/v1/transcribe"),
                               ("POST", "/v1/audio/transcriptions"), ("GET", "/v1/models")):
            add("API key", method, target, (401, "unauthorized"), headers=((b"Authorization", key),), tenant=None)
    # POST /v1/transcribe with bad bodies.
    wav = wav_bytes(np.zeros(3200, np.float32), 16000)
    bad_audio = (400, "bad_audio")
    for body in (b"", wav[:20], wav[:40], wav[:44], with_rate(wav, 0), with_rate(wav, 1), with_rate(wav, 10**9),
                 wav_bytes(np.array([0.1, np.nan] * 800, np.float32), 16000, "FLOAT"),
                 wav_bytes(np.array([0.1, -np.inf] * 800, np.float32), 16000, "FLOAT"),
                 b'{"audio": "data"}', *(rng.randbytes(rng.randint(1, 300_000)) for _ in range(6))):
        add("transcribe body", "POST", "/v1/transcribe", bad_audio, body=body)
    add("transcribe body", "POST", "/v1/transcribe", (413, "too_large"), content_length=70 * 2**20)
    for language in ("xx", "%FF%FE", "k" * 5000):
        add("transcribe body", "POST", f"/v1/transcribe?language={language}", (400, "bad_request"), body=wav)
    # POST /v1/audio/transcriptions with garbage multipart.
    openai = "/v1/audio/transcriptions"
    model = ("model", None, model_id.encode())
    good_file = ("file", "a.wav", wav)
    form_cases: list[tuple[list, tuple[int, str]]] = [
        ([model], (400, "bad_request")),  # no file
        ([("file", None, b"text, not a file"), model], (400, "bad_request")),
        ([("file", "a.wav", rng.randbytes(5000)), model], (415, "unsupported_format")),
        ([("file", "../../etc/passwd\r\nX: y", rng.randbytes(100)), model], (415, "unsupported_format")),
        ([("file", "a.wav", wav[:40]), model], bad_audio),
        ([("file", "a.wav", with_rate(wav, 1)), model], bad_audio),
        ([("file", "a.wav", wav_bytes(np.array([np.nan] * 1600, np.float32), 16000, "FLOAT")), model], bad_audio),
        ([good_file], (400, "bad_request")),  # no model
        ([good_file, ("model", None, b"gpt-4o-transcribe")], (404, "model_not_found")),
        ([good_file, ("model", None, model_id.encode() * 3000)], (404, "model_not_found")),
        ([good_file, ("model", None, b"\xff\xfe\xc3\x28")], (404, "model_not_found")),
        ([good_file, model, ("response_format", None, b"xml")], (400, "bad_request")),
        ([good_file, model, ("temperature", None, b"nan")], (400, "bad_request")),
        ([good_file, model, ("temperature", None, b"1e309")], (400, "bad_request")),
        ([good_file, model, ("language", None, b"klingon")], (400, "bad_request")),
        ([good_file, model, ("stream", None, b"maybe")], (400, "bad_request")),
        ([good_file, model, ("timestamp_granularities[]", None, b"char")], (400, "bad_request")),
        ([good_file, model, ("include[]", None, b"logprobs")], (400, "bad_request")),
        ([good_file, model, ("language", "x.txt", b"en")], (400, "bad_request")),  # a file where text belongs
        ([good_file, model, *((f"f{i}", None, b"v") for i in range(70))], (400, "bad_request")),
        ([good_file, ("file", "b.wav", wav), model], (400, "bad_request")),
        ([good_file, model, ("prompt", None, b"p" * (2 * 2**20))], (400, "bad_request")),
    ]
    for parts, outcome in form_cases:
        body, content_type = multipart(parts)
        add("OpenAI multipart", "POST", openai, outcome, headers=((b"Content-Type", content_type),), body=body)
    body, _ = multipart([good_file, model])
    for content_type, payload, outcome in (
        (b"application/json", b'{"file": "x"}', (415, "unsupported_format")),
        (b"multipart/form-data", body, (400, "bad_request")),  # no boundary
        (b"multipart/form-data; boundary=other", body, (400, "bad_request")),
        (b"multipart/form-data; boundary=fuzzboundary", body[: len(body) // 2], (400, "bad_request")),
        (b"multipart/form-data; boundary=fuzzboundary", rng.randbytes(20_000), (400, "bad_request")),
        (b"multipart/form-data; boundary=" + b"b" * 5000, body, (400, "bad_request")),
    ):
        add("OpenAI multipart", "POST", openai, outcome, headers=((b"Content-Type", content_type),), body=payload)
    add("OpenAI multipart", "POST", openai, (413, "file_too_large"), content_length=100 * 2**20,
        headers=((b"Content-Type", b"multipart/form-data; boundary=fuzzboundary"),))
    for wrong in ("gpt-4", "../../etc/passwd", "%2e%2e", f"{model_id}%00", quote("é" * 100), "m" * 5000):
        add("OpenAI model id", "GET", f"/v1/models/{wrong}", (404, "model_not_found"))
    # Routes and methods that do not exist.
    add("no such route", "GET", "/v1/transcribe", (405, "method_not_allowed"))
    add("no such route", "PUT", f"/v1/streams/{'x' * 20}/transcript.json", (405, "method_not_allowed"))
    add("no such route", "POST", "/v1/models", (405, "method_not_allowed"))
    add("no such route", "GET", "/v1/nothing-here", (404, "not_found"))
    add("no such route", "GET", "/static/..%2F..%2Fdeployments%2Fingest.py", (404, "not_found"))
    add("no such route", "GET", "/static/../../deployments/ingest.py", (404, "not_found"))
    return cases


# ------------------------------------------------------------------ exchanges
@dataclass
class Answer:
    """What one hostile input got back."""

    case: WsCase | HttpCase
    outcome: str | tuple[int, str] | None = None  # the final error code or FINAL; (status, code) for HTTP
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def _fragments(piece: Fragmented) -> AsyncIterator[bytes]:
    size = -(-len(piece.message) // piece.pieces)
    for begin in range(0, len(piece.message), size):
        if begin:
            await asyncio.sleep(piece.pause_s)
        yield piece.message[begin : begin + size]


async def ws_exchange(case: WsCase, keys: dict[str, str]) -> Answer:
    """Send the case's frames on a fresh socket and read every server frame until it closes."""
    import websockets

    answer = Answer(case)
    headers = [*case.headers, *((("Authorization", f"Bearer {keys[case.tenant]}"),) if case.tenant else ())]
    frames: list[dict] = []
    async with websockets.connect(WS_URL + case.query, additional_headers=headers, max_size=None,
                                  open_timeout=EXCHANGE_LIMIT_S) as ws:
        try:
            for step in case.steps:
                if isinstance(step, float):
                    await asyncio.sleep(step)
                else:
                    await ws.send(_fragments(step) if isinstance(step, Fragmented) else step)
        except websockets.ConnectionClosed:
            pass  # the server answered and closed before the rest was sent
        try:
            async for raw in ws:
                frames.append(msgpack.unpackb(raw))
        except websockets.ConnectionClosed:
            pass
        close = ws.close_code
    errors = [f["code"] for f in frames if f["type"] == "error"]
    last = frames[-1] if frames else {"type": "nothing"}
    if last["type"] == "final":
        answer.outcome, expected_close = FINAL, 1000
        extra = [code for code in errors if code != "unknown_type"]
    elif last["type"] == "error":
        answer.outcome, expected_close = last["code"], CLOSE_FOR.get(last["code"], 1008)
        extra = [code for code in errors[:-1] if code != "unknown_type"]
    else:
        answer.problems.append(f"the socket closed ({close}) after {[f['type'] for f in frames]}: no final, no error")
        return answer
    if answer.outcome not in case.outcomes:
        answer.problems.append(f"ended with {answer.outcome!r} ({last.get('message')}), expected one of "
                               f"{sorted(case.outcomes)}")
    if "unknown_type" in errors and "unknown_type" not in case.outcomes and answer.outcome != "unknown_type":
        extra.append("unknown_type")
    if extra:
        answer.problems.append(f"other errors before the end: {extra}")
    if close != expected_close:
        answer.problems.append(f"close code {close}, expected {expected_close} after {answer.outcome!r}")
    return answer


async def http_exchange(case: HttpCase, keys: dict[str, str]) -> Answer:
    """One HTTP/1.1 request written byte for byte (paths are sent exactly as given), and its answer."""
    answer = Answer(case)
    headers = [*case.headers, *(((b"Authorization", f"Bearer {keys[case.tenant]}".encode()),) if case.tenant else ())]
    length = len(case.body) if case.content_length is None else case.content_length
    connection = [] if any(name.lower() == b"connection" for name, _ in headers) else [b"Connection: close"]
    head = [case.method.encode() + b" " + case.target + b" HTTP/1.1", f"Host: 127.0.0.1:{SERVICE_PORT}".encode(),
            *connection, b"Content-Length: %d" % length, *(name + b": " + value for name, value in headers)]
    reader, writer = await asyncio.open_connection("127.0.0.1", SERVICE_PORT)
    try:
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + case.body)
        await writer.drain()
        status_line = await reader.readline()
        fields: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        if "content-length" in fields:
            body = await reader.readexactly(int(fields["content-length"]))
        elif fields.get("transfer-encoding") == "chunked":
            body = b""
            while size := int((await reader.readline()).split(b";")[0], 16):
                body += await reader.readexactly(size)
                await reader.readline()
        else:
            body = await reader.read()
    finally:
        writer.close()
    if status_line == b"" and case.closed_ok:
        answer.outcome = "closed"
        return answer
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        answer.problems.append(f"no HTTP status line: {status_line[:80]!r}")
        return answer
    status = int(parts[1])
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    answer.outcome = (status, code)
    if code is None and (case.plain_400_ok and status == 400 or case.closed_ok and status in (414, 431)):
        return answer
    if code is None:
        answer.problems.append(f"HTTP {status} without a JSON error: {body[:120]!r}")
    elif (status, code) not in case.outcomes:
        answer.problems.append(f"HTTP {status} {code!r}, expected one of {sorted(case.outcomes)}: {body[:200]!r}")
    return answer


async def exchange(case: WsCase | HttpCase, keys: dict[str, str], slots: asyncio.Semaphore,
                   limit_s: float = EXCHANGE_LIMIT_S) -> Answer:
    """The case's answer; a hang or a transport failure is a problem of the answer, not an exception."""
    async with slots:
        started = time.monotonic()
        try:
            async with asyncio.timeout(limit_s):
                answer = await (ws_exchange if isinstance(case, WsCase) else http_exchange)(case, keys)
        except TimeoutError:
            answer = Answer(case, problems=[f"no answer within {limit_s:.0f} s"])
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            answer = Answer(case, problems=[f"{type(exc).__name__}: {exc}"])
        answer.seconds = time.monotonic() - started
        return answer


# ------------------------------------------------------------------ the service's replicas
def replicas() -> dict[str, set[str]]:
    """Serve replica actor names by deployment (a restarted replica has a new name)."""
    import ray

    names: dict[str, set[str]] = {"Ingest": set(), "ASRModel": set()}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        for deployment, found in names.items():
            if actor["name"].startswith(f"SERVE_REPLICA::{APP}#{deployment}#"):
                found.add(actor["name"])
    return names


def ingest_rss_bytes() -> int:
    """Resident memory of the (single) ingest replica's process."""
    import psutil
    import ray

    (name,) = replicas()["Ingest"]
    pid = ray.get(ray.get_actor(name, namespace="serve").__ray_call__.remote(lambda _: os.getpid()), timeout=30)
    return psutil.Process(pid).memory_info().rss


def unhealthy(serve) -> dict[str, str]:
    """Deployments not HEALTHY (UPSCALING is fine: the autoscaler adds a model replica for the fuzz's streams)."""
    statuses = {name: str(d.status) for name, d in serve.status().applications[APP].deployments.items()}
    return {name: status for name, status in statuses.items() if not status.endswith(("HEALTHY", "UPSCALING"))
            or status.endswith("UNHEALTHY")}


# ------------------------------------------------------------------ the test
def test_hostile_inputs_get_their_codes_beside_a_clean_stream(service, tenants: Tenants, tiny_dir: Path) -> None:
    rng = random.Random(SEED)
    clean = speech(8.0, seed=41)
    keys = tenants.keys
    alone = asyncio.run(stream_samples(clean, keys["globex"]))
    assert alone.words, "the random model commits words on this clip"
    model_id = served_model_id(str(tiny_dir))
    cases: list[WsCase | HttpCase] = [*ws_cases(rng, clean), *http_cases(rng, alone.session_id, model_id)]
    # The slow ones first, so they wait beside the rest, not after it.
    rng.shuffle(cases)
    cases.sort(key=lambda c: not (isinstance(c, WsCase) and c.category == "slow handshake"))
    before = replicas()
    assert not unhealthy(service)

    async def fuzz(cases: list[WsCase | HttpCase]) -> tuple[list[Answer], list]:
        stop = asyncio.Event()

        async def clean_streams() -> list:
            done = [await stream_samples(clean, keys["globex"])]
            while not stop.is_set():
                done.append(await stream_samples(clean, keys["globex"]))
            return done

        beside = asyncio.create_task(clean_streams())
        slots = asyncio.Semaphore(CONCURRENCY)
        try:
            answers = await asyncio.gather(*(exchange(case, keys, slots) for case in cases))
        finally:
            stop.set()
        return answers, await beside

    # Twice: the first pass also warms the ingest up (FFmpeg, soxr, a malloc arena per thread-pool
    # thread that ran a 16 MiB scrypt), so memory is compared over the second.
    rss = [ingest_rss_bytes()]
    streamed, seconds = [], []
    for _ in range(2):
        started = time.monotonic()
        answers, beside = asyncio.run(fuzz(cases))
        seconds.append(time.monotonic() - started)
        streamed += beside
        rss.append(ingest_rss_bytes())
        rng.shuffle(cases)
        cases.sort(key=lambda c: not (isinstance(c, WsCase) and c.category == "slow handshake"))
        problems = [f"{a.case.category}: {_describe(a.case)}: {'; '.join(a.problems)}"
                    for a in answers if a.problems]
        assert not problems, f"{len(problems)} of {len(answers)} inputs:\n" + "\n".join(problems[:40])

    summary: dict[str, Counter] = {}
    for answer in answers:
        summary.setdefault(answer.case.category, Counter())[str(answer.outcome)] += 1
    print(f"\n{len(answers)} hostile inputs, twice, in {seconds[0]:.1f} + {seconds[1]:.1f} s, {len(streamed)} clean "
          f"streams beside them; ingest RSS {' -> '.join(f'{r / 2**20:.0f}' for r in rss)} MiB")
    for category, outcomes in sorted(summary.items()):
        print(f"  {category:40s} {sum(outcomes.values()):4d}  {dict(outcomes)}")
    assert len(answers) >= 300
    slowest = max(answers, key=lambda a: a.seconds)
    assert slowest.seconds < EXCHANGE_LIMIT_S, _describe(slowest.case)

    # The clean streams heard exactly what the same audio gave alone.
    for result in streamed:
        assert result.words == alone.words
        assert result.final["text"] == alone.final["text"] and result.final["rehomes"] == 0
    # No replica was restarted (a model replica may have been added by the autoscaler, none lost).
    after = replicas()
    assert after["Ingest"] == before["Ingest"]
    assert before["ASRModel"] <= after["ASRModel"], "a model replica died"
    assert not unhealthy(service)
    assert rss[2] - rss[1] < MAX_RSS_GROWTH_BYTES, f"the ingest grew by {(rss[2] - rss[1]) / 2**20:.0f} MiB"


def test_websocket_upgrade_with_an_over_8_kib_header_line_is_answered(service) -> None:
    """Keys are at most 256 characters; a longer header line must still get an answer or a close, not silence.

    The WebSocket handshake's 8 KiB line limit is uvicorn's, in the ingest
    replica's server: before uvicorn 0.55 it held such a connection unanswered.
    """
    upgrade = ((b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Version", b"13"),
               (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="))
    cases = [
        HttpCase("long header line", "GET", b"/v1/stream", frozenset({(431, "none")}), tenant=None, closed_ok=True,
                 headers=(*upgrade, (b"Authorization", b"Bearer ck_" + b"a" * 10_000)), plain_400_ok=True),
        HttpCase("long request line", "GET", b"/v1/stream?key=" + b"x" * 10_000, frozenset({(414, "none")}),
                 tenant=None, closed_ok=True, headers=upgrade),
    ]

    async def run() -> list[Answer]:
        slots = asyncio.Semaphore(len(cases))
        return await asyncio.gather(*(exchange(case, {}, slots, limit_s=15.0) for case in cases))

    problems = [a.problems for a in asyncio.run(run()) if a.problems]
    assert not problems


def _step(step: bytes | str | Fragmented) -> str:
    if isinstance(step, Fragmented):
        return f"fragmented[{len(step.message)}]"
    return f"{type(step).__name__}[{len(step)}]{step[:24]!r}"


def _describe(case: WsCase | HttpCase) -> str:
    if isinstance(case, HttpCase):
        return f"{case.method} {case.target[:100]!r} (body {len(case.body)} bytes)"
    steps = [step if isinstance(step, float) else _step(step) for step in case.steps]
    return f"{case.query or ''} {dict(case.headers) or ''} {steps}"[:400]
