"""Stream audio to /v1/stream and receive caption frames.

    async with CaptionStream(url, sample_rate=16000) as stream:
        await stream.send_audio(pcm_bytes)   # little-endian PCM in the chosen encoding
        await stream.end()
        async for frame in stream.frames():   # dicts: words, partial, final, error
            ...
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import websockets

from engine.features import SAMPLE_RATE


class ServiceError(Exception):
    """An `error` frame from the service (or a refused handshake)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def pack(kind: str, **fields: Any) -> bytes:
    return msgpack.packb({"type": kind, **fields}, use_bin_type=True)


@dataclass
class CaptionStream:
    """One stream: `ready` is read on entry; frames() yields the rest until final/error/close."""

    url: str
    sample_rate: int = SAMPLE_RATE
    encoding: str = "pcm_s16le"
    language: str | None = None
    resume: dict[str, str] | None = None
    api_key: str | None = None
    session_id: str = ""
    resume_token: str = ""
    # The `ready` frame (on a resume it says where to re-send audio from: resume_from_s).
    ready: dict[str, Any] = field(default_factory=dict)

    async def __aenter__(self) -> CaptionStream:
        headers: dict[str, str] = {}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self.ws = await websockets.connect(self.url, additional_headers=headers, max_size=2**24)
        start: dict[str, Any] = {"sample_rate": self.sample_rate, "encoding": self.encoding,
                                 "language": self.language or "auto"}
        if self.resume:
            start["resume"] = self.resume
        await self.ws.send(pack("start", **start))
        ready = msgpack.unpackb(await self.ws.recv())
        if ready["type"] == "error":
            raise ServiceError(ready["code"], ready["message"])
        self.session_id, self.resume_token = ready["session_id"], ready["resume_token"]
        self.ready = ready
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    async def send_audio(self, data: bytes) -> None:
        await self.ws.send(pack("audio", data=data))

    async def end(self) -> None:
        await self.ws.send(pack("end"))

    async def frames(self) -> AsyncIterator[dict[str, Any]]:
        """Server frames until `final` or `error` (both yielded) or the socket closes."""
        try:
            async for raw in self.ws:
                frame = msgpack.unpackb(raw)
                yield frame
                if frame["type"] in ("final", "error"):
                    return
        except websockets.ConnectionClosed:
            return


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> int16 little-endian, the inverse of the service's int16 / 32768.

    Audio read from a 16-bit file reaches the service exactly as the file holds it (scaling by
    32767 and truncating changed it by up to one step, enough to move a voice activity onset).
    """
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")


def pcm_chunks(samples: np.ndarray, chunk_s: float, sample_rate: int = SAMPLE_RATE) -> Iterable[bytes]:
    """Float samples in [-1, 1] -> int16 little-endian chunks of chunk_s."""
    pcm = to_pcm16(samples)
    step = max(1, int(chunk_s * sample_rate))
    for begin in range(0, len(pcm), step):
        yield pcm[begin : begin + step].tobytes()


async def send_realtime(stream: CaptionStream, chunks: Iterable[bytes], chunk_s: float, speed: float = 1.0) -> None:
    """Send chunks at `speed` x real time (paced on a clock, not on sleeps adding up), then `end`."""
    started = time.monotonic()
    for i, chunk in enumerate(chunks):
        due = started + i * chunk_s / speed
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        await stream.send_audio(chunk)
    await stream.end()
