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

Two more kinds are made at training time (`Corpus.add_extras`), for what a
live stream mostly hears, nobody speaking, and for the engine's long buffers
(up to 24 s):

* nonspeech: a training.nonspeech signal (digital silence, noise, tones,
  hum, clicks, chirps, mixtures), target "language None"; or, as after a
  stream's language is known, "language English<asr_text>" given in the
  prompt and only the end of text to learn;
* padded: a corpus clip between long stretches of silence or noise.

Their features are computed as a live stream computes them (as StreamingMel
does, one engine step at a time), which differs from offline in quiet audio
at the start of a clip.

Every example is also resampled by a random factor (see STRETCH), which
makes a new voice out of each clip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.config import EngineConfig
from engine.features import HOP, PAD, SAMPLE_RATE, MelFrontend, normalize
from training.nonspeech import random_signal

PREFIX_FRACTION = 0.3
CONTEXT_FRACTION = 0.25
# A word counts as heard once its end is this far before the cut.
HEARD_MARGIN_S = 0.05
# Resampling by a factor in this range changes speed, pitch and formants
# together, as a shorter or longer vocal tract would. Measured before it was
# added: WER 0.21 on training clips vs 0.43 on held-out ones, twice as high
# on unseen voices.
STRETCH = (0.88, 1.12)
# Non-speech examples whose prompt already holds "language English<asr_text>":
# once a stream's language is known, the engine puts it there for every later
# step, silence or not (and `--language en` does from the start).
LANGUAGE_GIVEN_FRACTION = 0.3
# Padded clips: digital silence around the speech, else a background signal
# this many dB below the speech peak, under the whole clip.
PAD_ZEROS_FRACTION = 0.5
PAD_SNR_DB = (10.0, 50.0)
NONSPEECH_MIN_S = 0.5


@dataclass(frozen=True)
class Example:
    audio: np.ndarray
    context: str
    words: list[str]
    silence: bool
    # (word, start, end) of every word audible in `audio`, when the clip has word times.
    spans: list[tuple[str, float, float]] | None = None
    # The prompt holds "language English<asr_text>": the loss starts after it.
    language_given: bool = False
    # Features as a live stream computes them (running maximum), not offline.
    streamed: bool = False


@dataclass(frozen=True)
class Extra:
    """A clip made at training time: non-speech, or a corpus clip padded with silence."""

    kind: str  # nonspeech | padded
    seconds: float  # before stretching; what batches are sorted by
    base: int = -1  # padded: the corpus clip
    lead_s: float = 0.0  # padded: silence before it (the rest of `seconds` after it)


class Corpus:
    """One split of a corpus: the manifest and a memory map of its audio."""

    def __init__(self, split_dir: Path) -> None:
        self.clips = [json.loads(line) for line in (split_dir / "manifest.jsonl").read_text().splitlines()]
        self.audio = np.memmap(split_dir / "audio.i16", dtype=np.int16, mode="r")
        # Indices from len(clips) on are extras.
        self.extras: list[Extra] = []

    def __len__(self) -> int:
        return len(self.clips) + len(self.extras)

    def add_extras(self, nonspeech: float, padded: float, max_s: float, rng: np.random.Generator) -> None:
        """Add nonspeech and padded clips, as fractions of the corpus's clip count, each at most max_s long."""
        for _ in range(round(nonspeech * len(self.clips))):
            self.extras.append(Extra("nonspeech", float(rng.uniform(NONSPEECH_MIN_S, max_s))))
        # Room for the base clip at its slowest stretch and at least one second of silence.
        room = [i for i, c in enumerate(self.clips) if c["kind"] != "silence" and self.seconds(i) / STRETCH[0] + 1 < max_s]
        for base in rng.choice(room, size=round(padded * len(self.clips))):
            pad = float(rng.uniform(1.0, max_s - self.seconds(base) / STRETCH[0]))
            # Mostly trailing: a sentence, then the pause a live stream waits through.
            self.extras.append(Extra("padded", self.seconds(base) + pad, int(base), pad * float(rng.random()) ** 2))

    def samples(self, index: int) -> np.ndarray:
        clip = self.clips[index]
        return self.audio[clip["offset"] : clip["offset"] + clip["samples"]].astype(np.float32) / 32768.0

    def seconds(self, index: int) -> float:
        if index >= len(self.clips):
            return self.extras[index - len(self.clips)].seconds
        return self.clips[index]["samples"] / SAMPLE_RATE

    def example(
        self, index: int, rng: np.random.Generator, vocabulary: list[str], prefix_fraction: float = PREFIX_FRACTION
    ) -> Example:
        """Clip `index` as a training example, with the streaming variations drawn from `rng`."""
        if index < len(self.clips):
            return self._clip_example(index, rng, vocabulary, prefix_fraction)
        extra = self.extras[index - len(self.clips)]
        if extra.kind == "nonspeech":
            return nonspeech_example(extra.seconds, rng, vocabulary)
        return self._padded_example(extra, rng, vocabulary, prefix_fraction)

    def _padded_example(
        self, extra: Extra, rng: np.random.Generator, vocabulary: list[str], prefix_fraction: float
    ) -> Example:
        """The base clip (stretched, whole) between silences, maybe cut as a stream's buffer is."""
        base = self._clip_example(extra.base, rng, vocabulary, prefix_fraction=0.0)
        lead = int(extra.lead_s * SAMPLE_RATE)
        trail = max(0, int(extra.seconds * SAMPLE_RATE) - lead - len(base.audio))
        audio = np.concatenate([np.zeros(lead, np.float32), base.audio, np.zeros(trail, np.float32)])
        if rng.random() >= PAD_ZEROS_FRACTION:
            peak = float(np.abs(base.audio).max()) or 1.0
            background = random_signal(len(audio), rng)
            scale = peak * 10 ** (-rng.uniform(*PAD_SNR_DB) / 20) / (float(np.abs(background).max()) or 1.0)
            audio = np.clip(audio + scale * background, -1.0, 1.0).astype(np.float32)
        shift = extra.lead_s
        spans = None if base.spans is None else [(w, a + shift, b + shift) for w, a, b in base.spans]
        words, silent = base.words, False
        if spans and rng.random() < prefix_fraction:
            cut = float(rng.uniform(0.3, len(audio) / SAMPLE_RATE))
            audio, words, spans = cut_at(audio, spans, cut)
            # Cut before the first word began: nothing but silence was heard.
            silent = not spans
        return Example(audio, base.context, [] if silent else words, silent, spans, streamed=True)

    def _clip_example(
        self, index: int, rng: np.random.Generator, vocabulary: list[str], prefix_fraction: float
    ) -> Example:
        clip = self.clips[index]
        factor = float(rng.uniform(*STRETCH))
        audio = stretch(self.samples(index), factor)
        words = clip["text"].split()
        timed = [(w["text"], w["start"] / factor, w["end"] / factor) for w in clip["words"]]
        spans = timed if clip["kind"] == "words" else None
        if clip["kind"] == "silence":
            spans = []
        if clip["kind"] == "words" and rng.random() < prefix_fraction:
            audio, words, spans = cut_at(audio, timed, float(rng.uniform(0.3, len(audio) / SAMPLE_RATE)))
        context = random_context(rng, vocabulary)
        return Example(audio=audio, context=context, words=words, silence=clip["kind"] == "silence", spans=spans)


def cut_at(
    audio: np.ndarray, timed: list[tuple[str, float, float]], cut: float
) -> tuple[np.ndarray, list[str], list[tuple[str, float, float]]]:
    """The first `cut` seconds: the words heard by then, and the spans that began before it."""
    words = [w for w, _, end in timed if end <= cut - HEARD_MARGIN_S]
    spans = [(w, a, min(b, cut)) for w, a, b in timed if a < cut]
    return audio[: int(cut * SAMPLE_RATE)], words, spans


def random_context(rng: np.random.Generator, vocabulary: list[str]) -> str:
    """Earlier text for the system prompt, CONTEXT_FRACTION of the time."""
    if rng.random() < CONTEXT_FRACTION:
        return " ".join(rng.choice(vocabulary, size=int(rng.integers(3, 30))))
    return ""


def nonspeech_example(seconds: float, rng: np.random.Generator, vocabulary: list[str]) -> Example:
    """A fresh non-speech signal of `seconds`: "language None", or the end of text after a given language."""
    audio = random_signal(int(seconds * SAMPLE_RATE), rng)
    given = bool(rng.random() < LANGUAGE_GIVEN_FRACTION)
    context = random_context(rng, vocabulary)
    return Example(audio, context, [], silence=not given, spans=[], language_given=given, streamed=True)


def features(frontend: MelFrontend, example: Example) -> np.ndarray:
    """Log-mel frames of an example: offline, or as the engine computes a live stream's."""
    if not example.streamed:
        return frontend.offline(example.audio)
    return streamed_features(frontend, example.audio, int(EngineConfig.min_step_s * SAMPLE_RATE))


def streamed_features(frontend: MelFrontend, audio: np.ndarray, step: int) -> np.ndarray:
    """What StreamingMel emits for `audio` pushed `step` samples at a time, then flushed.

    Frame values are offline's; each frame is floored with the running
    maximum of the frames emitted up to its push. Computed in one STFT: pushing
    0.5 s at a time costs ten times as much (tests compare the two).
    """
    n_frames = len(audio) // HOP
    if len(audio) <= PAD:
        return np.zeros((frontend.n_mels, n_frames), np.float32)
    raw = frontend.log_mel(np.pad(audio.astype(np.float32), (PAD, PAD), mode="reflect"))[:, :n_frames]
    frame_max = raw.max(axis=0)
    out, start, running = np.empty_like(raw), 0, -np.inf
    # After N samples a stream has emitted the frames whose window lies inside
    # the left-padded audio (and at most N // HOP); the flush emits the rest.
    ends = [min((n - PAD) // HOP + 1, n // HOP) for n in range(step, len(audio), step) if n > PAD] + [n_frames]
    for end in ends:
        if end > start:
            running = max(running, float(frame_max[start:end].max()))
            out[:, start:end] = normalize(raw[:, start:end], running)
            start = end
    return out


def stretch(audio: np.ndarray, factor: float) -> np.ndarray:
    """`audio` played `factor` times as fast (and as high), by linear interpolation."""
    positions = np.arange(int(len(audio) / factor)) * factor
    return np.interp(positions, np.arange(len(audio)), audio).astype(np.float32)
