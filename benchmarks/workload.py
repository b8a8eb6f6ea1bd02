"""The captioning workload of the capacity benchmark: held-out speech with pauses.

Each stream is ~60 s of held-out sentences (never seen in training) spoken by
the held-out voices (never heard in training), one after another with pauses
of 0.3-3 s between them, over a faint noise floor (a microphone is never
digitally silent). Clips come from the corpus generator (espeak-ng + sox,
level ramps, background noise), synthesised once into a cached pool;
streams are seeded draws from it, so every run and every mode (service,
engine only) streams the same audio.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from engine.features import SAMPLE_RATE
from engine.tiny_tokenizer import read_words
from engine.vad import VadConfig
from training.corpus import HELDOUT_VARIANTS, Job, heldout_sentences, make_clip

REPO = Path(__file__).resolve().parent.parent
POOL_VERSION = 1
# A live microphone's floor: about -74 dBFS of white noise between sentences.
NOISE_FLOOR = 2e-4


@dataclass(frozen=True)
class Utterance:
    """One sentence of a stream, in stream seconds."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Stream:
    samples: np.ndarray  # float32 16 kHz
    utterances: list[Utterance]

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def text(self) -> str:
        return " ".join(u.text for u in self.utterances)


def clip_pool(cache: Path, count: int = 240, workers: int = 2) -> list[tuple[np.ndarray, str]]:
    """Held-out sentences in held-out voices, as (samples, text); cached under `cache`."""
    key = hashlib.sha1(json.dumps([POOL_VERSION, count, HELDOUT_VARIANTS]).encode()).hexdigest()[:10]
    path = cache / f"pool-{key}.npz"
    if path.exists():
        data = np.load(path, allow_pickle=False)
        audio, bounds, texts = data["audio"], data["bounds"], [str(t) for t in data["texts"]]
        return [(audio[a:b].astype(np.float32) / 32767, t) for (a, b), t in zip(bounds, texts)]
    rng = np.random.default_rng(2026)
    jobs = [
        Job(i, "capacity", int(rng.integers(2**31)), text, "words" if i % 2 else "natural", HELDOUT_VARIANTS)
        for i, text in enumerate(heldout_sentences(count, read_words()))
    ]
    with Pool(workers) as pool:
        made = [m for m in pool.map(make_clip, jobs, chunksize=8) if m is not None]
    clips = [(samples, clip.text) for clip, samples in made]
    cache.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(s) for s, _ in clips])
    ends = np.cumsum(lengths)
    np.savez(path, audio=np.concatenate([s for s, _ in clips]), bounds=np.stack([ends - lengths, ends], 1),
             texts=np.array([t for _, t in clips]))
    return [(s.astype(np.float32) / 32767, t) for s, t in clips]


def build_stream(pool: list[tuple[np.ndarray, str]], seed: int, seconds: float = 60.0,
                 pause_s: tuple[float, float] = (0.3, 3.0)) -> Stream:
    """Sentences drawn from `pool` with pauses between them until the stream lasts `seconds`."""
    rng = np.random.default_rng(seed)
    pieces, utterances, t = [], [], 0
    order = rng.permutation(len(pool))
    for index in order:
        samples, text = pool[int(index)]
        if pieces:
            gap = int(rng.uniform(*pause_s) * SAMPLE_RATE)
            pieces.append(np.zeros(gap, np.float32))
            t += gap
        pieces.append(samples)
        utterances.append(Utterance(text, t / SAMPLE_RATE, (t + len(samples)) / SAMPLE_RATE))
        t += len(samples)
        if t >= seconds * SAMPLE_RATE:
            break
    audio = np.concatenate(pieces)
    audio = audio + rng.standard_normal(len(audio)).astype(np.float32) * NOISE_FLOOR
    return Stream(np.clip(audio, -1.0, 1.0).astype(np.float32), utterances)


def build_streams(n: int, seconds: float = 60.0, cache: Path = REPO / "artifacts" / "capacity") -> list[Stream]:
    pool = clip_pool(cache)
    return [build_stream(pool, seed=1000 + i, seconds=seconds) for i in range(n)]


def utterance_final(words: list[dict], utterances: list[Utterance], slack_s: float = 0.3) -> list[bool]:
    """Per committed word: is it the last word committed inside its utterance?

    A word belongs to the utterance whose span (widened by `slack_s`) holds its
    start; the last such word is the one a pause follows.
    """
    owner = []
    for word in words:
        inside = [i for i, u in enumerate(utterances) if u.start - slack_s <= word["start"] <= u.end + slack_s]
        owner.append(inside[0] if inside else -1)
    return [o >= 0 and (i + 1 == len(owner) or owner[i + 1] != o) for i, o in enumerate(owner)]


def vad_config(spec: str | None) -> VadConfig:
    """The gate's defaults with some fields set, from "endpoint_s=0.3,pad_s=0.1" (the --vad-set option)."""
    if not spec:
        return VadConfig()
    fields = {f.name: f.type for f in dataclasses.fields(VadConfig)}
    values = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        if name not in fields:
            raise SystemExit(f"--vad-set: {name!r} is not one of {sorted(fields)}")
        values[name] = value.lower() == "true" if fields[name] in (bool, "bool") else float(value)
    return VadConfig(**values)
