"""Client side of the tests that talk to the real service over WebSockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from client.stream import CaptionStream, pcm_chunks, send_realtime
from engine.features import SAMPLE_RATE

from .conftest import SERVICE_URL

WS_URL = SERVICE_URL.replace("http", "ws", 1) + "/v1/stream"

OnWords = Callable[[CaptionStream, list[dict]], Awaitable[None]]


@dataclass
class Streamed:
    session_id: str
    words: list[dict]  # from the `words` frames, in order
    final: dict


async def stream_samples(samples: np.ndarray, key: str, speed: float = 1.0, on_words: OnWords | None = None) -> Streamed:
    """Stream 16 kHz samples at `speed` x real time and read every frame up to `final`.

    `on_words(stream, words so far)` is awaited after each `words` frame.
    """
    words: list[dict] = []
    # A stream left waiting (e.g. on a replica that is gone) fails here, not at pytest's timeout.
    async with asyncio.timeout(len(samples) / SAMPLE_RATE / speed + 60), \
            CaptionStream(WS_URL, language="en", api_key=key) as stream:
        sender = asyncio.create_task(send_realtime(stream, pcm_chunks(samples, 0.1), 0.1, speed))
        async for frame in stream.frames():
            assert frame["type"] != "error", frame
            if frame["type"] == "words":
                words += frame["words"]
                if on_words is not None:
                    await on_words(stream, words)
            if frame["type"] == "final":
                await sender
                return Streamed(stream.session_id, words, frame)
    raise AssertionError("socket closed without a final frame")


async def send_and_drop(samples: np.ndarray, key: str, seconds: float) -> CaptionStream:
    """Send the first `seconds` of audio and `end`, then close the socket before reading a frame.

    Returns the closed stream (its session id and resume token); `seconds`
    must stay under ingest.max_pending_s.
    """
    stream = CaptionStream(WS_URL, language="en", api_key=key)
    async with stream:
        for chunk in pcm_chunks(samples[: int(seconds * SAMPLE_RATE)], 0.5):
            await stream.send_audio(chunk)
        await stream.end()
    return stream
