"""The AlignAtt decision for one decoded token per row (a pure function).

For each row the alignment heads point at an audio time (the argmax of
their attention over the audio tokens). Their median is where the new token
"looks". Three verdicts:

* BORDER: it looks within `border_s` of the end of the audio received so far;
  the token may belong to a word that is still arriving, so decoding pauses
  and the token is not committed.
* REWIND: it looks more than `rewind_s` before the previous token; the
  decoder went back over audio it already transcribed (repetition), so the
  token is dropped and decoding pauses.
* CONTINUE: commit the token and decode the next one.

Once the stream has ended (`final`) all audio is there: plain greedy
decoding to the end of text, as offline. Thresholds are seconds of audio,
independent of the buffer length.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Verdict(IntEnum):
    CONTINUE = 0
    BORDER = 1
    REWIND = 2


@dataclass(frozen=True)
class PolicyConfig:
    """AlignAtt thresholds, in seconds of audio."""

    # Tuned with benchmarks/quality.py on models/tiny-en (README): the heads
    # point at a word's start, and words committed with little audio after
    # them are more often wrong (streaming WER 1.21x offline at 0.4 s, 1.16x
    # at 0.6 s, 1.15x at 0.8 s).
    border_s: float = 0.6
    rewind_s: float = 1.5

    def __post_init__(self) -> None:
        if self.border_s < 0 or self.rewind_s <= 0:
            raise ValueError(f"border_s must be >= 0 and rewind_s > 0, got {self}")


def decide(
    head_times: np.ndarray, audio_end_s: np.ndarray, last_s: np.ndarray, final: np.ndarray, cfg: PolicyConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Verdicts for B rows.

    head_times: float[B, H] seconds each alignment head attends to;
    audio_end_s: float[B] end of the audio each row has seen;
    last_s: float[B] where the previous committed token looked (-inf if none);
    final: bool[B] the stream has ended: always CONTINUE.
    Returns (verdict int8[B], attended_s float[B]).
    """
    attended = np.median(head_times, axis=1)
    rewind = (last_s - attended > cfg.rewind_s) & ~final
    border = (audio_end_s - attended <= cfg.border_s) & ~final
    verdict = np.where(rewind, Verdict.REWIND, np.where(border, Verdict.BORDER, Verdict.CONTINUE))
    return verdict.astype(np.int8), attended
