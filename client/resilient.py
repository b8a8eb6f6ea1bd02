"""A caption stream that survives dropped sockets: it keeps unacknowledged audio and resumes.

The service acknowledges audio whose words are stored (`ack_s` on `words` frames);
everything after the last acknowledgement stays here. When the socket
drops (the ingest replica died, the network blinked), the stream connects
again, possibly to another ingest replica, with `start {resume: {session_id,
token, words}}`; the `ready` answer says from where to re-send
(`resume_from_s`), and the stream re-sends its kept audio from there, then
goes on with the live audio. Words are counted, so none arrives twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import websockets

from client.stream import CaptionStream, ServiceError

log = logging.getLogger(__name__)

BYTES_PER_SAMPLE = 2  # pcm_s16le
# Audio re-sent after a resume (and live audio queued meanwhile) goes at most this much faster
# than real time, so it stays within the service's pending-audio limit.
CATCH_UP = 3.0
# Errors that end a stream for good: reconnecting would get the same answer.
FATAL = {"bad_frame", "unsupported_encoding", "frame_too_large", "bad_audio", "bad_request", "unauthorized",
         "quota_exceeded", "resume_failed", "idle_timeout", "internal"}


@dataclass
class KeptAudio:
    """Audio sent but not acknowledged, as 16-bit PCM bytes at the stream's rate."""

    rate: int
    max_s: float = 300.0  # beyond this much unacknowledged audio the oldest is dropped (and logged)
    start: int = 0  # stream sample index of the first kept sample
    data: bytearray = field(default_factory=bytearray)

    @property
    def end(self) -> int:
        return self.start + len(self.data) // BYTES_PER_SAMPLE

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) // BYTES_PER_SAMPLE - int(self.max_s * self.rate)
        if excess > 0:
            log.warning("%.1f s of audio unacknowledged: dropping the oldest", self.max_s)
            self.forget_before(self.start + excess)

    def ack(self, audio_s: float) -> None:
        self.forget_before(int(audio_s * self.rate))

    def forget_before(self, index: int) -> None:
        cut = min(max(0, index - self.start), len(self.data) // BYTES_PER_SAMPLE)
        del self.data[: cut * BYTES_PER_SAMPLE]
        self.start += cut

    def since(self, audio_s: float) -> bytes:
        """Kept audio from `audio_s` of the stream on (what a resumed session needs again)."""
        index = max(int(round(audio_s * self.rate)), self.start)
        return bytes(self.data[(index - self.start) * BYTES_PER_SAMPLE :])


@dataclass
class ResilientStream:
    """Send `chunks` at `speed` x real time and collect frames up to `final`, resuming after drops."""

    url: str
    api_key: str | None = None
    language: str | None = None
    rate: int = 16_000
    reconnect_s: float = 120.0  # give up when no socket could be resumed for this long
    on_frame: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    words: list[dict[str, Any]] = field(default_factory=list)
    reconnects: int = 0
    session_id: str = ""
    # All live audio was sent and `end` with it (it is sent again after a resume).
    ended: bool = False
    # Sending is paced at most this much faster than real time (see CATCH_UP).
    catch_up: float = CATCH_UP

    async def run(self, chunks: Iterable[bytes], chunk_s: float, speed: float = 1.0) -> dict[str, Any]:
        """Stream a file's chunks at `speed` x real time; the `final` frame (see run_live)."""
        live: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.catch_up = max(CATCH_UP, speed)  # a file streamed at 4x is sent at 4x
        feeder = asyncio.create_task(_pace(chunks, chunk_s, speed, live))
        try:
            return await self.run_live(live, chunk_s)
        finally:
            feeder.cancel()

    async def run_live(self, live: asyncio.Queue[bytes | None], chunk_s: float) -> dict[str, Any]:
        """Stream chunks as they come from `live` (None: the end); the `final` frame.

        ServiceError for an error that reconnecting cannot mend.
        """
        kept = KeptAudio(self.rate)
        stream = CaptionStream(self.url, sample_rate=self.rate, language=self.language, api_key=self.api_key)
        lost_at = None
        while True:
            try:
                async with stream:
                    self.session_id = stream.session_id
                    resend = kept.since(stream.ready.get("resume_from_s", 0.0)) if self.reconnects else b""
                    stream.resume = {"session_id": stream.session_id, "token": stream.resume_token}
                    lost_at = None
                    final = await self._session(stream, kept, live, resend, chunk_s)
                    if final is not None:
                        return final
            except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake) as exc:
                log.info("stream %s: socket lost (%s): resuming", self.session_id or "-", type(exc).__name__)
            except ServiceError as exc:
                if exc.code in FATAL:
                    raise
                log.info("stream %s: %s: resuming", self.session_id or "-", exc.code)
            if not stream.resume:
                raise ServiceError("unavailable", "the stream could not be started")
            lost_at = lost_at or time.monotonic()
            if time.monotonic() - lost_at > self.reconnect_s:
                raise ServiceError("unavailable", f"no socket could be resumed for {self.reconnect_s:.0f} s")
            self.reconnects += 1
            stream.resume["words"] = len(self.words)
            await asyncio.sleep(min(2.0, 0.2 * self.reconnects))

    async def _session(self, stream: CaptionStream, kept: KeptAudio, live: asyncio.Queue, resend: bytes,
                       chunk_s: float) -> dict[str, Any] | None:
        """One socket's life: re-send, then live audio; frames until final (returned) or a drop (None)."""
        sender = asyncio.create_task(self._send(stream, kept, live, resend, chunk_s))
        try:
            async for frame in stream.frames():
                if self.on_frame is not None:
                    await self.on_frame(frame)
                kind = frame["type"]
                if kind == "words":
                    self.words += frame["words"]
                    if "ack_s" in frame:
                        kept.ack(frame["ack_s"])
                elif kind == "final":
                    return frame
                elif kind == "error":
                    raise ServiceError(frame["code"], frame["message"])
            return None
        finally:
            sender.cancel()
            if sender.done() and not sender.cancelled() and sender.exception() is not None:
                log.info("stream %s: sending stopped: %r", self.session_id, sender.exception())

    async def _send(self, stream: CaptionStream, kept: KeptAudio, live: asyncio.Queue, resend: bytes,
                    chunk_s: float) -> None:
        """Kept audio again, then the live audio (and what queued while no socket was up)."""
        step = int(chunk_s * self.rate) * BYTES_PER_SAMPLE
        due = time.monotonic()

        async def send(chunk: bytes) -> None:
            # At most catch_up x real time: a backlog goes out quickly but within the service's limits.
            nonlocal due
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await stream.send_audio(chunk)
            due = max(due, time.monotonic()) + len(chunk) / BYTES_PER_SAMPLE / self.rate / self.catch_up

        for begin in range(0, len(resend), step):
            await send(resend[begin : begin + step])
        if not self.ended:
            while (chunk := await live.get()) is not None:
                kept.add(chunk)
                await send(chunk)
            self.ended = True
        await stream.end()


async def _pace(chunks: Iterable[bytes], chunk_s: float, speed: float, live: asyncio.Queue) -> None:
    """The live audio: chunks due on a clock (a microphone does not wait for reconnects), then None."""
    started = time.monotonic()
    for i, chunk in enumerate(chunks):
        await asyncio.sleep(max(0.0, started + i * chunk_s / speed - time.monotonic()))
        live.put_nowait(chunk)
    live.put_nowait(None)
