"""Engine throughput: batched vs one-at-a-time, long vs short streams, capacity.

    .venv/bin/python benchmarks/engine_throughput.py                 # tiny random model, CPU
    .venv/bin/python benchmarks/engine_throughput.py --arch 0.6b --device cuda --parts capacity

Random weights never stop on their own, so every stream decodes a fixed
budget of --tokens-per-s tokens per second of new audio (the engine's
`fixed_tokens_per_s`); the audio is white noise. Figures printed:

* batched: N streams fed in 100 ms chunks through one scheduler that batches
  them, and the same streams through a scheduler with max_batch=1 (one stream
  per step), in the same run: audio seconds per compute second, and the ratio.
* long: compute per audio second of one 120 s stream and one 10 s stream.
* capacity: streams advanced 0.5 s per round with full buffers; the largest
  N whose round takes less than 0.5 s (real time), with where the time goes.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from engine.config import EngineConfig
from engine.features import SAMPLE_RATE
from engine.loader import LoadedModel, load_model
from engine.core import Engine

CHUNK = SAMPLE_RATE // 10


def noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 0.1).clip(-1, 1).astype(np.float32)


@dataclass
class Run:
    audio_s: float
    compute_s: float
    steps: int

    @property
    def throughput(self) -> float:
        return self.audio_s / self.compute_s


def stream_all(scheduler: Engine, streams: dict[str, np.ndarray]) -> Run:
    """Feed every stream chunk by chunk, stepping until nothing is ready; then end them all."""
    for sid in streams:
        scheduler.open(sid, "en")
    steps, compute = 0, 0.0
    longest = max(len(s) for s in streams.values())
    for begin in range(0, longest, CHUNK):
        for sid, samples in streams.items():
            if begin < len(samples):
                scheduler.feed(sid, samples[begin : begin + CHUNK])
        while True:
            started = time.perf_counter()
            result = scheduler.step()
            if result.stats.batch == 0:
                break
            compute += time.perf_counter() - started
            steps += 1
    for sid in streams:
        scheduler.end(sid)
    while scheduler.open_streams:
        started = time.perf_counter()
        scheduler.step()
        compute += time.perf_counter() - started
        steps += 1
    return Run(sum(len(s) for s in streams.values()) / SAMPLE_RATE, compute, steps)


def best_of(runs: list[Run]) -> Run:
    return min(runs, key=lambda run: run.compute_s)


def part_batched(model: LoadedModel, base: EngineConfig, n: int, seconds: float, repeats: int) -> None:
    streams = {f"s{i}": noise(seconds, i) for i in range(n)}
    batched_runs, single_runs = [], []
    # Alternate the two modes so that machine noise hits both alike; keep each one's best.
    for _ in range(repeats):
        batched_runs.append(stream_all(Engine(base.replace(max_streams=n, max_batch=n), model), streams))
        single_runs.append(stream_all(Engine(base.replace(max_streams=n, max_batch=1), model), streams))
    batched, single = best_of(batched_runs), best_of(single_runs)
    print(f"\n[batched] {n} streams x {seconds:.0f} s, decode budget {base.fixed_tokens_per_s} tokens/s, best of {repeats}")
    print(f"  batched scheduler     : {batched.throughput:8.1f} audio s per compute s ({batched.steps} steps)")
    print(f"  one stream per step   : {single.throughput:8.1f} audio s per compute s ({single.steps} steps)")
    print(f"  speed-up              : {batched.throughput / single.throughput:8.2f}x  (target >= 4x)")


def part_long(model: LoadedModel, base: EngineConfig) -> None:
    cfg = base.replace(max_streams=1, max_batch=1)
    runs = {}
    for seconds in (10.0, 120.0, 10.0, 120.0):
        run = stream_all(Engine(cfg, model), {"x": noise(seconds, 7)})
        best = runs.get(seconds)
        if best is None or run.compute_s < best.compute_s:
            runs[seconds] = run
    short, long = runs[10.0], runs[120.0]
    print("\n[long] one stream, cost per audio second (best of 2)")
    print(f"  10 s stream           : {1000 * short.compute_s / short.audio_s:8.2f} ms per audio s")
    print(f"  120 s stream          : {1000 * long.compute_s / long.audio_s:8.2f} ms per audio s")
    print(f"  ratio 120 s / 10 s    : {(long.compute_s / long.audio_s) / (short.compute_s / short.audio_s):8.2f}  (target <= 1.2)")


def round_time(model: LoadedModel, base: EngineConfig, n: int, warm_s: float, rounds: int) -> tuple[float, dict]:
    """Seconds per round of n streams each advancing min_step_s, with full buffers."""
    scheduler = Engine(base.replace(max_streams=n, max_batch=n), model)
    step_s = base.min_step_s
    for i in range(n):
        scheduler.open(f"s{i}", "en")
    audio = noise(warm_s + step_s * rounds, 3)
    # Warm up: fill the buffers with warm_s of audio, max_step_s at a time.
    warm_chunk = int(base.max_step_s * SAMPLE_RATE)
    for begin in range(0, int(warm_s * SAMPLE_RATE), warm_chunk):
        for i in range(n):
            scheduler.feed(f"s{i}", audio[begin : begin + warm_chunk])
        while scheduler.step().stats.batch:
            pass
    times, split = [], {"encode": 0.0, "prefill": 0.0, "decode": 0.0, "other": 0.0}
    step_samples = int(step_s * SAMPLE_RATE)
    for r in range(rounds):
        begin = int(warm_s * SAMPLE_RATE) + r * step_samples
        for i in range(n):
            scheduler.feed(f"s{i}", audio[begin : begin + step_samples])
        started = time.perf_counter()
        while (stats := scheduler.step().stats).batch:
            split["encode"] += stats.encode_s
            split["prefill"] += stats.prefill_s
            split["decode"] += stats.decode_s
            split["other"] += stats.total_s - stats.encode_s - stats.prefill_s - stats.decode_s
        times.append(time.perf_counter() - started)
    total = sum(split.values())
    return float(np.median(times)), {k: v / total for k, v in split.items()}


def part_capacity(model: LoadedModel, base: EngineConfig, start: int, limit: int) -> None:
    budget = base.min_step_s
    print(f"\n[capacity] streams advancing {budget} s per round, buffers warmed to {base.max_buffer_s:.0f} s")
    n, best = start, 0
    while n <= limit:
        seconds, split = round_time(model, base, n, warm_s=base.max_buffer_s, rounds=4)
        ok = seconds <= budget
        parts = ", ".join(f"{k} {100 * v:.0f}%" for k, v in split.items())
        print(f"  {n:5d} streams: {seconds * 1000:8.1f} ms per {budget * 1000:.0f} ms round  {'ok' if ok else 'too slow'}  ({parts})")
        if not ok:
            break
        best, n = n, n * 2
    print(f"  real-time streams sustained: >= {best} (largest tried that kept up)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint dir (default: a random --arch model)")
    parser.add_argument("--arch", default="tiny", help="random model size when --model is not given: tiny, 0.6b, 1.7b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tokens-per-s", type=float, default=4.0)
    parser.add_argument("--parts", default="batched,long,capacity")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode in the batched part")
    parser.add_argument("--capacity-start", type=int, default=8)
    parser.add_argument("--capacity-limit", type=int, default=1024)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, force=True)
    torch.set_grad_enabled(False)
    if args.model:
        model = load_model(args.model, args.device, args.dtype)
    else:
        from engine.loader import resolve_dtype, resolve_device
        from engine.tiny import random_loaded

        device = resolve_device(args.device)
        model = random_loaded(args.arch, 0, str(device), resolve_dtype(args.dtype, device))
    base = EngineConfig(
        model=model.name, device=args.device, fixed_tokens_per_s=args.tokens_per_s, partial_tokens=0,
        max_buffer_s=16.0,
    )
    print(f"model {model.name} on {model.device} ({model.dtype}), torch threads {torch.get_num_threads()}")
    parts = args.parts.split(",")
    if "batched" in parts:
        part_batched(model, base, args.streams, args.seconds, args.repeats)
    if "long" in parts:
        part_long(model, base)
    if "capacity" in parts:
        part_capacity(model, base, args.capacity_start, args.capacity_limit)


if __name__ == "__main__":
    main()
