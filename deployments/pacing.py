"""Pushing audio into a relay as fast as the model takes it, never past the pending bound.

The native socket refuses a client that runs ahead of the model
(`overloaded`); the OpenAI endpoints hold the audio back instead, because
OpenAI clients send whole files (HTTP) or large appends (Realtime) at once.
Waiting here stops reading the request or socket, so the client is slowed,
and no buffer grows.
"""

from __future__ import annotations

import asyncio

import numpy as np

from deployments.relay import Relay
from engine.features import SAMPLE_RATE

# How often a held-back push looks at the relay's backlog again.
_WAIT_S = 0.05


async def push_paced(relay: Relay, samples: np.ndarray, max_pending_s: float) -> None:
    """Push `samples` in steps of a quarter of `max_pending_s`, keeping under half of it pending.

    Returns early if the relay is done (finished or failed); RelayError from push_audio.
    """
    step = int(SAMPLE_RATE * max_pending_s / 4)
    for begin in range(0, len(samples), step):
        while relay.session.pending_s > max_pending_s / 2 and not relay.done.is_set():
            await asyncio.sleep(_WAIT_S)
        if relay.done.is_set():
            return
        relay.push_audio(samples[begin : begin + step])
