"""Capacity: how many live captioning streams the service carries (the headline figure).

    .venv/bin/python benchmarks/capacity.py [--streams 8,16,32,48,64,80] [--seconds 60]
    .venv/bin/python benchmarks/capacity.py --engine-only [--threads 2]
    .venv/bin/python benchmarks/capacity.py --engine-only --arch 0.6b --device cuda --streams 128,256,400,512
    .venv/bin/python benchmarks/capacity.py --url ws://HOST:8000/v1/stream --key KEY   # a service already running

The workload is what users have (benchmarks/workload.py): ~60 s streams of
held-out sentences in held-out voices with 0.3-3 s pauses, the bundled
trained model (models/tiny-en), partials on, sent at real-time pace in 100 ms
frames, stream starts staggered over --stagger-s. By default the service is
started exactly as `make run` starts it (deployments.run with
serve_config.yaml) with a benchmark tenant, and stopped at the end.

Per N it prints the end-to-end word lag (wall time from sending the audio
where a committed word ends to receiving that word) p50/p90/p95 over all words,
words inside speech and utterance-final words (the last word before a
pause); committed words/s; errors; WER of the final transcripts; CPU
seconds per stream-second (audio second streamed) of the HTTP proxy, the
ingest, the model replica(s), the rest of Ray and this client, over the
whole level (ramp and tail included) and again over the stretch where all N
streams were live (the per-stream cost at N, without the ramp); the model
replicas' split (wall seconds in encode / prefill / decode) from their
Prometheus counters; mean streams per step and decoder forwards per step.
Then the largest N with lag p95 <= --max-lag-s and no errors.

--engine-only feeds the same streams on the same clock straight into one
engine Scheduler in this process (no Ray, no network): the engine's own
capacity, so the service's overhead is the gap between the two lines.

--arch 0.6b|1.7b (engine only) swaps the model for random weights of a real
Qwen3-ASR size (bf16 on a GPU) under the same schedule and gate; random
weights never end their text, so each step decodes the token rate of the
streams' real speech (--tokens-per-s; default 1.3 tokens per reference word
per second of speech). These are kernel figures for sizing GPUs: the lag
columns hold (the step keeps up or not), WER is meaningless.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.workload import Stream, build_streams, utterance_final, vad_config  # noqa: E402
from client.stream import to_pcm16  # noqa: E402
from deployments.config import IngestConfig  # noqa: E402
from engine.features import SAMPLE_RATE  # noqa: E402
from engine.vad import GateState, VadConfig, VadGate, feed_pieces, flush  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CHUNK_S = 0.1
BENCH_TENANT = "bench"
# Process groups whose CPU time is reported, by a piece of their Ray process title.
# Processes by a piece of their command line. "proxy" is Serve's proxy actor and, where Serve runs
# HAProxy in front of the ingest (RAY_SERVE_ENABLE_HA_PROXY), the haproxy processes it starts.
GROUPS = {"proxy": ("ProxyActor", "bin/haproxy"), "ingest": ("ServeReplica:captions:Ingest",),
          "model": ("ServeReplica:captions:ASRModel",)}
# Qwen's byte-level BPE spends about 1.3 tokens per English word (random-weight runs decode
# this many tokens per word of the workload's reference text, per second of speech).
TOKENS_PER_WORD = 1.3
COUNTERS = ("step_seconds", "encode_seconds", "prefill_seconds", "decode_seconds", "steps", "forwards", "batch_rows")


@dataclass
class StreamRun:
    """What one stream saw: its words with receive times, its final text, or an error."""

    t0: float = 0.0  # wall time its first audio frame was due (audio second s is sent at t0 + s)
    words: list[dict] = field(default_factory=list)
    received: list[float] = field(default_factory=list)
    text: str | None = None
    error: str | None = None


# ---------------------------------------------------------------- schedule
def offsets(n: int, stagger_s: float) -> list[float]:
    """Start of each stream, spread evenly over the stagger window."""
    return [stagger_s * i / n for i in range(n)]


def frame_due(t0: float, k: int) -> float:
    """Chunk k holds audio [k, k + 1) x CHUNK_S: it exists, and is sent, at its end."""
    return t0 + (k + 1) * CHUNK_S


def sent_at(t0: float, seconds: float) -> float:
    """Wall time the audio up to stream time `seconds` had been sent."""
    return frame_due(t0, int(np.floor(seconds / CHUNK_S - 1e-9)))


# ---------------------------------------------------------------- service mode
async def service_stream(url: str, key: str, stream: Stream, start_at: float, deadline: float) -> StreamRun:
    import msgpack
    import websockets

    run = StreamRun()
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    pcm = to_pcm16(stream.samples)
    step = int(CHUNK_S * SAMPLE_RATE)
    frames = [msgpack.packb({"type": "audio", "data": pcm[b : b + step].tobytes()}) for b in range(0, len(pcm), step)]
    try:
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"},
                                      max_size=2**24) as ws:
            await ws.send(msgpack.packb({"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le",
                                         "language": "en"}))
            ready = msgpack.unpackb(await ws.recv())
            if ready["type"] == "error":
                run.error = ready["code"]
                return run
            run.t0 = time.monotonic()

            async def send() -> None:
                for k, frame in enumerate(frames):
                    await asyncio.sleep(max(0.0, frame_due(run.t0, k) - time.monotonic()))
                    await ws.send(frame)
                await ws.send(msgpack.packb({"type": "end"}))

            sender = asyncio.create_task(send())
            try:
                async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                    async for raw in ws:
                        msg = msgpack.unpackb(raw)
                        if msg["type"] == "words":
                            now = time.monotonic()
                            run.words += msg["words"]
                            run.received += [now] * len(msg["words"])
                        elif msg["type"] == "final":
                            run.text = msg["text"]
                            break
                        elif msg["type"] == "error":
                            run.error = msg["code"]
                            break
            except TimeoutError:
                run.error = "timeout"
            sender.cancel()
    except (OSError, websockets.WebSocketException) as exc:
        run.error = run.error or type(exc).__name__
    if run.text is None and run.error is None:
        run.error = "closed"
    return run


@dataclass
class Window:
    """CPU seconds per group over the stretch where every stream of a level was live."""

    seconds: float
    cpu: dict[str, float]


async def service_level(url: str, key: str, streams: list[Stream], stagger_s: float,
                        procs: dict[str, list[psutil.Process]] | None = None
                        ) -> tuple[list[StreamRun], Window | None]:
    begin = time.monotonic() + 1.0
    longest = max(s.seconds for s in streams)
    deadline = begin + stagger_s + longest + 90.0
    starts = offsets(len(streams), stagger_s)
    # All N live: from just after the last start (its handshake done) to the first stream's last frame.
    # Per-stream costs with exactly N streams, free of the ramp and the tail.
    full = (begin + max(starts) + 2.0, begin + min(o + s.seconds for o, s in zip(starts, streams)))
    window = asyncio.create_task(cpu_window(procs, *full)) if procs and full[1] - full[0] >= 5.0 else None
    runs = list(await asyncio.gather(*(service_stream(url, key, s, begin + o, deadline)
                                       for s, o in zip(streams, starts))))
    return runs, (await window if window is not None else None)


async def cpu_window(procs: dict[str, list[psutil.Process]], t0: float, t1: float) -> Window:
    await asyncio.sleep(t0 - time.monotonic())
    cpu0, wall0 = cpu_times(procs), time.monotonic()
    await asyncio.sleep(t1 - time.monotonic())
    cpu1, wall1 = cpu_times(procs), time.monotonic()
    return Window(wall1 - wall0, {k: cpu1[k] - cpu0[k] for k in cpu0})


def ray_processes() -> dict[str, list[psutil.Process]]:
    found: dict[str, list[psutil.Process]] = {name: [] for name in (*GROUPS, "ray other")}
    for proc in psutil.process_iter(["cmdline", "name"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        group = next((g for g, marks in GROUPS.items() if any(m in cmdline for m in marks)), None)
        if group is None and ("ray" in cmdline or "ray" in (proc.info["name"] or "")) and proc.pid != os.getpid():
            group = "ray other"
        if group is not None:
            found[group].append(proc)
    return found


def cpu_times(groups: dict[str, list[psutil.Process]]) -> dict[str, float]:
    out = {}
    for name, procs in groups.items():
        total = 0.0
        for proc in procs:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        out[name] = total
    me = psutil.Process().cpu_times()
    out["client"] = me.user + me.system
    return out


def scrape(metrics_url: str) -> dict[str, float]:
    """Sum of each ray_asr_* counter over model replicas."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    sums = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        match = re.match(r"ray_asr_(\w+?)(?:_total)?(?:\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if match and match.group(1) in sums:
            sums[match.group(1)] += float(match.group(2))
    return sums


def settled_counters(metrics_url: str, timeout_s: float = 40.0) -> dict[str, float]:
    """Counters once Ray's metrics export has caught up (two equal reads in a row)."""
    last = scrape(metrics_url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(3.0)
        now = scrape(metrics_url)
        if now == last:
            return now
        last = now
    return last


class Service:
    """The service as `make run` starts it, with a benchmark tenant; stopped on exit."""

    def __init__(self, model: str, config: Path, metrics_port: int) -> None:
        from captions.tenants import add_key

        self.tmp = tempfile.TemporaryDirectory(prefix="capacity-")
        keys = Path(self.tmp.name) / "keys.yaml"
        self.key = add_key(keys, BENCH_TENANT, {"max_concurrent_streams": 10_000,
                                                "audio_minutes_per_period": 1e9})
        env = {**os.environ, "CAPTIONS_KEYS_FILE": str(keys),
               "CAPTIONS_DB_URL": f"sqlite:///{self.tmp.name}/captions.sqlite3"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deployments.run", "--config", str(config), "--model", model,
             "--metrics-port", str(metrics_port)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.log: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stdout:
                self.log.append(line)
                if "captions service running" in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + 600
        while not ready.wait(1.0):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the service did not start:\n" + "".join(self.log[-40:]))

    def stop(self) -> None:
        """Ctrl-C, as in a terminal; then whatever is left of the service's session (Ray workers and
        HAProxy run in process groups of their own) is killed, so the next run finds port 8000 free."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                print("the service did not stop within 120 s: killed", flush=True)
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == self.proc.pid:
                    proc.kill()
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass  # gone meanwhile
        self.tmp.cleanup()


def run_service(args: argparse.Namespace, streams: list[Stream], levels: list[int]) -> list[dict]:
    service = None
    url, key = args.url, args.key
    metrics_url = f"http://127.0.0.1:{args.metrics_port}/metrics"
    if url is None:
        service = Service(args.model, args.config, args.metrics_port)
        url, key = "ws://127.0.0.1:8000/v1/stream", service.key
    rows = []
    try:
        if args.warmup_s > 0:
            warm = Stream(streams[0].samples[: int(args.warmup_s * SAMPLE_RATE)], [])
            asyncio.run(service_level(url, key, [warm], 0.0))
        for n in levels:
            procs = ray_processes()
            counters0 = settled_counters(metrics_url)
            cpu0, wall0 = cpu_times(procs), time.monotonic()
            runs, window = asyncio.run(service_level(url, key, streams[:n], args.stagger_s, procs))
            wall = time.monotonic() - wall0
            cpu = {k: v - cpu0[k] for k, v in cpu_times(procs).items()}
            counters = {k: v - counters0[k] for k, v in settled_counters(metrics_url).items()}
            rows.append(summarise(n, streams[:n], runs, wall, cpu, counters, len(procs["model"])))
            if window is not None:
                rows[-1]["all_live_s"] = window.seconds
                rows[-1]["cpu_per_stream_s_all_live"] = {k: v / (n * window.seconds) for k, v in window.cpu.items()}
            print_row(rows[-1])
            if not passes(rows[-1], args.max_lag_s):
                break
    finally:
        if service is not None:
            service.stop()
    return rows


# ---------------------------------------------------------------- engine-only mode
def engine_level(scheduler: Any, streams: list[Stream], stagger_s: float,
                 vad: VadConfig | None) -> tuple[list[StreamRun], dict, float]:
    """Feed the streams on the wall clock from a thread while this thread steps the engine.

    With `vad`, the feeder gates every stream's audio as the ingest does: all
    chunks due by each VAD tick scored in one batch, then their pieces fed.
    """
    runs = [StreamRun() for _ in streams]
    begin = time.monotonic() + 0.5
    schedule = []
    step = int(CHUNK_S * SAMPLE_RATE)
    for i, (stream, offset) in enumerate(zip(streams, offsets(len(streams), stagger_s))):
        runs[i].t0 = begin + offset
        chunks = range(0, len(stream.samples), step)
        schedule += [(frame_due(runs[i].t0, k), i, b) for k, b in enumerate(chunks)]
    schedule.sort()
    last_chunk = {i: max(b for _, j, b in schedule if j == i) for i in range(len(streams))}
    failed: list[BaseException] = []
    gate = VadGate(vad) if vad is not None else None
    gates = [GateState() for _ in streams]
    tick_s = IngestConfig.vad_tick_s

    def feed() -> None:
        try:
            opened, at = set(), 0
            while at < len(schedule):
                time.sleep(max(0.0, (schedule[at][0] if gate is None else time.monotonic() + tick_s)
                               - time.monotonic()))
                due = []
                while at < len(schedule) and schedule[at][0] <= time.monotonic():
                    due.append(schedule[at])
                    at += 1
                for _, i, _ in due:
                    if i not in opened:
                        scheduler.open(f"s{i}", "en")
                        opened.add(i)
                if gate is None:
                    for _, i, b in due:
                        scheduler.feed(f"s{i}", streams[i].samples[b : b + step])
                else:
                    # A late tick finds several chunks of one stream due: the gate gets each stream once.
                    ready: dict[int, list[np.ndarray]] = {}
                    for _, i, b in due:
                        ready.setdefault(i, []).append(streams[i].samples[b : b + step])
                    batch = [(gates[i], np.concatenate(chunks)) for i, chunks in ready.items()]
                    for i, pieces in zip(ready, gate.process(batch)):
                        feed_pieces(scheduler, f"s{i}", pieces)
                for _, i, b in due:
                    if b == last_chunk[i]:
                        if gate is not None:
                            feed_pieces(scheduler, f"s{i}", flush(gates[i]))
                        scheduler.end(f"s{i}")
        except BaseException as exc:  # reported by the stepping thread
            failed.append(exc)
            raise

    feeder = threading.Thread(target=feed, daemon=True)
    totals = dict.fromkeys(COUNTERS, 0.0)
    cpu0 = time.process_time()
    feeder.start()
    finished = 0
    busy = False
    forward_times: list[float] = []
    while finished < len(streams):
        if failed:
            raise RuntimeError("feeding failed") from failed[0]
        if not busy:
            scheduler.wait_for_work(0.05)
        result = scheduler.step()
        stats = result.stats
        busy = stats.batch > 0
        if busy:
            forward_times.append(stats.total_s)
            for name, value in (("step_seconds", stats.total_s), ("encode_seconds", stats.encode_s),
                                ("prefill_seconds", stats.prefill_s), ("decode_seconds", stats.decode_s),
                                ("steps", stats.steps), ("forwards", stats.forwards), ("batch_rows", stats.batch)):
                totals[name] += value
        now = time.monotonic()
        for event in result.events:
            run = runs[int(event.stream_id[1:])]
            kind = type(event).__name__
            if kind in ("WordsEvent", "FinalEvent"):
                run.words += [w.as_dict() for w in event.words]
                run.received += [now] * len(event.words)
            if kind == "FinalEvent":
                run.text = " ".join(w["text"] for w in run.words)
                finished += 1
            elif kind == "ErrorEvent":
                run.error = event.code
                finished += 1
    feeder.join()
    totals["forward_p95_s"] = float(np.percentile(forward_times, 95)) if forward_times else float("nan")
    return runs, totals, time.process_time() - cpu0


def run_engine(args: argparse.Namespace, streams: list[Stream], levels: list[int]) -> list[dict]:
    import torch

    from engine.config import EngineConfig
    from engine.core import Engine
    from engine.loader import load_model, resolve_dtype
    from engine.tiny import random_loaded

    torch.set_num_threads(args.threads)
    fixed = None
    if args.arch is not None and args.tokens_per_s is None:
        speech_s = sum(u.end - u.start for s in streams for u in s.utterances)
        args.tokens_per_s = TOKENS_PER_WORD * sum(len(s.text.split()) for s in streams) / speech_s
    if args.arch is None:
        model = load_model(args.model, args.device, args.dtype)
        name = args.model
    else:
        # Random weights never end their text: decode the token rate real speech has instead.
        model = random_loaded(args.arch, 0, args.device, resolve_dtype(args.dtype, torch.device(args.device)))
        name = f"random {args.arch} (kernel figures: {args.tokens_per_s:.1f} tokens per second of audio sent)"
        fixed = args.tokens_per_s
    vad = None if args.no_vad else vad_config(args.vad_set)
    print(f"engine only: {name} on {model.device} ({model.dtype}), torch threads {torch.get_num_threads()}, "
          f"VAD {'off' if vad is None else vad}")
    rows = []
    for n in levels:
        cfg = EngineConfig(model=args.model if args.arch is None else model.name, device=args.device,
                           dtype=str(model.dtype).removeprefix("torch."), max_streams=max(n, 1), max_batch=max(n, 1),
                           fixed_tokens_per_s=fixed)
        scheduler = Engine(cfg, model)
        if args.warmup_s > 0:
            warm = Stream(streams[0].samples[: int(args.warmup_s * SAMPLE_RATE)], [])
            engine_level(scheduler, [warm], 0.0, vad)
        wall0 = time.monotonic()
        runs, counters, cpu = engine_level(scheduler, streams[:n], args.stagger_s, vad)
        wall = time.monotonic() - wall0
        rows.append(summarise(n, streams[:n], runs, wall, {"engine": cpu}, counters, 1))
        print_row(rows[-1])
        if not passes(rows[-1], args.max_lag_s):
            break
    return rows


# ---------------------------------------------------------------- figures
def summarise(n: int, streams: list[Stream], runs: list[StreamRun], wall: float, cpu: dict[str, float],
              counters: dict[str, float], model_replicas: int) -> dict:
    import jiwer

    lags: dict[str, list[float]] = {"all": [], "inside": [], "final": []}
    for stream, run in zip(streams, runs):
        finals = utterance_final(run.words, stream.utterances)
        for word, received, is_final in zip(run.words, run.received, finals):
            lag = received - sent_at(run.t0, word["end"])
            lags["all"].append(lag)
            lags["final" if is_final else "inside"].append(lag)
    stream_s = sum(s.seconds for s in streams)
    refs = [s.text for s, r in zip(streams, runs) if r.text is not None]
    hyps = [r.text for r in runs if r.text is not None]
    row: dict[str, Any] = {
        "streams": n,
        "stream_s": stream_s,
        "wall_s": wall,
        "words": sum(len(r.words) for r in runs),
        "words_per_s": sum(len(r.words) for r in runs) / wall,
        "errors": [r.error for r in runs if r.error],
        "wer": float(jiwer.wer(refs, hyps)) if refs else float("nan"),
        "model_replicas": model_replicas,
        "cpu_per_stream_s": {k: v / stream_s for k, v in cpu.items()},
    }
    for kind, values in lags.items():
        row[f"lag_{kind}"] = [float(np.percentile(values, q)) if values else float("nan") for q in (50, 90, 95)]
    steps = counters.get("steps", 0.0)
    # Wall time, not CPU: replicas sharing cores wait for one inside a phase, so the
    # phases can add up to more than the replicas' CPU (a "rest of the CPU" went negative).
    parts = {k: counters.get(f"{k}_seconds", 0.0) for k in ("encode", "prefill", "decode")}
    row["split_per_stream_s"] = {k: v / stream_s for k, v in parts.items()}
    row["step_s_per_stream_s"] = counters.get("step_seconds", 0.0) / stream_s
    forwards, rows = counters.get("forwards", 0.0), counters.get("batch_rows", 0.0)
    # Rows per forward, and forwards one stream's step takes (its prefill and each decoded token).
    row["mean_batch"] = rows / forwards if forwards else float("nan")
    row["forwards_per_step"] = rows / steps if steps else float("nan")
    if "forward_p95_s" in counters:
        # A stream's step is forwards_per_step forwards: it keeps up while that fits its step interval.
        row["forward_p95_s"] = counters["forward_p95_s"]
    return row


def passes(row: dict, max_lag_s: float) -> bool:
    return row["lag_all"][-1] <= max_lag_s and not row["errors"]


def print_header(mode: str) -> None:
    print(f"\n[{mode}] lag = wall time from sending the audio where a word ends to receiving the word (s)")
    print("  CPU in CPU-seconds per stream-second; split = wall seconds per stream-second of the model "
          "replicas' step phases (encode/prefill/decode)")


def print_row(row: dict) -> None:
    fmt = lambda qs: "/".join(f"{q:5.2f}" for q in qs)  # noqa: E731
    cpu = " ".join(f"{k} {v:.4f}" for k, v in row["cpu_per_stream_s"].items())
    split = " ".join(f"{k} {v:.4f}" for k, v in row["split_per_stream_s"].items())
    errors = f"{len(row['errors'])} {sorted(set(row['errors']))}" if row["errors"] else "0"
    print(f"  N={row['streams']:<4d} lag p50/p90/p95 all {fmt(row['lag_all'])}  inside {fmt(row['lag_inside'])}  "
          f"utterance-final {fmt(row['lag_final'])}  words/s {row['words_per_s']:6.1f}  errors {errors}  "
          f"WER {100 * row['wer']:4.1f}%", flush=True)
    print(f"         CPU: {cpu}  | split: {split}  | batch {row['mean_batch']:.1f}  "
          f"forwards/step {row['forwards_per_step']:.1f}  replicas {row['model_replicas']}"
          + (f"  forward p95 {1000 * row['forward_p95_s']:.1f} ms" if "forward_p95_s" in row else ""), flush=True)
    if "cpu_per_stream_s_all_live" in row:
        live = " ".join(f"{k} {v:.4f}" for k, v in row["cpu_per_stream_s_all_live"].items())
        print(f"         CPU with all {row['streams']} live ({row['all_live_s']:.0f} s): {live}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="8,16,32,48,64,80,96")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per stream")
    parser.add_argument("--stagger-s", type=float, default=10.0, help="stream starts spread over this window")
    parser.add_argument("--max-lag-s", type=float, default=1.5)
    parser.add_argument("--warmup-s", type=float, default=5.0, help="one short stream before the sweep")
    parser.add_argument("--model", default="models/tiny-en")
    parser.add_argument("--engine-only", action="store_true")
    parser.add_argument("--no-vad", action="store_true", help="engine only: no voice activity gate in front")
    parser.add_argument("--vad-set", default=None,
                        help="engine only: gate settings, e.g. endpoint_s=0.3,pad_s=0.1 (the service reads "
                             "serve_config.yaml)")
    parser.add_argument("--arch", choices=("tiny", "0.6b", "1.7b"), default=None,
                        help="engine only: a random-weight model of this real architecture instead of --model "
                             "(GPU sizing: kernel figures, WER meaningless)")
    parser.add_argument("--tokens-per-s", type=float, default=None,
                        help="with --arch: transcript tokens decoded per second of audio the engine gets "
                             f"(default: {TOKENS_PER_WORD} per word of the streams' speech)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="engine only: torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--config", type=Path, default=REPO / "serve_config.yaml")
    parser.add_argument("--metrics-port", type=int, default=9090)
    parser.add_argument("--url", default=None, help="a running service's /v1/stream (else one is started)")
    parser.add_argument("--key", default=None, help="with --url: an API key allowed the largest N")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    levels = [int(x) for x in args.streams.split(",")]
    streams = build_streams(max(levels), args.seconds)
    print(f"{len(streams)} streams of {np.mean([s.seconds for s in streams]):.1f} s (held-out speech, pauses "
          f"0.3-3 s), {CHUNK_S * 1000:.0f} ms frames at real-time pace, starts over {args.stagger_s:.0f} s")
    print_header("engine only" if args.engine_only else "service")
    rows = run_engine(args, streams, levels) if args.engine_only else run_service(args, streams, levels)
    best = max((r["streams"] for r in rows if passes(r, args.max_lag_s)), default=0)
    print(f"largest N with lag p95 <= {args.max_lag_s:.1f} s and no errors: {best}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
