"""The service on a real local Ray: real HTTP proxy, real WebSockets, real replicas.

One Ray cluster and one deployment for the test session (the `service`
fixture in conftest.py; start-up is the slow part on 2 cores). The model
deployment autoscales between 2 and 3 replicas on open streams (target 2
per replica); the scale-up test runs last. Streams here are tenant acme's.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
import soundfile

from client.stream import CaptionStream
from deployments.run import APP, app_config, deploy

from .conftest import SERVICE_URL, Tenants, noise, service_config, speech
from .service_client import WS_URL, send_and_drop, stream_samples


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("service") / "speech.wav"
    soundfile.write(str(path), speech(6.0, seed=11), 16_000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def samples(wav: Path):
    return soundfile.read(str(wav), dtype="float32")[0]


@pytest.fixture(scope="module")
def key(tenants: Tenants) -> str:
    """acme's API key: a tenant without practical limits."""
    return tenants.keys["acme"]


def model_replicas(serve) -> int:
    status = serve.status().applications[APP].deployments["ASRModel"]
    return status.replica_states.get("RUNNING", 0)


def plain(words: list[dict]) -> list[dict]:
    return [{k: w[k] for k in ("text", "start", "end")} for w in words]


def cli_words(path: Path, model: Path) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "engine.transcribe", str(path), "--model", str(model), "--language", "en",
         "--chunk-ms", "100", "--dtype", "float32", "--vad", "--max-step-s", "0.5", "--jsonl"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    return [{k: w[k] for k in ("text", "start", "end")} for w in lines if "type" not in w]


async def raw_exchange(frames: list[bytes | str], key: str | None) -> list[dict]:
    """Send frames on a fresh socket; every server frame until it closes (or 20 s)."""
    import websockets

    got = []
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with websockets.connect(WS_URL, additional_headers=headers) as ws:
        for f in frames:
            await ws.send(f)

        async def read() -> None:
            async for raw in ws:
                got.append(msgpack.unpackb(raw))

        try:
            await asyncio.wait_for(read(), 20)
        except websockets.ConnectionClosed:
            pass
    return got


def start_frame(**overrides) -> bytes:
    fields = {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "language": "en", **overrides}
    return msgpack.packb(fields, use_bin_type=True)


def audio_frame(data: bytes) -> bytes:
    return msgpack.packb({"type": "audio", "data": data}, use_bin_type=True)


def test_killed_model_replica_loses_no_committed_word(service, samples, key: str) -> None:
    """Two streams on the two replicas; one replica is killed after the first words arrive.

    First in the module: with no earlier sessions the router puts the two
    streams on different replicas, so whichever replica dies held one.
    """
    import ray

    killed: list[str] = []
    before_kill: dict[int, list[dict]] = {}

    async def kill_once(stream, words) -> None:
        if killed:
            return
        for name in ray.util.list_named_actors(all_namespaces=True):
            if name["name"].startswith(f"SERVE_REPLICA::{APP}#ASRModel#"):
                ray.kill(ray.get_actor(name["name"], namespace=name["namespace"]), no_restart=True)
                killed.append(name["name"])
                break
        before_kill.update({id(stream): list(words)})

    async def run():
        return await asyncio.gather(stream_samples(samples, key, on_words=kill_once), stream_samples(samples, key))

    results = asyncio.run(run())
    assert killed
    assert sum(r.final["rehomes"] for r in results) >= 1, "one stream lived on the killed replica"
    for r in results:
        # Every committed word reached the client once, in order, and is in the final transcript.
        assert r.final["words"] == r.words
        assert r.final["text"] == " ".join(w["text"] for w in r.words)
    for prefix in before_kill.values():
        assert any(r.words[: len(prefix)] == prefix for r in results)


def test_websocket_words_equal_engine_cli_while_bad_streams_fail(service, wav: Path, samples, tiny_dir: Path,
                                                                 key: str) -> None:
    """One good stream through the proxy gives the CLI's words; bad frames on other sockets get their codes."""
    pcm = (noise(1.0, seed=2) * 32767).astype("<i2").tobytes()
    bad_cases = {
        "bad_frame": [start_frame(), "a text frame"],
        "unsupported_encoding": [start_frame(encoding="mp3")],
        "frame_too_large": [start_frame(), audio_frame(b"\x00" * (300 * 1024))],
        "bad_audio": [start_frame(), audio_frame(b"\x00\x01\x02")],
        "no_start": [audio_frame(pcm)],
        # 8 s at once: more than ingest.max_pending_s ahead of the model.
        "overloaded": [start_frame(), audio_frame((noise(8.0, seed=3) * 32767).astype("<i2").tobytes())],
        "unknown_type": [start_frame(), msgpack.packb({"type": "subtitles"}), audio_frame(pcm),
                         msgpack.packb({"type": "end"})],
    }

    async def run():
        good = asyncio.create_task(stream_samples(samples, key, speed=2.0))
        results = await asyncio.gather(*(raw_exchange(f, key) for f in bad_cases.values()))
        return await good, dict(zip(bad_cases, results))

    good, bad = asyncio.run(run())
    expected = cli_words(wav, tiny_dir)
    assert expected, "the random model commits words on this clip"
    # The CLI prints text and times; the service also marks the words that ended an utterance.
    assert plain(good.words) == expected
    assert good.final["text"] == " ".join(w["text"] for w in expected) and good.final["words"] == good.words

    def codes(frames: list[dict]) -> list[str]:
        return [f["code"] for f in frames if f["type"] == "error"]

    assert codes(bad["bad_frame"]) == ["bad_frame"]
    assert codes(bad["unsupported_encoding"]) == ["unsupported_encoding"]
    assert codes(bad["frame_too_large"]) == ["frame_too_large"]
    assert codes(bad["bad_audio"]) == ["bad_audio"]
    assert codes(bad["no_start"]) == ["bad_frame"]
    assert codes(bad["overloaded"]) == ["overloaded"]
    # Unknown types are answered and skipped: the stream still ends with its final frame.
    assert codes(bad["unknown_type"]) == ["unknown_type"]
    assert bad["unknown_type"][-1]["type"] == "final"


def test_dropped_socket_resumes_and_gets_missed_words(service, samples, key: str) -> None:
    async def run():
        stream = await send_and_drop(samples, key, 4.0)
        # The socket is gone before any words were read; the session goes on without it.
        await asyncio.sleep(3.0)
        resumed = CaptionStream(WS_URL, language="en", api_key=key,
                                resume={"session_id": stream.session_id, "token": stream.resume_token})
        words, final = [], None
        async with resumed:
            assert resumed.session_id == stream.session_id
            async for frame in resumed.frames():
                if frame["type"] == "words":
                    words += frame["words"]
                final = frame
        return words, final

    words, final = asyncio.run(run())
    assert final["type"] == "final" and words and final["words"] == words, final

    async def bad_token():
        return await raw_exchange([start_frame(resume={"session_id": "nope", "token": "x"})], key)

    assert [f["code"] for f in asyncio.run(bad_token()) if f["type"] == "error"] == ["resume_failed"]


def test_healthz_and_transcribe(service, wav: Path, key: str) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{SERVICE_URL}/healthz", timeout=30) as response:
        assert json.load(response)["status"] == "ok"
    request = urllib.request.Request(f"{SERVICE_URL}/v1/transcribe?language=en", data=wav.read_bytes(),
                                     method="POST", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        result = json.load(response)
    assert result["words"] and result["audio_s"] == pytest.approx(6.0)


async def stream_until(stop: asyncio.Event, key: str, seed: int) -> dict:
    """A stream of speech (looped) at real-time pace until `stop` is set; its final frame."""
    pcm = (speech(10.0, seed=seed) * 32767).astype("<i2").tobytes()
    step = 3200  # 100 ms of 16-bit samples
    async with CaptionStream(WS_URL, language="en", api_key=key) as stream:
        async def send() -> None:
            started, i = time.monotonic(), 0
            while not stop.is_set():
                await asyncio.sleep(max(0.0, started + 0.1 * (i + 1) - time.monotonic()))
                await stream.send_audio(pcm[(i * step) % len(pcm) :][:step])
                i += 1
            await stream.end()

        sender = asyncio.create_task(send())
        async for frame in stream.frames():
            assert frame["type"] != "error", frame
            if sender.done():
                sender.result()  # a failed sender fails the test instead of leaving the stream waiting
            if frame["type"] == "final":
                await sender
                return frame
    raise AssertionError("socket closed without a final frame")


def test_streams_stay_put_when_a_replica_is_added(service, key: str) -> None:
    """6 open streams on 2 replicas (target 2 per replica) scale the model to 3; none moves,
    and a stream opened after that goes to the new, least-loaded replica."""
    from ray import serve

    handle = serve.get_deployment_handle("ASRModel", app_name=APP)

    async def loads() -> dict[str, float]:
        return {r["replica"]: r["open_streams"] for r in await handle.broadcast("stats").results_async()}

    async def run():
        deadline = time.monotonic() + 120
        while model_replicas(service) != 2:  # the killed replica's replacement
            assert time.monotonic() < deadline
            await asyncio.sleep(1.0)
        first = set(await loads())
        stop = asyncio.Event()
        streams = [asyncio.create_task(stream_until(stop, key, seed=20 + i)) for i in range(6)]
        deadline = time.monotonic() + 120
        while model_replicas(service) < 3:
            assert time.monotonic() < deadline, "no third replica within 120 s"
            await asyncio.sleep(1.0)
        while len(now := await loads()) < 3:
            await asyncio.sleep(0.5)
        (added,) = set(now) - first
        late = asyncio.create_task(stream_samples(speech(6.0, seed=30), key))
        await asyncio.sleep(3.0)
        during = await loads()
        stop.set()
        return await asyncio.gather(*streams), await late, now, during, added

    results, late, before, during, added = asyncio.run(run())
    assert all(final["rehomes"] == 0 for final in results), "no stream moved when the replica was added"
    assert before[added] == 0 and during[added] == 1, "the new stream went to the new replica"
    assert late.final["rehomes"] == 0


def test_scale_down_drains_a_replica_and_its_streams_rehome(service, samples, tiny_dir: Path, tenants: Tenants,
                                                            key: str) -> None:
    """Lowering max_replicas 3 -> 2 mid-stream drains a replica; its streams continue elsewhere."""
    assert model_replicas(service) == 3, "runs after the scale-up test"
    config = service_config(tiny_dir, tenants)
    model = next(d for d in app_config(config)["deployments"] if d["name"] == "ASRModel")
    model["autoscaling_config"]["max_replicas"] = 2
    redeployed: list[asyncio.Future] = []

    async def scale_down(stream, words) -> None:
        if not redeployed:  # a config-only change: Serve updates in place, without restarts
            redeployed.append(asyncio.get_running_loop().run_in_executor(None, deploy, config, 120))

    async def run():
        # Six streams opened together spread over all three replicas.
        results = await asyncio.gather(stream_samples(samples, key, on_words=scale_down),
                                       *(stream_samples(samples, key) for _ in range(5)))
        await redeployed[0]
        return results

    results = asyncio.run(run())
    deadline = time.monotonic() + 60
    while model_replicas(service) != 2:
        assert time.monotonic() < deadline, "the third replica was not scaled down"
        time.sleep(1.0)
    assert sum(r.final["rehomes"] for r in results) >= 1
    for r in results:
        assert r.final["words"] == r.words


def test_non_speech_gives_no_words_and_silence_an_empty_final(service, key: str) -> None:
    """The 14 non-speech signals (20-60 s: silence, noise colours and levels, tone, hum, chirp,
    clicks), streamed together: the ingest's voice activity gate leaves them out, so not one word
    (even from this random model, which writes words on anything it hears); a silent stream ends
    with an empty final."""
    from training.nonspeech import evaluation_signals

    signals = evaluation_signals()

    async def run():
        # 3x real time: nothing reaches a model replica, so nothing is pending for long.
        return await asyncio.gather(*(stream_samples(make(), key, speed=3.0) for _, make in signals))

    results = asyncio.run(run())
    heard = {name: r.final["text"] for (name, _), r in zip(signals, results) if r.words or r.final["words"]}
    assert heard == {}
    silent = results[0].final
    assert silent["text"] == "" and silent["words"] == [] and silent["rehomes"] == 0


def test_idle_sockets_are_closed_and_free_their_slot(service, tenants: Tenants) -> None:
    """A socket that never sends `start`, and a started stream that sends only junk and then
    nothing, are closed with `idle_timeout` (the test service's limits are 5 s); the one-stream
    tenant can open a stream right after."""
    solo = tenants.keys["solo"]

    async def run():
        t0 = time.monotonic()
        silent, idle = await asyncio.gather(
            raw_exchange([], solo),
            raw_exchange([start_frame(), msgpack.packb({"type": "flood"}), msgpack.packb({"type": "noise"})], solo),
        )
        waited = time.monotonic() - t0
        async with CaptionStream(WS_URL, language="en", api_key=solo) as stream:  # the slot is free again
            await stream.end()
            final = [f async for f in stream.frames()][-1]
        return silent, idle, waited, final

    silent, idle, waited, final = asyncio.run(run())
    assert [f["code"] for f in silent if f["type"] == "error"] == ["idle_timeout"]
    assert idle[0]["type"] == "ready" and idle[-1]["type"] == "error" and idle[-1]["code"] == "idle_timeout"
    assert 5.0 <= waited < 15.0
    assert final["type"] == "final" and final["text"] == ""


# ------------------------------------------------------------------ chaos: one fault, eight streams
def kill_actor(prefix: str) -> str:
    """SIGKILL-like end of the first named Serve actor whose name starts with `prefix` (Serve restarts it)."""
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith(prefix):
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
            return actor["name"]
    raise AssertionError(f"no actor named {prefix}*")


def kill_proxy() -> None:
    """The HTTP proxy dies: Serve's proxy actor and the HAProxy processes it runs, if they outlive it."""
    import psutil

    haproxies = [p for p in psutil.process_iter(["cmdline"]) if "bin/haproxy" in " ".join(p.info["cmdline"] or [])]
    assert haproxies, "no HAProxy process (deployments/run.py: CLUSTER_ENV)"
    kill_actor("SERVE_PROXY_ACTOR")
    for proc in haproxies:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass  # it went with the actor


def assert_nothing_lost_or_repeated(words: list[dict], final: dict, seen_before: list[dict]) -> None:
    """The client got every committed word once, in order; the final transcript is those words."""
    assert final["words"] == words
    # A word may start up to half an encoder token (40 ms) before the previous one (engine/policy.py).
    back = [i for i in range(1, len(words)) if words[i]["start"] < words[i - 1]["start"] - 0.0401]
    assert not back, " | ".join(" ".join(f"{w['text'][:6]}@{w['start']}-{w['end']}" for w in words[max(0, i - 3) : i + 2])
                                for i in back) + f" (fault after {len(seen_before)} words)"
    assert len({(w["text"], w["start"]) for w in words}) == len(words), words
    assert words[: len(seen_before)] == seen_before


@pytest.mark.parametrize("victim", ["ingest", "proxy", "model"])
def test_one_fault_under_eight_streams_loses_and_repeats_no_word(service, key: str, victim: str) -> None:
    """8 resilient streams (client.resilient: they keep unacknowledged audio and resume on their own);
    once words flow, the ingest replica, the HTTP proxy or a model replica is killed. Every stream
    finishes with each committed word exactly once; streams of an ingest replica that died continue
    on its replacement from the transcript database."""
    from client.resilient import ResilientStream

    kill = {"ingest": lambda: kill_actor(f"SERVE_REPLICA::{APP}#Ingest#"), "proxy": kill_proxy,
            "model": lambda: kill_actor(f"SERVE_REPLICA::{APP}#ASRModel#")}[victim]
    clients = [ResilientStream(WS_URL, api_key=key, language="en") for _ in range(8)]
    before: list[list[dict]] = []  # each stream's words when the fault came

    async def on_frame(frame: dict) -> None:
        if frame["type"] == "words" and not before and sum(len(c.words) for c in clients) >= 8:
            before.extend(list(c.words) for c in clients)
            kill()

    async def one(i: int) -> tuple[dict, float]:
        clients[i].on_frame = on_frame
        pcm = (speech(12.0, seed=40 + i) * 32767).astype("<i2").tobytes()
        started = time.monotonic()
        final = await clients[i].run([pcm[b : b + 3200] for b in range(0, len(pcm), 3200)], 0.1)
        return final, time.monotonic() - started

    async def run():
        return await asyncio.gather(*(one(i) for i in range(8)))

    results = asyncio.run(run())
    assert before, "the fault happened while the streams ran"
    for client, (final, _), seen in zip(clients, results, before):
        assert_nothing_lost_or_repeated(client.words, final, seen)
        assert len(client.words) > len(seen), "words came after the fault too"
    slowest = max(took for _, took in results)
    print(f"\n{victim} killed: {sum(c.reconnects for c in clients)} reconnects, "
          f"slowest stream {slowest:.1f} s for 12 s of audio")


def test_the_client_cli_streams_a_file(service, wav: Path, key: str) -> None:
    """`python -m client stream` (the resilient client) prints the words and exits 0 on the final."""
    proc = subprocess.run(
        [sys.executable, "-m", "client", "stream", str(wav), "--key", key, "--url", WS_URL, "--language", "en",
         "--speed", "4", "--jsonl"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    words = [json.loads(line) for line in proc.stdout.splitlines()]
    assert words and all({"text", "start", "end"} <= set(w) for w in words)
    assert "[final]" in proc.stderr and "0 reconnects" in proc.stderr
