"""Quality harness: WER, word lag, timestamp error and speed, offline vs streaming.

    .venv/bin/python benchmarks/quality.py --model models/tiny-en --clips artifacts/corpus/heldout
    .venv/bin/python benchmarks/quality.py ... --border-s 0.3 --min-step-s 0.4 --chunk-ms 100
    .venv/bin/python benchmarks/quality.py ... --sweep border_s=0.2,0.3,0.4,0.6
    .venv/bin/python benchmarks/quality.py ... --vad [--vad-set endpoint_s=0.3,pad_s=0.1]

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

--vad adds a column: streaming through the service's voice activity gate
(engine/vad.py), in the same run as the ungated streaming column; each
--vad-set (its settings changed) adds another.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jiwer
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.workload import vad_config  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from engine.loader import load_model  # noqa: E402
from engine.policy import PolicyConfig  # noqa: E402
from engine.transcribe import Transcription, transcribe_file  # noqa: E402
from engine.vad import VadConfig  # noqa: E402


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


def run(model, cfg: EngineConfig, refs: list[Reference], chunk_ms: float, language: str | None,
        vads: dict[str, VadConfig] | None = None) -> dict[str, Figures]:
    modes: dict[str, tuple[bool, VadConfig | None]] = {"offline": (True, None), "streaming": (False, None)}
    for name, vad in (vads or {}).items():
        modes[name] = (False, vad)
    out = {mode: Figures() for mode in modes}
    for ref in refs:
        for mode, (offline, gate) in modes.items():
            result = transcribe_file(ref.path, model, cfg, chunk_ms, offline, language, vad=gate)
            out[mode].add(ref, result)
    return out


def table(title: str, figures: dict[str, Figures]) -> str:
    off = figures["offline"]
    columns = [mode for mode in figures if mode != "offline"]

    def wer(f: Figures) -> str:
        return f"{100 * f.wer:.1f}%  ({f.wer / off.wer if off.wer else float('nan'):.2f}x)"

    rows = [
        ("WER (x offline)", f"{100 * off.wer:.1f}%", [wer(figures[m]) for m in columns]),
        ("word lag p50 / p90 (s)", "-", [f"{pct(figures[m].lags, 50)} / {pct(figures[m].lags, 90)}" for m in columns]),
        ("start error p50 (s)", pct(off.start_errors, 50), [pct(figures[m].start_errors, 50) for m in columns]),
        ("end error p50 (s)", pct(off.end_errors, 50), [pct(figures[m].end_errors, 50) for m in columns]),
        ("RTF", f"{off.compute_s / off.audio_s:.3f}", [f"{figures[m].compute_s / figures[m].audio_s:.3f}" for m in columns]),
        ("timed words matched", str(len(off.lags)), [str(len(figures[m].lags)) for m in columns]),
    ]
    lines = [title] + [f"  column {i + 1}: {m}" for i, m in enumerate(columns)]
    lines.append(f"  {'':24s} {'offline':>12s}   " + "".join(f"{'(' + str(i + 1) + ')':22s}" for i in range(len(columns))))
    lines += [f"  {name:24s} {a:>12s}   " + "".join(f"{b:22s}" for b in bs) for name, a, bs in rows]
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
    parser.add_argument("--vad", action="store_true", help="also streaming through the voice activity gate")
    parser.add_argument("--vad-set", action="append", default=None,
                        help="with --vad: gate settings, e.g. endpoint_s=0.3,pad_s=0.1 (again: another column)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, force=True)
    model = load_model(args.model, args.device, args.dtype)
    refs = load_references(args.clips, args.max_clips)
    cfg = EngineConfig(
        model=args.model, device=args.device, alignment_heads=args.heads, min_step_s=args.min_step_s,
        policy=PolicyConfig(border_s=args.border_s, rewind_s=args.rewind_s),
    )
    language = None if args.language == "auto" else args.language
    specs = args.vad_set or [""]
    vad = {f"VAD {spec or 'defaults'}": vad_config(spec) for spec in specs} if args.vad else None
    print(f"{len(refs)} clips from {args.clips}, {sum(bool(r.words) for r in refs)} with word times; "
          f"model {args.model} ({model.dtype})")
    if args.sweep is None:
        print(table(f"chunk {args.chunk_ms:.0f} ms, min step {cfg.min_step_s} s, {cfg.policy}", run(model, cfg, refs, args.chunk_ms, language, vad)))
        return
    name, values = args.sweep.split("=")
    for value in values.split(","):
        if hasattr(cfg.policy, name):
            policy = dataclasses.replace(cfg.policy, **{name: parse_like(value, getattr(cfg.policy, name))})
            trial = cfg.replace(policy=policy)
        else:
            trial = cfg.replace(**{name: parse_like(value, getattr(cfg, name))})
        print(table(f"{name} = {value}", run(model, trial, refs, args.chunk_ms, language, vad)))


if __name__ == "__main__":
    main()
