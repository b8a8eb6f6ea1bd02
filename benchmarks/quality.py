"""Quality harness: WER, word lag, timestamp error and speed, offline vs streaming.

    .venv/bin/python benchmarks/quality.py --model models/tiny-en --clips artifacts/corpus/heldout
    .venv/bin/python benchmarks/quality.py ... --border-s 0.3 --min-step-s 0.4 --chunk-ms 100
    .venv/bin/python benchmarks/quality.py ... --sweep border_s=0.2,0.3,0.4,0.6

`--clips` is a folder of .wav files, each with a .json reference: {"text":
...} and, for clips with exact word boundaries, "words": [{"text", "start",
"end"}] (training.corpus --wav writes such folders). Every clip is decoded
offline and as a simulated live stream through the engine CLI's code path
(engine.transcribe.transcribe_file). Printed figures:

* WER: word error rate (jiwer) over all clips, offline and streaming;
* word lag: for streaming words matched to reference words with known
  times, commit time (`emitted_at`: how much audio had been fed) minus the
  reference word's end; median and 90th percentile;
* start/end error: |word start - reference start| and the same for ends,
  median over matched words;
* RTF: compute seconds per audio second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import jiwer
import numpy as np

from engine.config import EngineConfig
from engine.loader import load_model
from engine.policy import PolicyConfig
from engine.transcribe import Transcription, transcribe_file


@dataclass
class Reference:
    path: Path
    text: str
    words: list[dict]


@dataclass
class Figures:
    refs: list[str] = field(default_factory=list)
    hyps: list[str] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    start_errors: list[float] = field(default_factory=list)
    end_errors: list[float] = field(default_factory=list)
    audio_s: float = 0.0
    compute_s: float = 0.0

    def add(self, ref: Reference, result: Transcription) -> None:
        self.refs.append(ref.text or "<silence>")
        hyp_words = [w for w, _ in result.words]
        self.hyps.append(" ".join(w.text for w in hyp_words) or "<silence>")
        self.audio_s += result.audio_s
        self.compute_s += result.compute_s
        if not ref.words or not hyp_words:
            return
        matched = jiwer.process_words(" ".join(w["text"] for w in ref.words), " ".join(w.text for w in hyp_words))
        for chunk in matched.alignments[0]:
            if chunk.type != "equal":
                continue
            for offset in range(chunk.ref_end_idx - chunk.ref_start_idx):
                truth = ref.words[chunk.ref_start_idx + offset]
                word, emitted_at = result.words[chunk.hyp_start_idx + offset]
                self.lags.append(emitted_at - truth["end"])
                self.start_errors.append(abs(word.start - truth["start"]))
                self.end_errors.append(abs(word.end - truth["end"]))

    @property
    def wer(self) -> float:
        return float(jiwer.wer(self.refs, self.hyps))


def load_references(folder: Path, limit: int) -> list[Reference]:
    refs = []
    for meta_path in sorted(folder.glob("*.json"))[:limit]:
        meta = json.loads(meta_path.read_text())
        refs.append(Reference(meta_path.with_suffix(".wav"), meta.get("text", ""), meta.get("words") or []))
    if not refs:
        raise SystemExit(f"{folder}: no .json references")
    return refs


def parse_like(value: str, current: object) -> object:
    """A sweep value as the type of the field's current value."""
    if isinstance(current, bool):
        if value.lower() not in ("true", "false"):
            raise SystemExit(f"{value!r}: expected true or false")
        return value.lower() == "true"
    return type(current)(value)


def pct(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.2f}" if values else "-"


def run(model, cfg: EngineConfig, refs: list[Reference], chunk_ms: float, language: str | None) -> dict[str, Figures]:
    out = {"offline": Figures(), "streaming": Figures()}
    for ref in refs:
        for mode, figures in out.items():
            result = transcribe_file(ref.path, model, cfg, chunk_ms, mode == "offline", language)
            figures.add(ref, result)
    return out


def table(title: str, figures: dict[str, Figures]) -> str:
    off, on = figures["offline"], figures["streaming"]
    ratio = on.wer / off.wer if off.wer else float("nan")
    rows = [
        ("WER", f"{100 * off.wer:.1f}%", f"{100 * on.wer:.1f}%  ({ratio:.2f}x offline)"),
        ("word lag p50 / p90 (s)", "-", f"{pct(on.lags, 50)} / {pct(on.lags, 90)}"),
        ("start error p50 (s)", pct(off.start_errors, 50), pct(on.start_errors, 50)),
        ("end error p50 (s)", pct(off.end_errors, 50), pct(on.end_errors, 50)),
        ("RTF", f"{off.compute_s / off.audio_s:.3f}", f"{on.compute_s / on.audio_s:.3f}"),
        ("timed words matched", str(len(off.lags)), str(len(on.lags))),
    ]
    lines = [title, f"  {'':24s} {'offline':>12s}   {'streaming'}"]
    lines += [f"  {name:24s} {a:>12s}   {b}" for name, a, b in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny-en")
    parser.add_argument("--clips", type=Path, required=True)
    parser.add_argument("--max-clips", type=int, default=1000)
    parser.add_argument("--language", default="auto")
    parser.add_argument("--chunk-ms", type=float, default=100.0)
    parser.add_argument("--border-s", type=float, default=PolicyConfig.border_s)
    parser.add_argument("--rewind-s", type=float, default=PolicyConfig.rewind_s)
    parser.add_argument("--min-step-s", type=float, default=EngineConfig.min_step_s)
    parser.add_argument("--heads", default=None)
    parser.add_argument("--sweep", default=None, help="one engine/policy field and values, e.g. border_s=0.2,0.4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 (the model is loaded once)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, force=True)
    model = load_model(args.model, args.device, args.dtype)
    refs = load_references(args.clips, args.max_clips)
    cfg = EngineConfig(
        model=args.model, device=args.device, alignment_heads=args.heads, min_step_s=args.min_step_s,
        policy=PolicyConfig(border_s=args.border_s, rewind_s=args.rewind_s),
    )
    language = None if args.language == "auto" else args.language
    print(f"{len(refs)} clips from {args.clips}, {sum(bool(r.words) for r in refs)} with word times; "
          f"model {args.model} ({model.dtype})")
    if args.sweep is None:
        print(table(f"chunk {args.chunk_ms:.0f} ms, min step {cfg.min_step_s} s, {cfg.policy}", run(model, cfg, refs, args.chunk_ms, language)))
        return
    name, values = args.sweep.split("=")
    for value in values.split(","):
        if hasattr(cfg.policy, name):
            policy = dataclasses.replace(cfg.policy, **{name: parse_like(value, getattr(cfg.policy, name))})
            trial = cfg.replace(policy=policy)
        else:
            trial = cfg.replace(**{name: parse_like(value, getattr(cfg, name))})
        print(table(f"{name} = {value}", run(model, trial, refs, args.chunk_ms, language)))


if __name__ == "__main__":
    main()
