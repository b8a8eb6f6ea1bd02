"""Caption a wav file or the microphone through the service, printing words as they arrive.

    python -m client stream FILE.wav --key KEY [--url ws://127.0.0.1:8000/v1/stream] [--language en] [--speed 1]
    python -m client mic --key KEY [--url ...] [--language en]     (needs `pip install .[mic]`)
    python -m client transcribe FILE.wav --key KEY [--url http://127.0.0.1:8000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable
from pathlib import Path

import numpy as np

from client.resilient import ResilientStream
from client.stream import ServiceError, pcm_chunks
from engine.audio import read_audio_file
from engine.features import SAMPLE_RATE

DEFAULT_WS = "ws://127.0.0.1:8000/v1/stream"


def printer(jsonl: bool):
    """on_frame for a ResilientStream: words as they arrive, notes on stderr."""

    async def on_frame(frame: dict) -> None:
        if frame["type"] == "words":
            for word in frame["words"]:
                print(json.dumps(word) if jsonl else word["text"], end="\n" if jsonl else " ", flush=True)
        elif frame["type"] == "ready" and "resume_from_s" in frame:
            print(f"\n[resumed at {frame['resume_from_s']:.1f} s]", file=sys.stderr)

    return on_frame


async def caption(client: ResilientStream, run: Awaitable[dict], jsonl: bool) -> int:
    """Await the stream's final; exit status 0 on final, 1 on an error reconnecting cannot mend."""
    try:
        final = await run
    except ServiceError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    if not jsonl:
        print()
    print(f"[final] {len(final['words'])} words, {client.reconnects} reconnects", file=sys.stderr)
    return 0


async def stream_file(args: argparse.Namespace) -> int:
    samples = read_audio_file(args.file)
    client = ResilientStream(args.url, api_key=args.key, language=args.language, on_frame=printer(args.jsonl))
    print(f"{len(samples) / SAMPLE_RATE:.1f} s of audio", file=sys.stderr)
    return await caption(client, client.run(pcm_chunks(samples, args.chunk_s), args.chunk_s, args.speed), args.jsonl)


async def stream_mic(args: argparse.Namespace) -> int:
    import sounddevice  # optional dependency: pip install .[mic]

    loop = asyncio.get_running_loop()
    live: asyncio.Queue[bytes | None] = asyncio.Queue()

    def on_audio(data: np.ndarray, frames: int, when: object, status: object) -> None:
        loop.call_soon_threadsafe(live.put_nowait, bytes(data))

    client = ResilientStream(args.url, api_key=args.key, language=args.language, on_frame=printer(args.jsonl))
    print("listening; Ctrl-C ends the stream", file=sys.stderr)
    with sounddevice.RawInputStream(samplerate=SAMPLE_RATE, channels=1, dtype="int16",
                                    blocksize=int(SAMPLE_RATE * args.chunk_s), callback=on_audio):
        run = asyncio.ensure_future(client.run_live(live, args.chunk_s))
        try:
            return await caption(client, asyncio.shield(run), args.jsonl)
        except asyncio.CancelledError:
            live.put_nowait(None)  # Ctrl-C: end the stream and wait for its final
            return await caption(client, run, args.jsonl)


def transcribe(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/") + "/v1/transcribe" + (f"?language={args.language}" if args.language else "")
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    request = urllib.request.Request(url, data=args.file.read_bytes(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=3600) as response:
            result = json.load(response)
    except urllib.error.HTTPError as exc:
        result = json.load(exc)
    print(json.dumps(result, indent=2))
    return 0 if "error" not in result else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("stream", "mic"):
        p = sub.add_parser(name)
        if name == "stream":
            p.add_argument("file", type=Path)
            p.add_argument("--speed", type=float, default=1.0, help="x real time (1 = live pace)")
        p.add_argument("--url", default=DEFAULT_WS)
        p.add_argument("--language", default=None, help="auto (default) or a code such as en")
        p.add_argument("--chunk-s", type=float, default=0.1)
        p.add_argument("--key", default=None, help="API key (Authorization: Bearer)")
        p.add_argument("--jsonl", action="store_true", help="one JSON object per word")
    p = sub.add_parser("transcribe")
    p.add_argument("file", type=Path)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--language", default=None)
    p.add_argument("--key", default=None, help="API key (Authorization: Bearer)")
    args = parser.parse_args(argv)
    try:
        if args.command == "transcribe":
            return transcribe(args)
        return asyncio.run(stream_file(args) if args.command == "stream" else stream_mic(args))
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
