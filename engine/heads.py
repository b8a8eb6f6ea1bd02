"""Alignment heads: which decoder self-attention heads track the audio.

A heads file is JSON, sorted best first:

    {"model": "...", "heads": [{"layer": 9, "head": 3, "score": 0.93}, ...]}

The engine uses the first `max_heads` entries. Without a file it uses the
documented default: every head of the layers in the third quarter of the
decoder (layers L/2 .. 3L/4 - 1), at most `max_heads` of them. That default is
a guess, good enough to run; `python -m engine.heads detect` measures the real
ones for a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.loader import LoadedModel, ModelSpec

log = logging.getLogger(__name__)

HEADS_FILE = "alignment_heads.json"

Head = tuple[int, int]


def default_heads(spec: ModelSpec, max_heads: int) -> list[Head]:
    """The documented default set (see module docstring)."""
    first, stop = spec.n_layers // 2, max(spec.n_layers // 2 + 1, 3 * spec.n_layers // 4)
    heads = [(layer, head) for layer in range(first, stop) for head in range(spec.n_heads)]
    return heads[:max_heads]


def read_heads_file(path: Path, spec: ModelSpec) -> list[Head]:
    """All heads of a heads file in its order; raises ValueError on a bad file."""
    data = json.loads(path.read_text())
    heads = [(int(h["layer"]), int(h["head"])) for h in data["heads"]]
    for layer, head in heads:
        if not (0 <= layer < spec.n_layers and 0 <= head < spec.n_heads):
            raise ValueError(f"{path}: head ({layer}, {head}) outside a {spec.n_layers}x{spec.n_heads} decoder")
    if not heads:
        raise ValueError(f"{path}: no heads listed")
    return heads


def resolve_heads(
    explicit: str | None, model_dir: Path | None, spec: ModelSpec, max_heads: int
) -> tuple[list[Head], str]:
    """Heads to use and where they came from: explicit file, model dir file, or default."""
    if explicit:
        return read_heads_file(Path(explicit), spec)[:max_heads], explicit
    if model_dir is not None and (model_dir / HEADS_FILE).exists():
        path = model_dir / HEADS_FILE
        return read_heads_file(path, spec)[:max_heads], str(path)
    log.warning("no %s for this model: using the default heads guess (run engine.heads detect)", HEADS_FILE)
    return default_heads(spec, max_heads), "default"


def write_heads_file(path: Path, model: str, scored: list[tuple[Head, float]], meta: dict) -> None:
    """Write heads sorted by score, best first."""
    ordered = sorted(scored, key=lambda item: -item[1])
    header = json.dumps({"model": model, **meta}, indent=1)[:-2]
    heads = ",\n".join(
        "  " + json.dumps({"layer": l, "head": h, "score": round(s, 4)}) for (l, h), s in ordered
    )
    path.write_text(f'{header},\n "heads": [\n{heads}\n ]\n}}\n')


# ---------------------------------------------------------------- detection
@dataclass(frozen=True)
class TimedWord:
    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Detection:
    """Per-head hit rates (the fraction of tokens whose argmax falls on their word)."""

    scores: dict[Head, float]
    tokens: int
    clips: int
    random_baseline: float


def load_timed_clips(folder: Path, limit: int) -> list[tuple[np.ndarray, list[TimedWord]]]:
    """wav + json pairs with word times ({"words": [{"text", "start", "end"}]})."""
    from engine.audio import read_audio_file

    clips = []
    for meta_path in sorted(folder.glob("*.json")):
        meta = json.loads(meta_path.read_text())
        words = [TimedWord(w["text"], float(w["start"]), float(w["end"])) for w in meta.get("words") or []]
        wav = meta_path.with_suffix(".wav")
        if words and wav.exists():
            clips.append((read_audio_file(wav), words))
        if len(clips) >= limit:
            break
    if not clips:
        raise ValueError(f"{folder}: no .wav clips with word times (.json with 'words') found")
    return clips


def detect(model: LoadedModel, clips: list[tuple[np.ndarray, list[TimedWord]]], language: str, tolerance_s: float) -> Detection:
    """Score every decoder head by how often its audio argmax lands on the word being decoded."""
    from engine.features import SAMPLE_RATE, MelFrontend
    from engine.prompt import PromptTemplate
    from engine.runner import EncodeRequest, ForwardBatch, ModelRunner
    from engine.timing import AudioGrid

    spec, tokenizer = model.spec, model.tokenizer
    grid = AudioGrid.from_spec(spec.n_window, spec.n_window_infer)
    template = PromptTemplate.from_tokenizer(tokenizer, model.chat_template, spec.audio_token_id)
    frontend = MelFrontend(model.mel_filters)
    longest = max(grid.tokens(len(samples) // 160) for samples, _ in clips)
    runner = ModelRunner(model, [], n_slots=1, max_len=longest + 1024, max_audio_tokens=longest)
    hits = np.zeros((spec.n_layers, spec.n_heads))
    tokens, chance = 0, 0.0
    for samples, words in clips:
        mel = frontend.offline(samples)
        (embeds,) = runner.encode([EncodeRequest(mel)])
        runner.store_audio(0, 0, embeds)
        ids, word_of = [], []
        for j, word in enumerate(words):
            piece = tokenizer.encode((" " if j else "") + word.text, add_special_tokens=False)
            ids += piece
            word_of += [j] * len(piece)
        layout = template.build([], embeds.shape[0], list(template.language_prefix(language)) + ids)
        batch = ForwardBatch(
            slots=np.array([0]), start=np.array([0]), ids=np.array([layout.ids]), lengths=np.array([len(layout.ids)]),
            audio_pos=np.array([layout.audio_pos]), n_audio=np.array([layout.n_audio]),
        )
        probe = runner.forward(batch, probe=True).probe[0]
        first = len(layout.ids) - len(ids)
        duration = len(samples) / SAMPLE_RATE
        for i, j in enumerate(word_of):
            # The query one position earlier is the one that produces token i.
            times = grid.token_time(probe[first + i - 1].astype(np.float64))
            word = words[j]
            hits += (times >= word.start - tolerance_s) & (times <= word.end + tolerance_s)
            chance += min(1.0, (word.end - word.start + 2 * tolerance_s) / duration)
        tokens += len(ids)
    scores = {(l, h): float(hits[l, h] / tokens) for l in range(spec.n_layers) for h in range(spec.n_heads)}
    return Detection(scores=scores, tokens=tokens, clips=len(clips), random_baseline=chance / tokens)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engine.heads", description="Alignment heads of a checkpoint")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("detect", help="score every decoder head on clips with word times")
    cmd.add_argument("--model", required=True, help="hub id or checkpoint directory")
    cmd.add_argument("--clips", type=Path, required=True, help="folder of .wav + .json with word times")
    cmd.add_argument("--language", default="English", help="Qwen language name of the clips")
    cmd.add_argument("--out", type=Path, default=None, help=f"default: <model dir>/{HEADS_FILE}")
    cmd.add_argument("--max-clips", type=int, default=200)
    cmd.add_argument("--tolerance-s", type=float, default=0.1)
    cmd.add_argument("--device", default="auto")
    cmd.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
    from engine.loader import load_model

    model = load_model(args.model, args.device, args.dtype)
    found = detect(model, load_timed_clips(args.clips, args.max_clips), args.language, args.tolerance_s)
    out = args.out or ((model.directory or Path(".")) / HEADS_FILE)
    meta = {
        "method": "fraction of transcript tokens whose audio argmax lies on their word (+- tolerance)",
        "tolerance_s": args.tolerance_s,
        "clips": found.clips,
        "tokens": found.tokens,
        "random_baseline": round(found.random_baseline, 4),
    }
    write_heads_file(out, model.name, list(found.scores.items()), meta)
    best = sorted(found.scores.items(), key=lambda item: -item[1])[:8]
    print(f"wrote {out}: {found.tokens} tokens in {found.clips} clips, random baseline {found.random_baseline:.3f}")
    for (layer, head), score in best:
        print(f"  layer {layer:2d} head {head:2d}: {score:.3f}")


if __name__ == "__main__":
    main()
