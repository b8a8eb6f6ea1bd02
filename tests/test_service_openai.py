"""OpenAI's transcription API through the official `openai` SDK, against the real service on a local Ray.

Shares the session's Ray service (conftest.py `service`). The SDK is the
only client of the OpenAI endpoints; the native protocol (POST
/v1/transcribe, the /v1/stream WebSocket) gives the reference words for the
same audio. Each test keeps at most three streams open at once, so the
model deployment is not scaled up under test_service_ray.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import soundfile
import soxr
import websockets

from captions.exports import to_srt, to_vtt
from client.stream import CaptionStream, pcm_chunks, send_realtime
from deployments.audio_files import decode_file
from deployments.g711 import G711Decoder, encode_g711
from deployments.session import SessionWord
from engine.features import SAMPLE_RATE

from .audio_encode import encode
from .conftest import SERVICE_PORT, SERVICE_URL, Tenants, noise, speech
from .service_client import WS_URL

# OpenAI's Realtime PCM rate.
REALTIME_RATE = 24_000
CHUNK_S = 0.1


def sdk(key: str) -> openai.OpenAI:
    # No retries: a refused request must fail the test at once with the SDK's own error.
    return openai.OpenAI(api_key=key, base_url=f"{SERVICE_URL}/v1", max_retries=0, timeout=120,
                         websocket_base_url=f"ws://127.0.0.1:{SERVICE_PORT}/v1")


def async_sdk(key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=f"{SERVICE_URL}/v1", max_retries=0, timeout=120,
                              websocket_base_url=f"ws://127.0.0.1:{SERVICE_PORT}/v1")


def native_transcribe(audio: bytes, key: str) -> dict:
    """The native HTTP route's transcript of a file: {text, words: [{text, start, end}], ...}."""
    response = httpx.post(f"{SERVICE_URL}/v1/transcribe?language=en", content=audio,
                          headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def float_wav(samples: np.ndarray) -> bytes:
    """16 kHz float32 samples as a wav the native route reads back exactly."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def resample_24k(samples: np.ndarray) -> np.ndarray:
    return soxr.resample(samples, SAMPLE_RATE, REALTIME_RATE).astype(np.float32)


def pcm16(samples: np.ndarray) -> bytes:
    return next(pcm_chunks(samples, len(samples), REALTIME_RATE))


def session_words(words: list[dict]) -> list[SessionWord]:
    return [SessionWord(w["text"], w["start"], w["end"], w.get("utterance_end", False)) for w in words]


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    return speech(5.0, seed=31)


@pytest.fixture(scope="module")
def key(tenants: Tenants) -> str:
    return tenants.keys["acme"]


@pytest.fixture(scope="module")
def model(service, key: str) -> str:
    models = sdk(key).models.list().data
    assert [m.id for m in models] == ["tiny-random"]  # the test checkpoint's directory name
    return models[0].id


@pytest.fixture(scope="module")
def native(service, samples, key: str) -> dict:
    result = native_transcribe(encode(samples, SAMPLE_RATE, "wav"), key)
    assert result["words"], "the random model commits words on this clip"
    return result


def test_every_response_format_gives_the_native_words(service, samples, key: str, model: str, native: dict) -> None:
    client = sdk(key)
    wav = ("noise.wav", encode(samples, SAMPLE_RATE, "wav"), "audio/wav")

    def create(**fields):
        return client.audio.transcriptions.create(file=wav, model=model, language="en", **fields)

    requests = {
        "json": {},
        "text": {"response_format": "text"},
        "srt": {"response_format": "srt"},
        "vtt": {"response_format": "vtt"},
        "verbose": {"response_format": "verbose_json", "timestamp_granularities": ["word", "segment"]},
        "verbose_default": {"response_format": "verbose_json"},
        "prompted": {"prompt": "hello world the quick brown fox"},
    }
    with ThreadPoolExecutor(3) as pool:
        results = dict(zip(requests, pool.map(lambda fields: create(**fields), requests.values())))

    words, text = native["words"], native["text"]
    assert results["json"].text == text
    assert results["json"].usage.type == "duration" and results["json"].usage.seconds == pytest.approx(5.0)
    assert results["text"].strip() == text
    assert results["srt"] == to_srt(session_words(words))
    assert results["vtt"] == to_vtt(session_words(words))
    verbose = results["verbose"]
    assert [(w.word, w.start, w.end) for w in verbose.words] == [(w["text"], w["start"], w["end"]) for w in words]
    assert verbose.text == text and verbose.language == "english" and verbose.duration == pytest.approx(5.0)
    assert " ".join(s.text for s in verbose.segments) == text
    assert verbose.segments[0].start == words[0]["start"] and verbose.segments[-1].end == words[-1]["end"]
    # The prompt reaches the engine as context: the random model decodes the same audio differently.
    assert results["prompted"].text != text
    # Whisper's default: segments without words.
    assert results["verbose_default"].words is None and results["verbose_default"].segments == verbose.segments


def test_compressed_uploads_are_decoded(service, samples, key: str, model: str, native: dict) -> None:
    """flac is lossless: the native words. Lossy files: the native words of what they decode to."""
    client = sdk(key)
    files = {kind: encode(samples, SAMPLE_RATE, kind) for kind in ("flac", "mp3", "ogg", "webm")}

    def openai_text(kind: str) -> str:
        return client.audio.transcriptions.create(file=(f"noise.{kind}", files[kind]), model=model, language="en").text

    def native_text(kind: str) -> str:
        return native_transcribe(float_wav(decode_file(io.BytesIO(files[kind]))), key)["text"]

    with ThreadPoolExecutor(3) as pool:
        got = dict(zip(files, pool.map(openai_text, files)))
        expected = dict(zip(("mp3", "ogg", "webm"), pool.map(native_text, ("mp3", "ogg", "webm"))))
    assert got["flac"] == native["text"]
    for kind in ("mp3", "ogg", "webm"):
        assert got[kind] == expected[kind], kind
        assert got[kind], kind


def test_stream_true_sends_deltas_as_words_are_committed(service, samples, key: str, model: str,
                                                         native: dict) -> None:
    stream = sdk(key).audio.transcriptions.create(file=("noise.wav", encode(samples, SAMPLE_RATE, "wav")),
                                                  model=model, language="en", stream=True)
    events = list(stream)
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert [e.type for e in events][-1] == "transcript.text.done"
    assert len(deltas) >= 2, "words arrive in several batches while the file is fed"
    assert "".join(deltas) == events[-1].text == native["text"]


async def native_stream(pcm: bytes, key: str, rate: int = REALTIME_RATE) -> dict:
    """The native socket's `final` for PCM16 at `rate` sent in CHUNK_S chunks."""
    step = int(2 * rate * CHUNK_S)
    chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    async with CaptionStream(WS_URL, sample_rate=rate, language="en", api_key=key) as stream:
        sender = asyncio.create_task(send_realtime(stream, chunks, CHUNK_S, speed=2.0))
        frames = [frame async for frame in stream.frames()]
        await sender
    assert frames[-1]["type"] == "final", frames[-1]
    return frames[-1]


def test_realtime_transcription_gives_deltas_then_the_native_transcript(service, samples, key: str,
                                                                         model: str) -> None:
    """GA dialect through the SDK's realtime connection; the item's stored transcript is the native one."""
    pcm = pcm16(resample_24k(samples))

    async def run():
        events, sent_commit_at = [], None
        async with async_sdk(key).realtime.connect(extra_query={"intent": "transcription"}) as conn:
            events.append(await conn.recv())
            await conn.session.update(session={"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": REALTIME_RATE},
                "transcription": {"model": model, "language": "en"}, "turn_detection": None}}})
            events.append(await conn.recv())
            step = int(2 * REALTIME_RATE * CHUNK_S)
            started = time.monotonic()

            async def send() -> None:
                nonlocal sent_commit_at
                for i, begin in enumerate(range(0, len(pcm), step)):
                    await asyncio.sleep(max(0.0, started + i * CHUNK_S / 2.0 - time.monotonic()))
                    await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[begin : begin + step]).decode())
                sent_commit_at = len(events)
                await conn.input_audio_buffer.commit()

            sender = asyncio.create_task(send())
            async for event in conn:
                events.append(event)
                if event.type in ("conversation.item.input_audio_transcription.completed", "error"):
                    break
            await sender
        return events, sent_commit_at

    (events, commit_index), native = asyncio.run(run()), asyncio.run(native_stream(pcm, key))
    types = [e.type for e in events]
    assert types[:2] == ["session.created", "session.updated"], types
    assert events[1].session.audio.input.transcription.language == "en"
    completed = events[-1]
    assert completed.type == "conversation.item.input_audio_transcription.completed", events[-1]
    deltas = [e for e in events if e.type == "conversation.item.input_audio_transcription.delta"]
    assert "".join(d.delta for d in deltas) == completed.transcript == native["text"]
    assert completed.transcript and completed.usage.seconds == pytest.approx(5.0, abs=0.05)
    assert types.index("conversation.item.input_audio_transcription.delta") < commit_index, \
        "words arrive while the audio is still being appended"
    committed = events[types.index("input_audio_buffer.committed")]
    assert committed.item_id == completed.item_id and all(d.item_id == completed.item_id for d in deltas)
    assert "conversation.item.added" in types
    # The item is a native stream: its stored transcript holds the native words.
    stream_id = completed.item_id.removeprefix("item_")
    stored = httpx.get(f"{SERVICE_URL}/v1/streams/{stream_id}/transcript.json",
                       headers={"Authorization": f"Bearer {key}"}, timeout=60).json()
    assert stored["status"] == "ended" and stored["words"] == native["words"]


def test_realtime_server_vad_commits_each_utterance(service, key: str, model: str) -> None:
    """turn_detection server_vad: two sentences 1.5 s apart, never committed by the client, become two
    items, each with speech_started, speech_stopped, committed and completed."""
    quiet = lambda s: np.zeros(int(s * SAMPLE_RATE), np.float32)  # noqa: E731
    samples = np.concatenate([speech(3.0, seed=50), quiet(1.5), speech(3.0, seed=51), quiet(1.5)])
    pcm = pcm16(resample_24k(samples))

    async def run():
        got = []
        async with async_sdk(key).realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await conn.session.update(session={"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": REALTIME_RATE},
                "transcription": {"model": model, "language": "en"}, "turn_detection": {"type": "server_vad"}}}})
            step = int(2 * REALTIME_RATE * CHUNK_S)
            started = time.monotonic()

            async def send() -> None:
                for i, begin in enumerate(range(0, len(pcm), step)):
                    await asyncio.sleep(max(0.0, started + i * CHUNK_S / 2.0 - time.monotonic()))
                    await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[begin : begin + step]).decode())

            sender = asyncio.create_task(send())
            async with asyncio.timeout(60):
                async for event in conn:
                    got.append(event)
                    assert event.type != "error", event
                    done = [e for e in got if e.type == "conversation.item.input_audio_transcription.completed"]
                    if len(done) == 2:
                        break
            await sender
        return got

    got = asyncio.run(run())
    updated = next(e for e in got if e.type == "session.updated")
    assert updated.session.audio.input.turn_detection.type == "server_vad"
    by_item: dict[str, list[str]] = {}
    for event in got:
        if getattr(event, "item_id", None):
            by_item.setdefault(event.item_id, []).append(event.type)
    completed = [e for e in got if e.type == "conversation.item.input_audio_transcription.completed"]
    assert len(completed) == 2 and all(c.transcript for c in completed)
    for c in completed:
        kinds = by_item[c.item_id]
        assert kinds.index("input_audio_buffer.speech_started") < kinds.index("input_audio_buffer.speech_stopped") \
            < kinds.index("input_audio_buffer.committed"), kinds
    stopped = [e for e in got if e.type == "input_audio_buffer.speech_stopped"]
    # The first utterance ends after ~3 s of speech and the gate's hangover_s (0.1 s of the silence after it).
    assert 2500 <= stopped[0].audio_end_ms <= 4500, stopped[0]


def test_realtime_beta_dialect_its_errors_and_g711(service, samples, key: str, model: str) -> None:
    """The beta SDK connection: transcription_session.* events; bad events are error events, the session goes on.

    A second item in G.711 mu-law gives the native words of the 8 kHz PCM16 it expands to.
    """
    pcm = pcm16(resample_24k(samples[: 2 * SAMPLE_RATE]))
    pcm_8k = (soxr.resample(samples[: 3 * SAMPLE_RATE], SAMPLE_RATE, 8000) * 32767).astype("<i2")
    ulaw = encode_g711(pcm_8k, "ulaw")

    async def run():
        got = []
        async with async_sdk(key).beta.realtime.connect(model=model, extra_query={"intent": "transcription"}) as conn:
            got.append(await conn.recv())
            await conn.send({"type": "input_audio_buffer.commit", "event_id": "commit-early"})
            got.append(await conn.recv())
            await conn.send({"type": "transcription_session.update",
                             "session": {"turn_detection": {"type": "semantic_vad"}}})
            got.append(await conn.recv())
            await conn.send({"type": "response.create"})
            got.append(await conn.recv())
            await conn.send({"type": "transcription_session.update", "session": {
                "input_audio_format": "pcm16", "turn_detection": None,
                "input_audio_transcription": {"model": model, "language": "en", "prompt": "noise test"}}})
            got.append(await conn.recv())
            await conn.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})
            await conn.send({"type": "input_audio_buffer.commit"})
            await completed(conn, got)
            # The language stays "en"; the prompt is cleared, as the native reference has none.
            await conn.send({"type": "transcription_session.update", "session": {
                "input_audio_format": "g711_ulaw", "input_audio_transcription": {"prompt": ""}}})
            step = int(8000 * CHUNK_S)
            for begin in range(0, len(ulaw), step):  # at 3x real time
                await conn.send({"type": "input_audio_buffer.append",
                                 "audio": base64.b64encode(ulaw[begin : begin + step]).decode()})
                await asyncio.sleep(CHUNK_S / 3)
            await conn.send({"type": "input_audio_buffer.commit"})
            await completed(conn, got)
        return got

    async def completed(conn, got: list) -> None:
        async for event in conn:
            got.append(event)
            if event.type in ("conversation.item.input_audio_transcription.completed", "error"):
                return

    events = asyncio.run(run())
    expanded = G711Decoder("ulaw").decode(ulaw)
    native = asyncio.run(native_stream(expanded, key, rate=8000))
    created, early, vad, unknown, updated = events[:5]
    assert created.type == "transcription_session.created"
    assert early.type == "error" and early.error.code == "input_audio_buffer_commit_empty"
    assert early.error.event_id == "commit-early"
    assert vad.type == "error" and vad.error.param == "session.turn_detection"
    assert unknown.type == "error" and unknown.error.code == "unknown_type"
    assert updated.type == "transcription_session.updated"
    assert updated.session.input_audio_transcription.prompt == "noise test"
    types = [e.type for e in events[5:]]
    assert types[:2] == ["input_audio_buffer.committed", "conversation.item.created"], types
    first = events[5 + types.index("conversation.item.input_audio_transcription.completed")]
    assert first.usage.seconds == pytest.approx(2.0, abs=0.05)
    assert events[-1].type == "conversation.item.input_audio_transcription.completed", events[-1]
    second = [e for e in events[5:] if e.type == "input_audio_buffer.committed"][1]
    assert second.previous_item_id == first.item_id and events[-1].item_id == second.item_id
    assert native["text"] and events[-1].transcript == native["text"]


def test_bad_requests_raise_the_sdks_errors_with_our_messages(service, tenants: Tenants, samples, key: str,
                                                             model: str) -> None:
    wav = ("noise.wav", encode(samples[:SAMPLE_RATE], SAMPLE_RATE, "wav"))
    client = sdk(key)
    with pytest.raises(openai.AuthenticationError) as bad_key:
        sdk("ck_00000000_" + "A" * 43).audio.transcriptions.create(file=wav, model=model)
    assert bad_key.value.code == "unauthorized"
    with pytest.raises(openai.NotFoundError) as unknown_model:
        client.audio.transcriptions.create(file=wav, model="whisper-1")
    assert unknown_model.value.code == "model_not_found" and "tiny-random" in unknown_model.value.message
    with pytest.raises(openai.BadRequestError) as diarized:
        client.audio.transcriptions.create(file=wav, model=model, response_format="diarized_json")
    assert diarized.value.param == "response_format"
    with pytest.raises(openai.BadRequestError) as granularity:
        client.audio.transcriptions.create(file=wav, model=model, timestamp_granularities=["word"])
    assert granularity.value.param == "timestamp_granularities"
    with pytest.raises(openai.BadRequestError) as language:
        client.audio.transcriptions.create(file=wav, model=model, language="xx")
    assert language.value.param == "language" and "unsupported language" in language.value.message
    with pytest.raises(openai.APIStatusError) as not_audio:
        client.audio.transcriptions.create(file=("notes.txt", b"these are not the sounds you are looking for"),
                                           model=model)
    assert not_audio.value.status_code == 415 and not_audio.value.code == "unsupported_format"
    with pytest.raises(openai.APIStatusError) as too_large:
        client.audio.transcriptions.create(file=("big.wav", b"RIFF" + b"\0" * (65 * 1024 * 1024)), model=model)
    assert too_large.value.status_code == 413 and too_large.value.code == "file_too_large"

    async def lone_busy():
        """While lone's one stream is open, its transcription is over quota."""
        async with CaptionStream(WS_URL, language="en", api_key=tenants.keys["lone"]):
            return await asyncio.to_thread(_expect_rate_limited, tenants.keys["lone"], wav, model)

    rate_limited = asyncio.run(lone_busy())
    assert rate_limited.code == "quota_exceeded" and "concurrent streams" in rate_limited.message


def _expect_rate_limited(key: str, wav, model: str) -> openai.RateLimitError:
    with pytest.raises(openai.RateLimitError) as refused:
        sdk(key).audio.transcriptions.create(file=wav, model=model)
    return refused.value


def test_realtime_keys_in_a_header_or_a_browser_subprotocol(service, key: str) -> None:
    async def bad_key():
        async with async_sdk("ck_00000000_" + "A" * 43).realtime.connect(
                extra_query={"intent": "transcription"}) as conn:
            return await conn.recv()

    async def browser(api_key: str):
        """What OpenAI's browser examples send: the key as a subprotocol (browsers cannot set headers)."""
        url = f"ws://127.0.0.1:{SERVICE_PORT}/v1/realtime?intent=transcription"
        async with websockets.connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{api_key}",
                                                         "openai-beta.realtime-v1"]) as ws:
            return ws.subprotocol, json.loads(await ws.recv())

    event = asyncio.run(bad_key())
    assert event.type == "error" and event.error.code == "unauthorized"
    subprotocol, created = asyncio.run(browser(key))
    assert subprotocol == "realtime" and created["type"] == "transcription_session.created"
    _, refused = asyncio.run(browser("ck_00000000_" + "A" * 43))
    assert refused["type"] == "error" and refused["error"]["code"] == "unauthorized"
