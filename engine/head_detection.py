"""Alignment-heads detection: which decoder heads track the audio of the word being written.

    python -m engine.head_detection --model M --clips DIR [--out FILE]

Scores every head of a checkpoint on clips with word times (wav + json,
e.g. the corpus's held-out split) and writes the heads file
(engine/heads.py) sorted best first.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.audio import read_audio_file
from engine.batch import EncodeRequest, ForwardBatch
from engine.features import SAMPLE_RATE, MelFrontend
from engine.heads import HEADS_FILE, Head, write_heads_file
from engine.loader import LoadedModel, load_model
from engine.prompt import PromptTemplate
from engine.runner import ModelRunner
from engine.timing import AudioGrid


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
        batch = ForwardBatch.of_rows([0], [0], [layout.ids], [layout.audio_pos], [layout.n_audio])
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
    parser = argparse.ArgumentParser(prog="python -m engine.head_detection",
                                     description="Score every decoder head of a checkpoint on clips with word times")
    parser.add_argument("--model", required=True, help="hub id or checkpoint directory")
    parser.add_argument("--clips", type=Path, required=True, help="folder of .wav + .json with word times")
    parser.add_argument("--language", default="English", help="Qwen language name of the clips")
    parser.add_argument("--out", type=Path, default=None, help=f"default: <model dir>/{HEADS_FILE}")
    parser.add_argument("--max-clips", type=int, default=200)
    parser.add_argument("--tolerance-s", type=float, default=0.1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
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
