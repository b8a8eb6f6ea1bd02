"""N concurrent real-time WebSocket streams against a running service (`make run`).

    .venv/bin/python benchmarks/service_load.py --key KEY [--url ws://127.0.0.1:8000/v1/stream]
        [--streams 1,2,4,8,16] [--seconds 10] [--wav FILE]

For each N: per-stream word lag p50/p95 (wall time from sending the audio
where a word ends to receiving the word), committed words/s, and the ingest
replica's CPU time per stream (psutil, found by its Ray process title; only
on the machine running the service). Prints the largest N whose p95 lag
stays under --max-lag-s (2 s). Bounded: each step streams --seconds of audio.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client.stream import CaptionStream, ServiceError, pcm_chunks, send_realtime  # noqa: E402
from engine.audio import read_audio_file  # noqa: E402
from engine.features import SAMPLE_RATE  # noqa: E402

CHUNK_S = 0.1


@dataclass
class StreamResult:
    # Per word: wall time from sending the audio the model had when it committed the
    # word (`emitted_at`) to receiving it: the service's own delay.
    lags: list[float] = field(default_factory=list)
    # Per word: the same from the word's end: adds the policy's wait for more audio,
    # which only means something for a trained model (random ones attend anywhere).
    end_lags: list[float] = field(default_factory=list)
    words: int = 0
    error: str | None = None


async def one_stream(url: str, key: str, samples: np.ndarray) -> StreamResult:
    result = StreamResult()
    try:
        await stream_into(url, key, samples, result)
    except ServiceError as exc:  # refused at `start` (e.g. overloaded): counts as an error
        result.error = exc.code
    return result


async def stream_into(url: str, key: str, samples: np.ndarray, result: StreamResult) -> None:
    async with CaptionStream(url, language="en", api_key=key) as stream:
        started = time.monotonic()
        sender = asyncio.create_task(send_realtime(stream, pcm_chunks(samples, CHUNK_S), CHUNK_S))
        async for frame in stream.frames():
            now = time.monotonic()
            if frame["type"] == "words":
                # Audio up to t left the client at started + t, in CHUNK_S chunks.
                emitted_sent_at = started + np.ceil(frame["emitted_at"] / CHUNK_S - 1e-6) * CHUNK_S - CHUNK_S
                for word in frame["words"]:
                    result.lags.append(now - emitted_sent_at)
                    result.end_lags.append(now - (started + np.floor(word["end"] / CHUNK_S) * CHUNK_S))
                result.words += len(frame["words"])
            elif frame["type"] == "error":
                result.error = frame["code"]
        sender.cancel()


def ingest_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "ServeReplica:captions:Ingest" in cmdline:
            found.append(proc)
    return found


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


async def run_level(url: str, key: str, samples: np.ndarray, n: int) -> dict:
    procs = ingest_processes()
    cpu0, t0 = cpu_seconds(procs), time.monotonic()
    results = await asyncio.gather(*(one_stream(url, key, samples) for _ in range(n)))
    wall = time.monotonic() - t0
    cpu = cpu_seconds(procs) - cpu0
    p50 = [float(np.percentile(r.lags, 50)) for r in results if r.lags]
    p95 = [float(np.percentile(r.lags, 95)) for r in results if r.lags]
    all_lags = [lag for r in results for lag in r.lags]
    end_lags = [lag for r in results for lag in r.end_lags]
    return {
        "streams": n,
        "lag_p50_s": float(np.percentile(all_lags, 50)) if all_lags else float("nan"),
        "lag_p95_s": float(np.percentile(all_lags, 95)) if all_lags else float("nan"),
        "end_lag_p95_s": float(np.percentile(end_lags, 95)) if end_lags else float("nan"),
        "worst_stream_p50_s": max(p50, default=float("nan")),
        "worst_stream_p95_s": max(p95, default=float("nan")),
        "words_per_s": sum(r.words for r in results) / wall,
        "ingest_cpu_per_stream": cpu / wall / n if procs else float("nan"),
        "errors": [r.error for r in results if r.error],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/stream")
    parser.add_argument("--key", required=True, help="API key of a tenant allowed as many streams as --streams")
    parser.add_argument("--streams", default="1,2,4,8,16,24,32")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--wav", type=Path, default=None, help="audio to stream (default: seeded noise)")
    parser.add_argument("--max-lag-s", type=float, default=2.0)
    args = parser.parse_args()
    if args.wav is not None:
        samples = read_audio_file(args.wav)[: int(args.seconds * SAMPLE_RATE)]
    else:
        rng = np.random.default_rng(0)
        samples = (rng.standard_normal(int(args.seconds * SAMPLE_RATE)) * 0.1).clip(-1, 1).astype(np.float32)
    print(f"{len(samples) / SAMPLE_RATE:.1f} s per stream, sent at real-time pace in {CHUNK_S * 1000:.0f} ms frames")
    print("lag: wall time from sending the audio the model had when committing a word to receiving it;")
    print("from-end: the same from the word's end (adds the policy's wait; meaningful for trained models)")
    print(f"{'N':>4} {'lag p50':>8} {'lag p95':>8} {'worst p95':>9} {'from-end p95':>12} {'words/s':>8} "
          f"{'ingest CPU/stream':>18}  errors")
    best = 0
    for n in (int(x) for x in args.streams.split(",")):
        row = asyncio.run(run_level(args.url, args.key, samples, n))
        print(f"{n:>4} {row['lag_p50_s']:>7.2f}s {row['lag_p95_s']:>7.2f}s {row['worst_stream_p95_s']:>8.2f}s "
              f"{row['end_lag_p95_s']:>11.2f}s {row['words_per_s']:>8.1f} {100 * row['ingest_cpu_per_stream']:>16.1f}%  {row['errors'] or ''}",
              flush=True)
        if row["lag_p95_s"] < args.max_lag_s and not row["errors"]:
            best = n
        else:
            break
    print(f"largest N with p95 lag < {args.max_lag_s:.1f} s: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
