"""Training examples from a corpus made by training.corpus.

An example is audio, a system-prompt context and the assistant's target,
exactly in the prompt format the engine uses at inference time:
`language English<asr_text>` + transcript + `<|im_end|>`. Three variations
prepare the model for streaming:

* prefix: a word-boundary clip cut at a random time; the target holds only
  the words that were complete before the cut, so the model learns to write
  what it has heard and no more (the engine decodes growing buffers);
* context: earlier text in the system prompt (the engine puts the text of
  trimmed audio there);
* silence: noise only, target "language None".

Every example is also resampled by a random factor (see STRETCH), which
makes a new voice out of each clip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.features import SAMPLE_RATE

PREFIX_FRACTION = 0.3
CONTEXT_FRACTION = 0.25
# A word counts as heard once its end is this far before the cut.
HEARD_MARGIN_S = 0.05
# Resampling by a factor in this range changes speed, pitch and formants
# together, as a shorter or longer vocal tract would. Measured before it was
# added: WER 0.21 on training clips vs 0.43 on held-out ones, twice as high
# on unseen voices.
STRETCH = (0.88, 1.12)


@dataclass(frozen=True)
class Example:
    audio: np.ndarray
    context: str
    words: list[str]
    silence: bool
    # (word, start, end) of every word audible in `audio`, when the clip has word times.
    spans: list[tuple[str, float, float]] | None = None


class Corpus:
    """One split of a corpus: the manifest and a memory map of its audio."""

    def __init__(self, split_dir: Path) -> None:
        self.clips = [json.loads(line) for line in (split_dir / "manifest.jsonl").read_text().splitlines()]
        self.audio = np.memmap(split_dir / "audio.i16", dtype=np.int16, mode="r")

    def __len__(self) -> int:
        return len(self.clips)

    def samples(self, index: int) -> np.ndarray:
        clip = self.clips[index]
        return self.audio[clip["offset"] : clip["offset"] + clip["samples"]].astype(np.float32) / 32768.0

    def seconds(self, index: int) -> float:
        return self.clips[index]["samples"] / SAMPLE_RATE

    def example(
        self, index: int, rng: np.random.Generator, vocabulary: list[str], prefix_fraction: float = PREFIX_FRACTION
    ) -> Example:
        """Clip `index` as a training example, with the streaming variations drawn from `rng`."""
        clip = self.clips[index]
        factor = float(rng.uniform(*STRETCH))
        audio = stretch(self.samples(index), factor)
        words = clip["text"].split()
        timed = [(w["text"], w["start"] / factor, w["end"] / factor) for w in clip["words"]]
        spans = timed if clip["kind"] == "words" else None
        if clip["kind"] == "silence":
            spans = []
        if clip["kind"] == "words" and rng.random() < prefix_fraction:
            cut = float(rng.uniform(0.3, len(audio) / SAMPLE_RATE))
            audio = audio[: int(cut * SAMPLE_RATE)]
            words = [w for w, _, end in timed if end <= cut - HEARD_MARGIN_S]
            spans = [(w, a, min(b, cut)) for w, a, b in timed if a < cut]
        context = ""
        if rng.random() < CONTEXT_FRACTION:
            context = " ".join(rng.choice(vocabulary, size=int(rng.integers(3, 30))))
        return Example(audio=audio, context=context, words=words, silence=clip["kind"] == "silence", spans=spans)


def stretch(audio: np.ndarray, factor: float) -> np.ndarray:
    """`audio` played `factor` times as fast (and as high), by linear interpolation."""
    positions = np.arange(int(len(audio) / factor)) * factor
    return np.interp(positions, np.arange(len(audio)), audio).astype(np.float32)
