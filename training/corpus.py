"""Synthetic English speech over our word list, made with espeak-ng and sox.

    python -m training.corpus --out artifacts/corpus [--train 24000] [--heldout 240]

Two kinds of clips, 1-12 s:

* natural: a sentence spoken in one espeak-ng call (natural prosody);
* words: the words of a sentence spoken separately (SSML breaks), cut at
  the silences and joined with random short gaps, which gives exact word
  start/end times (used for lag and timestamp figures).

Every clip draws a voice (dialect x variant), a speed, a pitch, a level
(with a ramp: the level changes within the clip), background noise at a
random SNR and some leading/trailing noise. A few clips are noise only (the
model should write "language None"). The held-out split uses sentences that
never occur in training and includes voices never used in training.

Output per split: `audio.i16` (all clips, 16 kHz int16, concatenated) and
`manifest.jsonl` (one line per clip: id, kind, text, voice, offset, samples,
and words with times for "words" clips). `--wav` also writes each held-out
clip as a .wav with a .json reference next to it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from engine.features import SAMPLE_RATE
from engine.tiny_tokenizer import read_words

DIALECTS = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-gb-scotland", "en-029")
# Every espeak-ng voice variant (Debian espeak-ng 1.51) except the held-out
# ones: with the first 36 of these, held-out WER on unseen voices was twice
# the WER on training voices, so voice variety is what the model lacks most.
TRAIN_VARIANTS = (
    "", "m1", "m2", "m3", "m4", "m5", "m6", "m8", "f1", "f2", "f3", "f4", "klatt", "klatt2", "klatt4",
    "Alex", "Andy", "adam", "belinda", "benjamin", "caleb", "david", "edward", "john", "linda", "max",
    "paul", "robert", "steph", "travis", "victor", "Annie", "aunty", "boris", "iven", "michel",
    "Alicia", "Andrea", "AnxiousAndy", "Demonic", "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo",
    "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "RicishayMax", "RicishayMax2",
    "RicishayMax3", "Storm", "Tweaky", "UniRobot", "anika", "anikaRobot", "announcer", "antonio", "croak",
    "ed", "edward2", "fast", "grandma", "grandpa", "gustave", "iven2", "iven3", "iven4", "kaukovalta",
    "klatt3", "klatt5", "klatt6", "marcelo", "miguel", "norbert", "pablo", "pedro", "quincy", "rob",
    "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7", "robosoft8",
    "sandro", "steph2", "steph3", "whisper", "whisperf", "zac",
)
# Voices never heard in training.
HELDOUT_VARIANTS = ("m7", "f5", "shelby")
MIN_S, MAX_S = 1.0, 12.0
# Silences longer than this inside a separately spoken word do not occur.
WORD_GAP_S = 0.2
SILENCE_FRACTION = 0.03
# Word-boundary clips: the words are spoken apart with this break.
BREAK_MS = 400


@dataclass
class WordSpan:
    text: str
    start: float
    end: float


@dataclass
class Clip:
    """One synthetic utterance and how it was made."""

    id: str
    kind: str  # natural | words | silence
    text: str
    voice: str
    speed: int
    pitch: int
    snr_db: float | None
    samples: int = 0
    offset: int = 0
    words: list[WordSpan] = field(default_factory=list)


def sentence(rng: np.random.Generator, words: list[str]) -> str:
    """A random word sequence whose spoken length is mostly 1-12 s."""
    return " ".join(rng.choice(words, size=int(rng.integers(2, 24))))


def synthesize(text: str, voice: str, speed: int, pitch: int, ssml: bool = False) -> np.ndarray:
    """espeak-ng speech resampled by sox to 16 kHz mono float32."""
    espeak = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout"] + (["-m"] if ssml else [])
    wav = subprocess.run(espeak + [text], capture_output=True, check=True).stdout
    raw = subprocess.run(
        ["sox", "-t", "wav", "-", "-r", str(SAMPLE_RATE), "-c", "1", "-t", "raw", "-e", "signed", "-b", "16", "-"],
        input=wav,
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768.0


def speech_runs(x: np.ndarray, merge_gap_s: float) -> list[tuple[int, int]]:
    """Sample ranges of sound, merging runs separated by less than merge_gap_s."""
    win = int(0.01 * SAMPLE_RATE)
    energy = np.sqrt(np.convolve(x**2, np.ones(win) / win, mode="same"))
    active = energy > 0.02 * max(float(energy.max()), 1e-6)
    edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
    runs = list(zip(np.where(edges == 1)[0], np.where(edges == -1)[0]))
    merged: list[tuple[int, int]] = []
    for start, end in runs:
        if merged and start - merged[-1][1] < merge_gap_s * SAMPLE_RATE:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def words_clip(text: str, voice: str, speed: int, pitch: int, rng: np.random.Generator) -> tuple[np.ndarray, list[WordSpan]] | None:
    """Speak the words apart, then join them with short gaps; None if the cut fails."""
    words = text.split()
    ssml = f' <break time="{BREAK_MS}ms"/> '.join(words)
    x = synthesize(ssml, voice, speed, pitch, ssml=True)
    runs = speech_runs(x, WORD_GAP_S)
    if len(runs) != len(words):
        return None
    pieces, spans, t = [], [], 0
    for word, (start, end) in zip(words, runs):
        gap = np.zeros(int(rng.uniform(0.03, 0.3) * SAMPLE_RATE), np.float32) if pieces else np.zeros(0, np.float32)
        pieces += [gap, x[start:end]]
        t += len(gap)
        spans.append(WordSpan(word, t / SAMPLE_RATE, (t + end - start) / SAMPLE_RATE))
        t += end - start
    return np.concatenate(pieces), spans


def augment(x: np.ndarray, rng: np.random.Generator, snr_db: float | None) -> tuple[np.ndarray, float]:
    """Pad with noise, ramp the level, add background noise. Returns (audio, lead seconds)."""
    lead = rng.uniform(0.0, 0.5)
    trail = rng.uniform(0.1, 0.6)
    x = np.concatenate([np.zeros(int(lead * SAMPLE_RATE), np.float32), x, np.zeros(int(trail * SAMPLE_RATE), np.float32)])
    peak = float(np.abs(x).max()) or 1.0
    start_db, end_db = rng.uniform(-26, -1, size=2)
    ramp = 10 ** (np.linspace(start_db, end_db, len(x)) / 20)
    x = x / peak * ramp
    if snr_db is not None:
        power = float(np.mean(x**2)) or 1e-8
        noise = rng.standard_normal(len(x))
        if rng.random() < 0.5:
            # Brown-ish noise: integrated white noise, high-passed by its mean.
            noise = np.cumsum(noise)
            noise -= np.convolve(noise, np.ones(400) / 400, mode="same")
        noise *= np.sqrt(power / (np.mean(noise**2) + 1e-12) / 10 ** (snr_db / 10))
        x = x + noise.astype(np.float32)
    return np.clip(x, -1.0, 1.0).astype(np.float32), lead


@dataclass(frozen=True)
class Job:
    index: int
    split: str
    seed: int
    text: str
    kind: str
    variants: tuple[str, ...]


def make_clip(job: Job) -> tuple[Clip, np.ndarray] | None:
    """Synthesise one clip (runs in a worker process)."""
    rng = np.random.default_rng(job.seed)
    variant = str(rng.choice(job.variants))
    voice = str(rng.choice(DIALECTS)) + (f"+{variant}" if variant else "")
    speed, pitch = int(rng.integers(120, 230)), int(rng.integers(20, 80))
    snr = None if rng.random() < 0.15 else float(rng.uniform(8, 40))
    clip = Clip(f"{job.split}-{job.index:06d}", job.kind, job.text, voice, speed, pitch, snr)
    if job.kind == "silence":
        x, lead = augment(np.zeros(int(rng.uniform(0.5, 3.0) * SAMPLE_RATE), np.float32), rng, float(rng.uniform(0, 30)))
        clip.text = ""
    elif job.kind == "words":
        made = words_clip(job.text, voice, speed, pitch, rng)
        if made is None:
            return None
        x, spans = made
        x, lead = augment(x, rng, snr)
        clip.words = [WordSpan(s.text, round(s.start + lead, 3), round(s.end + lead, 3)) for s in spans]
    else:
        x, lead = augment(synthesize(job.text, voice, speed, pitch), rng, snr)
    seconds = len(x) / SAMPLE_RATE
    if not MIN_S <= seconds <= MAX_S and job.kind != "silence":
        return None
    clip.samples = len(x)
    return clip, (x * 32767).astype(np.int16)


def jobs(split: str, count: int, seed: int, sentences: Iterator[str], variants: tuple[str, ...]) -> Iterator[Job]:
    rng = np.random.default_rng(seed)
    for index in range(count):
        roll = rng.random()
        kind = "silence" if roll < SILENCE_FRACTION else ("words" if roll < 0.5 else "natural")
        yield Job(index, split, int(rng.integers(2**31)), next(sentences), kind, variants)


def heldout_sentences(count: int, words: list[str]) -> list[str]:
    rng = np.random.default_rng(12345)
    return [sentence(rng, words) for _ in range(count)]


def write_split(out: Path, split: str, job_list: list[Job], workers: int, wav: bool) -> int:
    """Synthesise a split into out/split; returns the number of clips written."""
    target = out / split
    target.mkdir(parents=True, exist_ok=True)
    offset, written = 0, 0
    with open(target / "audio.i16", "wb") as audio, open(target / "manifest.jsonl", "w") as manifest, Pool(workers) as pool:
        for made in pool.imap(make_clip, job_list, chunksize=16):
            if made is None:
                continue
            clip, samples = made
            clip.offset = offset
            audio.write(samples.tobytes())
            offset += len(samples)
            manifest.write(json.dumps(asdict(clip)) + "\n")
            if wav:
                import soundfile

                soundfile.write(str(target / f"{clip.id}.wav"), samples, SAMPLE_RATE, subtype="PCM_16")
                (target / f"{clip.id}.json").write_text(json.dumps(asdict(clip)))
            written += 1
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.corpus", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=24000)
    parser.add_argument("--heldout", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--wav", action="store_true", help="also write held-out clips as wav + json")
    args = parser.parse_args(argv)
    words = read_words()
    held = heldout_sentences(args.heldout, words)
    held_set = set(held)
    rng = np.random.default_rng(args.seed)

    def train_sentences() -> Iterator[str]:
        while True:
            text = sentence(rng, words)
            if text not in held_set:
                yield text

    # Half of the held-out clips use unseen voices, half the training voices.
    held_jobs = list(jobs("heldout", args.heldout, args.seed + 1, iter(held), HELDOUT_VARIANTS))
    held_jobs = [
        j if j.index % 2 == 0 else Job(j.index, j.split, j.seed, j.text, j.kind, TRAIN_VARIANTS) for j in held_jobs
    ]
    n = write_split(args.out, "heldout", held_jobs, args.workers, args.wav)
    print(f"heldout: {n} clips")
    n = write_split(args.out, "train", list(jobs("train", args.train, args.seed + 2, train_sentences(), TRAIN_VARIANTS)), args.workers, False)
    print(f"train: {n} clips")


if __name__ == "__main__":
    main()
