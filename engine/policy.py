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
* REPEAT: the token starts a new word at or before the start of the last
  committed word (the same word again at the same place, or an earlier
  one): the decoder is re-reading audio it already transcribed. The
  committed timeline is strictly increasing in word starts, so a word is
  never committed twice; unlike the other two this holds after the stream
  ended too.
* CONTINUE: commit the token and decode the next one.

Once the stream has ended (`final`) all audio is there: plain greedy
decoding to the end of text, as offline (REPEAT aside). Thresholds are
seconds of audio, independent of the buffer length.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Verdict(IntEnum):
    CONTINUE = 0
    BORDER = 1
    REWIND = 2
    REPEAT = 3


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


# Two attended times closer than this are the same place (half an encoder token, 80 ms).
SAME_PLACE_S = 0.04
# Attended times sit on a 40 ms grid: one grid step apart must count as the same place,
# not fall either side of the limit by float rounding (2.8 - 2.76 = 0.04000000000000001).
_GRID_EPS_S = 1e-6


@dataclass(frozen=True)
class Rows:
    """What the policy knows about B rows' newest token (all arrays [B])."""

    audio_end_s: np.ndarray  # end of the audio the row has seen
    last_s: np.ndarray  # where the previous committed token looked (-inf if none)
    new_word: np.ndarray  # bool: the token starts a word
    last_word_s: np.ndarray  # start of the last committed word (-inf if none)
    same_token: np.ndarray  # bool: the token is the first token of the last committed word
    final: np.ndarray  # bool: the stream has ended (no border, no rewind)


def decide(head_times: np.ndarray, rows: Rows, cfg: PolicyConfig) -> tuple[np.ndarray, np.ndarray]:
    """Verdicts for B rows from head_times float[B, H], the seconds each alignment head attends to.

    Returns (verdict int8[B], attended_s float[B]).
    """
    attended = np.median(head_times, axis=1)
    earlier = attended < rows.last_word_s - SAME_PLACE_S - _GRID_EPS_S
    again = (np.abs(attended - rows.last_word_s) <= SAME_PLACE_S + _GRID_EPS_S) & rows.same_token
    repeat = rows.new_word & (earlier | again)
    rewind = (rows.last_s - attended > cfg.rewind_s) & ~rows.final
    border = (rows.audio_end_s - attended <= cfg.border_s) & ~rows.final
    verdict = np.select([repeat, rewind, border], [Verdict.REPEAT, Verdict.REWIND, Verdict.BORDER], Verdict.CONTINUE)
    return verdict.astype(np.int8), attended
