"""Tenants, quotas, transcripts and viewers through the real service on a local Ray.

Shares the session's Ray service (conftest.py `service`) and runs after
test_service_ray.py, whose replica-placement tests want a quiet router.
Tenants: acme (no practical limits), globex (a second tenant), solo (one
stream at a time).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import msgpack
import pytest
import soundfile
import websockets

from captions.exports import to_srt, to_vtt
from captions.store import StoredWord
from client.stream import CaptionStream, ServiceError, pcm_chunks, send_realtime

from .conftest import SERVICE_URL, Tenants, noise, speech
from .service_client import WS_URL, send_and_drop, stream_samples


@pytest.fixture(scope="module")
def samples():
    return speech(5.0, seed=21)


async def error_codes(key_headers: dict[str, str], url: str = WS_URL) -> list[str]:
    """Open a socket with these headers, send `start`; the codes of the error frames until it closes."""
    start = msgpack.packb({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "language": "en"})
    codes = []
    async with websockets.connect(url, additional_headers=key_headers) as ws:
        try:
            await ws.send(start)
        except websockets.ConnectionClosed:
            pass  # a bad key is answered without waiting for `start`; its error frame is still buffered
        try:
            async for raw in ws:
                frame = msgpack.unpackb(raw)
                if frame["type"] == "error":
                    codes.append(frame["code"])
        except websockets.ConnectionClosed:
            pass
    return codes


def get(path: str, key: str | None = None, **params: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{SERVICE_URL}{path}", headers=headers, params=params, timeout=60)


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def test_transcripts_match_the_client_and_other_tenants_see_nothing(service, tenants: Tenants, samples) -> None:
    acme, globex = tenants.keys["acme"], tenants.keys["globex"]
    streamed = asyncio.run(stream_samples(samples, acme))
    session_id, words, final = streamed.session_id, streamed.words, streamed.final
    assert words, "the random model commits words on this clip"
    assert final["words"] == words

    transcript = get(f"/v1/streams/{session_id}/transcript.json", acme)
    assert transcript.status_code == 200
    body = transcript.json()
    assert body["status"] == "ended" and body["stream_id"] == session_id
    assert body["words"] == words and body["text"] == final["text"]
    stored = [StoredWord(i, w["text"], w["start"], w["end"], w.get("utterance_end", False))
              for i, w in enumerate(words)]
    assert get(f"/v1/streams/{session_id}/transcript.vtt", acme).text == to_vtt(stored)
    assert get(f"/v1/streams/{session_id}/transcript.srt", acme).text == to_srt(stored)

    # Another tenant: the stream does not exist for it, whatever it asks.
    for fmt in ("json", "vtt", "srt"):
        response = get(f"/v1/streams/{session_id}/transcript.{fmt}", globex)
        assert (response.status_code, error_code(response)) == (404, "unknown_stream")
    response = get(f"/v1/streams/{session_id}/events", globex)
    assert (response.status_code, error_code(response)) == (404, "unknown_stream")
    response = httpx.post(f"{SERVICE_URL}/v1/streams/{session_id}/viewer-tokens", json={},
                          headers={"Authorization": f"Bearer {globex}"}, timeout=60)
    assert (response.status_code, error_code(response)) == (404, "unknown_stream")
    # Unknown ids and malformed ones.
    assert error_code(get("/v1/streams/0123abcd/transcript.json", acme)) == "unknown_stream"
    assert error_code(get("/v1/streams/bad%20id/transcript.json", acme)) == "bad_request"
    assert error_code(get(f"/v1/streams/{session_id}/transcript.pdf", acme)) == "bad_request"


def test_another_tenant_cannot_resume_a_dropped_stream(service, tenants: Tenants, samples) -> None:
    acme, globex = tenants.keys["acme"], tenants.keys["globex"]

    async def run():
        dropped = await send_and_drop(samples, acme, 3.0)
        resume = {"session_id": dropped.session_id, "token": dropped.resume_token}
        # The right id and token, the wrong tenant: refused like a missing session.
        with pytest.raises(ServiceError) as refused:
            async with CaptionStream(WS_URL, language="en", api_key=globex, resume=resume):
                pass
        frames = []
        async with CaptionStream(WS_URL, language="en", api_key=acme, resume=resume) as resumed:
            async for frame in resumed.frames():
                frames.append(frame)
        return dropped.session_id, refused.value.code, frames

    session_id, code, frames = asyncio.run(run())
    assert code == "resume_failed"
    assert frames[-1]["type"] == "final" and frames[-1]["session_id"] == session_id
    assert get(f"/v1/streams/{session_id}/transcript.json", acme).json()["words"] == frames[-1]["words"]


def test_bad_keys_are_unauthorized_while_a_parallel_stream_goes_on(service, tenants: Tenants, samples) -> None:
    acme = tenants.keys["acme"]
    key_id = acme.split("_")[1]
    bad = {
        "missing": {},
        "unknown key id": {"Authorization": "Bearer ck_00000000_" + "A" * 43},
        "wrong secret": {"Authorization": f"Bearer ck_{key_id}_" + "A" * 43},
        "not bearer": {"Authorization": f"Basic {acme}"},
    }

    async def run():
        good = asyncio.create_task(stream_samples(samples, acme))
        codes = await asyncio.gather(*(error_codes(headers) for headers in bad.values()),
                                     error_codes({}, f"{WS_URL}?key=ck_nope"))
        return await good, codes

    good, codes = asyncio.run(run())
    assert codes == [["unauthorized"]] * (len(bad) + 1)
    assert good.words and good.final["words"] == good.words
    response = get("/v1/streams/0123abcd/transcript.json")
    assert (response.status_code, error_code(response)) == (401, "unauthorized")
    response = httpx.post(f"{SERVICE_URL}/v1/transcribe", content=b"RIFF", timeout=60)
    assert (response.status_code, error_code(response)) == (401, "unauthorized")


def test_concurrent_stream_limit_is_quota_exceeded(service, tenants: Tenants, samples) -> None:
    solo = {"Authorization": f"Bearer {tenants.keys['solo']}"}

    async def run():
        async with CaptionStream(WS_URL, language="en", api_key=tenants.keys["solo"]) as first:
            await first.send_audio(next(iter(pcm_chunks(samples[:16000], 1.0))))
            second = await error_codes(solo)
            await first.end()
            final = [f async for f in first.frames()][-1]
        # The slot is free again once the first stream has ended.
        again = (await stream_samples(samples[: 2 * 16000], tenants.keys["solo"])).final
        return second, final, again

    second, final, again = asyncio.run(run())
    assert second == ["quota_exceeded"]
    assert final["type"] == "final" and again["type"] == "final"


def test_a_late_viewer_gets_recent_captions_then_follows_live(service, tenants: Tenants, samples) -> None:
    acme = tenants.keys["acme"]
    viewer: dict = {}

    async def follow(stream: CaptionStream, seen: list[dict]) -> None:
        """Joins once the publisher has words, i.e. late."""
        if viewer:
            return
        session_id = stream.session_id
        viewer["joined_after"] = list(seen)
        async with httpx.AsyncClient(base_url=SERVICE_URL, timeout=60) as client:
            minted = await client.post(f"/v1/streams/{session_id}/viewer-tokens", json={"ttl_s": 600},
                                       headers={"Authorization": f"Bearer {acme}"})
        assert minted.status_code == 201
        viewer["task"] = asyncio.create_task(read_events(session_id, minted.json()["token"]))

    async def read_events(session_id: str, token: str) -> list[dict]:
        events = []
        async with httpx.AsyncClient(base_url=SERVICE_URL, timeout=60) as client:
            async with client.stream("GET", f"/v1/streams/{session_id}/events", params={"token": token}) as feed:
                async for line in feed.aiter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[len("data: "):]))
        return events

    async def run():
        result = await stream_samples(samples, acme, on_words=follow)
        return result, await viewer["task"]

    streamed, events = asyncio.run(run())
    words, final = streamed.words, streamed.final
    assert viewer["joined_after"], "the viewer joined after the first words"
    seen = [w for e in events if e["type"] == "words" for w in e["words"]]
    # The backlog brought the words committed before the viewer joined; then every later one.
    assert seen == words
    assert events[-1]["type"] == "final" and events[-1]["words"] == final["words"]


def test_expired_viewer_token_is_refused(service, tenants: Tenants, samples) -> None:
    acme = tenants.keys["acme"]
    session_id = asyncio.run(stream_samples(samples[: 2 * 16000], acme)).session_id
    minted = httpx.post(f"{SERVICE_URL}/v1/streams/{session_id}/viewer-tokens", json={"ttl_s": 0.05},
                        headers={"Authorization": f"Bearer {acme}"}, timeout=60)
    token = minted.json()["token"]
    time.sleep(0.5)
    response = get(f"/v1/streams/{session_id}/transcript.json", token=token)
    assert (response.status_code, error_code(response)) == (401, "token_expired")
    response = httpx.post(f"{SERVICE_URL}/v1/streams/{session_id}/viewer-tokens", content=b"{" * 5000,
                          headers={"Authorization": f"Bearer {acme}"}, timeout=60)
    assert (response.status_code, error_code(response)) == (400, "bad_request")


def test_metrics_count_per_tenant_and_keys_stay_out_of_the_logs(service, tenants: Tenants) -> None:
    import ray

    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(get("/metrics").text) for s in family.samples
    }
    # Earlier tests in this module opened acme streams and had solo refused once.
    assert samples[("captions_streams_opened_total", (("tenant", "acme"),))] >= 5
    assert samples[("captions_audio_seconds_total", (("tenant", "acme"),))] > 0
    assert samples[("captions_rejections_total", (("reason", "concurrent_streams"), ("tenant", "solo")))] == 1
    # ?key= puts the key in URLs: neither Serve's proxy nor the replicas may log it.
    response = httpx.get(f"{SERVICE_URL}/v1/streams/0123abcd/transcript.json",
                         params={"key": tenants.keys["globex"]}, timeout=60)
    assert error_code(response) == "unknown_stream"
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    # ck_<key id>_<secret>; the secret itself may contain "_".
    secrets = [key.split("_", 2)[2] for key in tenants.keys.values()]
    leaked = [path for path in logs.rglob("*") if path.is_file()
              and any(secret in path.read_text(errors="replace") for secret in secrets)]
    assert not leaked


def test_words_a_client_saw_survive_an_ingest_restart(service, tenants: Tenants, samples) -> None:
    """The ingest replica dies mid-stream; its replacement serves every word the client had received.

    Last in the module: it replaces the ingest replica (and its in-process counters).
    """
    import ray

    acme = tenants.keys["acme"]

    async def run():
        seen: list[dict] = []
        async with CaptionStream(WS_URL, language="en", api_key=acme) as stream:
            sender = asyncio.create_task(send_realtime(stream, pcm_chunks(samples, 0.1), 0.1, 1.0))
            async for frame in stream.frames():
                assert frame["type"] != "error", frame
                if frame["type"] == "words":
                    seen += frame["words"]
                    break
            for actor in ray.util.list_named_actors(all_namespaces=True):
                if actor["name"].startswith("SERVE_REPLICA::captions#Ingest#"):
                    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        return stream.session_id, seen

    session_id, seen = asyncio.run(run())
    assert seen
    deadline = time.monotonic() + 180
    while True:  # until Serve has started the replacement ingest replica
        try:
            response = get(f"/v1/streams/{session_id}/transcript.json", acme)
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code < 500:
            break
        assert time.monotonic() < deadline, "no ingest replica came back"
        time.sleep(1.0)
    assert response.status_code == 200, response.text
    # Words are stored before the frame carrying them is sent: none the client saw is missing.
    assert response.json()["words"][: len(seen)] == seen
