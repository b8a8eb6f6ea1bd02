"""Soak: the service under steady churn for a long time; memory and file descriptors per process.

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--streams 16] [--sample-s 30] [--warmup-min 5] [--json F]

Starts the service as `make run` does (benchmarks/capacity.py's Service,
bundled model, a benchmark tenant) and keeps `--streams` live streams open:
each streams one ~30 s capacity-workload stream (held-out speech with
pauses) at real-time pace, ends, and a new one connects at once. Every
`--sample-s` it samples the RSS and open file descriptors of every service
process (HTTP proxy, ingest, model replicas, Serve controller, Ray's own
processes). At the end it prints, per process, the figures at warm-up end
and at the end, and the growth per hour fitted (least squares) over the
samples after `--warmup-min`; streams completed and failed. `--json` also
writes every sample, so the growth can be fitted over other windows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.capacity import REPO, Service, service_stream  # noqa: E402
from benchmarks.workload import build_streams  # noqa: E402

# Processes sampled, by a piece of their title; "ray" covers the raylet, GCS, dashboard, workers.
WATCHED = {"proxy": "ProxyActor", "haproxy": "bin/haproxy", "ingest": "ServeReplica:captions:Ingest",
           "model": "ServeReplica:captions:ASRModel", "controller": "ServeController"}


@dataclass
class Samples:
    """Per process (title, pid): [(minutes since start, rss MB, open fds)]."""

    start: float = field(default_factory=time.monotonic)
    series: dict[tuple[str, int], list[tuple[float, float, int]]] = field(default_factory=dict)

    def take(self) -> None:
        minutes = (time.monotonic() - self.start) / 60
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            name = next((n for n, mark in WATCHED.items() if mark in cmdline), None)
            if name is None and ("raylet" in cmdline or "gcs_server" in cmdline):
                name = "raylet" if "raylet" in cmdline else "gcs"
            if name is None:
                continue
            try:
                rss = proc.memory_info().rss / 2**20
                fds = proc.num_fds()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            self.series.setdefault((name, proc.pid), []).append((minutes, rss, fds))


def per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minutes, value), per hour."""
    if len(points) < 3:
        return float("nan")
    t, v = np.array(points).T
    return float(np.polyfit(t, v, 1)[0] * 60)


async def churn(url: str, key: str, slots: int, until: float, counts: dict[str, int]) -> None:
    """`slots` streams open at all times until `until`: each ends and is replaced at once."""
    pool = build_streams(64, seconds=30.0)

    async def slot(i: int) -> None:
        k = i
        while time.monotonic() < until:
            stream = pool[k % len(pool)]
            run = await service_stream(url, key, stream, time.monotonic(), time.monotonic() + stream.seconds + 60)
            counts["failed" if run.error else "completed"] += 1
            if run.error:
                print(f"  stream failed: {run.error}", flush=True)
            k += slots

    # Staggered starts, so streams end and reconnect at different moments.
    async def staggered(i: int) -> None:
        await asyncio.sleep(i * 30.0 / slots)
        await slot(i)

    await asyncio.gather(*(staggered(i) for i in range(slots)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--warmup-min", type=float, default=5.0)
    parser.add_argument("--model", default="models/tiny-en")
    parser.add_argument("--config", type=Path, default=REPO / "serve_config.yaml")
    parser.add_argument("--metrics-port", type=int, default=9090)
    parser.add_argument("--json", type=Path, default=None, help="also write every sample here")
    args = parser.parse_args()
    service = Service(args.model, args.config, args.metrics_port)
    samples, counts = Samples(), {"completed": 0, "failed": 0}
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(0 if not samples.series else args.sample_s):
            samples.take()

    thread = threading.Thread(target=sampler, daemon=True)
    try:
        thread.start()
        url = "ws://127.0.0.1:8000/v1/stream"
        asyncio.run(churn(url, service.key, args.streams, time.monotonic() + args.minutes * 60, counts))
    finally:
        stop.set()
        thread.join()
        samples.take()
        service.stop()
    report(samples, counts, args)
    if args.json is not None:
        args.json.write_text(json.dumps({"counts": counts, "samples": [
            {"process": name, "pid": pid, "series": [{"minutes": t, "rss_mb": r, "fds": f} for t, r, f in series]}
            for (name, pid), series in sorted(samples.series.items())]}, indent=1))
    return 0


def report(samples: Samples, counts: dict[str, int], args: argparse.Namespace) -> None:
    print(f"\n{args.minutes:.0f} min, {args.streams} streams churning: {counts['completed']} streams completed, "
          f"{counts['failed']} failed; samples every {args.sample_s:.0f} s; growth fitted after "
          f"{args.warmup_min:.0f} min")
    print(f"  {'process':22s} {'RSS MB warm':>11s} {'end':>7s} {'MB/hour':>8s}   {'fds warm':>8s} {'end':>5s} "
          f"{'fds/hour':>8s}")
    for (name, pid), series in sorted(samples.series.items()):
        after = [s for s in series if s[0] >= args.warmup_min]
        if len(after) < 3:
            continue  # a process that did not live through the run (restarted, or short-lived)
        print(f"  {name + ' ' + str(pid):22s} {after[0][1]:11.1f} {after[-1][1]:7.1f} "
              f"{per_hour([(t, r) for t, r, _ in after]):8.1f}   {after[0][2]:8d} {after[-1][2]:5d} "
              f"{per_hour([(t, f) for t, _, f in after]):8.1f}")


if __name__ == "__main__":
    sys.exit(main())
