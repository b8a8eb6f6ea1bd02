"""Transcribe a file as a simulated live stream (or offline) and print words.

    python -m engine.transcribe FILE.wav --model DIR_OR_ID [--language en]
                                [--chunk-ms 100] --jsonl [--offline] [--vad]

Streaming mode feeds FILE in chunks of --chunk-ms and, after each chunk,
runs the engine until it has nothing left to do (a stream only decodes once
min_step_s of new audio is in): the model keeps up with the stream,
and prints every committed word as it is committed:
{"text", "start", "end", "emitted_at"} (seconds of audio; emitted_at is how
much of the stream had been fed). --offline feeds the whole file and decodes
it in one final pass, the reference for streaming. A last line
{"type": "summary", ...} gives audio_s, compute_s, words, rtf, text, language.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.audio import read_audio_file
from engine.config import EngineConfig
from engine.errors import EngineError
from engine.events import ErrorEvent, FinalEvent, WordsEvent
from engine.features import SAMPLE_RATE
from engine.loader import LoadedModel, load_model
from engine.policy import PolicyConfig
from engine.core import Engine, available_cpus, set_threads
from engine.transcript import Word
from engine.vad import GateState, VadConfig, VadGate, feed_pieces, flush

STREAM_ID = "cli"


@dataclass
class Transcription:
    """Words of one file with their commit times, and cost figures."""

    words: list[tuple[Word, float]] = field(default_factory=list)
    audio_s: float = 0.0
    compute_s: float = 0.0
    # Of compute_s, the voice activity gate's share (the service runs it in the ingest, batched).
    vad_s: float = 0.0
    language: str | None = None

    @property
    def text(self) -> str:
        return " ".join(w.text for w, _ in self.words)

    def summary(self, mode: str) -> dict:
        return {
            "type": "summary",
            "mode": mode,
            "audio_s": round(self.audio_s, 3),
            "compute_s": round(self.compute_s, 3),
            "vad_s": round(self.vad_s, 3),
            "rtf": round(self.compute_s / self.audio_s, 4) if self.audio_s else None,
            "words": len(self.words),
            "language": self.language,
            "text": self.text,
        }


def offline_config(base: EngineConfig, audio_s: float) -> EngineConfig:
    """A one-stream config whose buffer holds the whole clip, decoded in one final step."""
    span = max(audio_s + 1.0, base.min_step_s)
    return base.replace(
        max_streams=1, max_batch=1, max_buffer_s=span, max_step_s=span, max_backlog_s=span, max_chunk_s=span
    )


def _collect(out: Transcription, events: list, on_word) -> bool:
    """Record events of the CLI stream; True once it has finished."""
    for event in events:
        if isinstance(event, ErrorEvent):
            raise EngineError(f"stream failed: {event.code}: {event.message}")
        if isinstance(event, WordsEvent | FinalEvent):
            out.language = event.language or out.language
            for word in event.words:
                out.words.append((word, event.emitted_at))
                on_word(word, event.emitted_at)
            if isinstance(event, FinalEvent):
                return True
    return False


def transcribe(
    engine: Engine, samples: np.ndarray, chunk_ms: float, language: str | None, on_word=lambda w, t: None,
    vad: VadConfig | None = None,
) -> Transcription:
    """Stream `samples` through `engine` in chunks of `chunk_ms` (use a huge chunk for offline).

    With `vad`, each chunk goes through the voice activity gate first, as in the service.
    """
    out = Transcription(audio_s=len(samples) / SAMPLE_RATE)
    engine.open(STREAM_ID, language)
    chunk = max(1, int(chunk_ms * SAMPLE_RATE / 1000))
    gate, state = (VadGate(vad), GateState()) if vad is not None else (None, None)
    started = time.perf_counter()
    for begin in range(0, len(samples), chunk):
        if gate is None:
            engine.feed(STREAM_ID, samples[begin : begin + chunk])
        else:
            gated = time.perf_counter()
            (pieces,) = gate.process([(state, samples[begin : begin + chunk])])
            out.vad_s += time.perf_counter() - gated
            feed_pieces(engine, STREAM_ID, pieces)
        while engine.has_work():
            _collect(out, engine.step().events, on_word)
    if gate is not None:
        feed_pieces(engine, STREAM_ID, flush(state))
    engine.end(STREAM_ID)
    while not _collect(out, engine.step().events, on_word):
        pass
    out.compute_s = time.perf_counter() - started
    return out


def transcribe_file(
    path: Path, model: LoadedModel, cfg: EngineConfig, chunk_ms: float, offline: bool, language: str | None,
    on_word=lambda w, t: None, vad: VadConfig | None = None,
) -> Transcription:
    """Transcribe one file with an engine of its own (`vad`: streaming only)."""
    samples = read_audio_file(path)
    if offline:
        cfg = offline_config(cfg, len(samples) / SAMPLE_RATE)
        chunk_ms = 1000.0 * (len(samples) / SAMPLE_RATE + 1.0)
        vad = None
    else:
        cfg = cfg.replace(max_streams=1, max_batch=1)
    return transcribe(Engine(cfg, model), samples, chunk_ms, language, on_word, vad)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engine.transcribe", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--model", required=True, help="hub id or checkpoint directory")
    parser.add_argument("--language", default=None, help="auto (default), a code such as en, or a name")
    parser.add_argument("--chunk-ms", type=float, default=100.0)
    parser.add_argument("--jsonl", action="store_true", help="one JSON object per word, then a summary")
    parser.add_argument("--offline", action="store_true", help="decode the whole file at once")
    parser.add_argument("--vad", action="store_true",
                        help="streaming: gate the audio with the service's voice activity detection first")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--heads", default=None, help="alignment heads JSON (default: the model's)")
    parser.add_argument("--border-s", type=float, default=PolicyConfig.border_s)
    parser.add_argument("--rewind-s", type=float, default=PolicyConfig.rewind_s)
    parser.add_argument("--min-step-s", type=float, default=EngineConfig.min_step_s)
    parser.add_argument("--max-step-s", type=float, default=EngineConfig.max_step_s)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the CPUs this process may use; fewer if others share them)")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # force: importing qwen-asr's dependencies installs a root handler of its own.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr, force=True)
    set_threads(args.threads or available_cpus())
    cfg = EngineConfig(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        alignment_heads=args.heads,
        min_step_s=args.min_step_s,
        max_step_s=args.max_step_s,
        policy=PolicyConfig(border_s=args.border_s, rewind_s=args.rewind_s),
    )

    def print_word(word: Word, emitted_at: float) -> None:
        if args.jsonl:
            print(json.dumps({**word.as_dict(), "emitted_at": round(emitted_at, 3)}), flush=True)

    try:
        model = load_model(cfg.model, cfg.device, cfg.dtype)
        result = transcribe_file(args.file, model, cfg, args.chunk_ms, args.offline, args.language, print_word,
                                 VadConfig() if args.vad else None)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mode = "offline" if args.offline else "streaming"
    if args.jsonl:
        print(json.dumps(result.summary(mode)), flush=True)
    else:
        print(result.text)
        print(
            f"[{mode}] {result.audio_s:.2f} s of audio in {result.compute_s:.2f} s, {len(result.words)} words",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
