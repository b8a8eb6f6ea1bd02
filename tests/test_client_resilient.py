"""The resilient client's kept audio: what it forgets on `ack` and re-sends after a resume."""

from __future__ import annotations

import numpy as np

from client.resilient import KeptAudio


def pcm(start: int, count: int) -> bytes:
    return np.arange(start, start + count, dtype="<i2").tobytes()


def test_ack_forgets_and_since_resends_from_the_resume_point() -> None:
    kept = KeptAudio(rate=1000)
    for begin in range(0, 3000, 100):
        kept.add(pcm(begin, 100))
    kept.ack(1.05)  # the server stored the words of the first 1.05 s
    assert kept.start == 1050 and kept.end == 3000
    # The new ingest replica resumes at 1.2 s (a later stored word): the client sends from there.
    assert np.frombuffer(kept.since(1.2), "<i2")[0] == 1200
    # A resume point before what was kept (the same ingest, nothing new) sends all that is kept.
    assert len(kept.since(0.5)) == (3000 - 1050) * 2
    assert kept.since(3.0) == b""


def test_unacknowledged_audio_is_bounded() -> None:
    kept = KeptAudio(rate=1000, max_s=1.0)
    for begin in range(0, 2500, 100):
        kept.add(pcm(begin, 100))
    assert kept.start == 1500 and kept.end == 2500
