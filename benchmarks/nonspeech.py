"""Words a model commits where nobody speaks: non-speech signals and speech followed by silence.

    .venv/bin/python benchmarks/nonspeech.py --model models/tiny-en [--chunk-ms 100] [--language en]

Every signal of training.nonspeech.evaluation_signals (20-60 s: digital silence,
noise colours and levels, a tone, mains hum, a chirp, clicks) is streamed
through the engine CLI's code path (engine.transcribe.transcribe, default
engine settings, language detected unless --language) and the words it
commits are printed; the right answer is none. Then two held-out sentences
(unseen sentence, unseen voice), each followed by 20 s of digital silence:
"extra" counts inserted words (jiwer insertions against the sentence; their
timestamps often point back into the speech, so times cannot tell them).
"""

from __future__ import annotations

import argparse
import logging
import time

import jiwer
import numpy as np

from engine.config import EngineConfig
from engine.features import SAMPLE_RATE
from engine.loader import LoadedModel, load_model
from engine.scheduler import Scheduler
from engine.transcribe import Transcription, transcribe
from training.nonspeech import evaluation_signals, speech_then_silence

# The two sentence cases: a ~3 s sentence, and a 10-word one.
SENTENCES = (("3 s sentence + 20 s silence", None, 3.2), ("10-word sentence + 20 s silence", 10, 12.0))
SILENCE_AFTER_S = 20.0


def stream(model: LoadedModel, cfg: EngineConfig, samples: np.ndarray, chunk_ms: float, language: str | None) -> Transcription:
    """One simulated live stream, as `python -m engine.transcribe FILE --jsonl` runs it."""
    return transcribe(Scheduler(cfg.replace(max_streams=1, max_batch=1), model), samples, chunk_ms, language)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny-en")
    parser.add_argument("--chunk-ms", type=float, default=100.0)
    parser.add_argument("--language", default=None, help="auto (default) or a code such as en")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, force=True)
    model = load_model(args.model, args.device, "auto")
    cfg = EngineConfig(model=args.model, device=args.device)
    language = None if args.language in (None, "auto") else args.language
    print(f"model {args.model}, chunk {args.chunk_ms:.0f} ms, language {language or 'auto'}")
    total, audio_s, started = 0, 0.0, time.perf_counter()
    for name, make in evaluation_signals():
        samples = make()
        result = stream(model, cfg, samples, args.chunk_ms, language)
        total += len(result.words)
        audio_s += len(samples) / SAMPLE_RATE
        print(f"  {name:36s} {len(result.words):3d} words  {result.text!r}")
    print(f"  {'non-speech total':36s} {total:3d} words over {len(evaluation_signals())} signals ({audio_s:.0f} s)")
    for name, n_words, max_s in SENTENCES:
        samples, text, _ = speech_then_silence(n_words, max_s, SILENCE_AFTER_S)
        result = stream(model, cfg, samples, args.chunk_ms, language)
        extra = jiwer.process_words(text, result.text or "<none>").insertions
        print(f"  {name:36s} {len(result.words):3d} words for {len(text.split())} spoken, {extra} extra  "
              f"ref {text!r} hyp {result.text!r}")
    print(f"  ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
