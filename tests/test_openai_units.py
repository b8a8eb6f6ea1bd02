"""The OpenAI-compatible surface without Ray: uploads, form fields, response formats, Realtime events, errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile
from starlette.datastructures import FormData, Headers, UploadFile

from captions.errors import QuotaExceeded, Unauthorized
from captions.exports import build_cues, to_srt
from deployments import openai_formats as fmt
from deployments import openai_realtime_events as events
from deployments.audio_files import UnsupportedFormat, decode_file, sniff_demuxer
from deployments.g711 import G711Decoder, encode_g711
from deployments.openai_errors import OpenAIError, from_service_error
from deployments.openai_params import parse_transcription_form, served_model_id
from deployments.relay import RelayError
from deployments.session import Session, SessionWord
from engine.errors import BadAudioError
from engine.features import SAMPLE_RATE
from engine.vad import VadConfig

from .audio_encode import FORMATS, encode
from .conftest import noise

MODELS = ("tiny-en", "models/tiny-en")


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 0.7 * t)).astype(np.float32)


# ------------------------------------------------------------------ uploads
@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_every_upload_format_decodes_to_the_same_sound(kind: str) -> None:
    source = tone(2.0)
    decoded = decode_file(io.BytesIO(encode(source, SAMPLE_RATE, kind)))
    assert decoded.dtype == np.float32 and np.abs(decoded).max() <= 1.0
    # AAC adds priming and padding (a frame or two); the others keep the length.
    assert len(decoded) / SAMPLE_RATE == pytest.approx(2.0, abs=0.15 if kind == "m4a" else 0.005)
    # The same sound, allowing for the codec's delay (AAC's priming samples).
    n = SAMPLE_RATE
    best = max(np.corrcoef(source[:n], decoded[lag : lag + n])[0, 1] for lag in range(0, 2048, 8))
    assert best > 0.95, kind


def test_a_wav_decodes_to_exactly_what_soundfile_reads() -> None:
    """So POST /v1/audio/transcriptions and POST /v1/transcribe hear the same samples."""
    wav = encode(noise(1.0, seed=3), SAMPLE_RATE, "wav")
    expected, _ = soundfile.read(io.BytesIO(wav), dtype="float32")
    assert np.array_equal(decode_file(io.BytesIO(wav)), expected)


def test_stereo_and_other_rates_are_averaged_and_resampled() -> None:
    left, right = tone(1.0), np.zeros(SAMPLE_RATE, np.float32)
    buffer = io.BytesIO()
    stereo_32k = np.stack([left, right], axis=1).repeat(2, axis=0)  # crude 32 kHz, two channels
    soundfile.write(buffer, stereo_32k, 32_000, format="WAV", subtype="FLOAT")
    decoded = decode_file(io.BytesIO(buffer.getvalue()))
    assert len(decoded) == pytest.approx(SAMPLE_RATE, abs=2)
    assert np.abs(decoded).max() == pytest.approx(np.abs(left).max() / 2, rel=0.05)


@pytest.mark.parametrize("head", [b"", b"hello world, not audio", b"#EXTM3U\n#EXT-X-VERSION:3\n", b"\xff\xf1\x50\x80"])
def test_unknown_containers_are_refused_before_ffmpeg_sees_them(head: bytes) -> None:
    """Text, HLS playlists (which make FFmpeg open other files) and AAC ADTS are not sniffed as audio."""
    with pytest.raises(UnsupportedFormat):
        sniff_demuxer(head)
    with pytest.raises(UnsupportedFormat):
        decode_file(io.BytesIO(head))


def test_a_truncated_file_is_bad_audio() -> None:
    flac = encode(tone(1.0), SAMPLE_RATE, "flac")
    with pytest.raises(BadAudioError) as err:
        decode_file(io.BytesIO(flac[:60]))
    assert err.value.code == "bad_audio"


def wav_file(samples: np.ndarray, rate: int, subtype: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize("wav", [
    # NaN survives clipping: the model would hear it.
    wav_file(np.array([0.1, np.nan, -0.1, np.inf] * 400, np.float32), SAMPLE_RATE, "FLOAT"),
    # 1 Hz: each sample would become 16000, a few KB asking for hours of audio.
    wav_file(np.zeros(400, np.float32), 1, "PCM_16"),
    wav_file(np.zeros(400, np.float32), 200_000, "PCM_16"),
], ids=["nan", "1_hz", "200_khz"])
def test_uploads_with_nan_or_absurd_rates_are_bad_audio(wav: bytes) -> None:
    """Both upload paths (FFmpeg for the OpenAI route, libsndfile for POST /v1/transcribe) refuse them."""
    from deployments.ingest import _read_audio

    for decode in (lambda: decode_file(io.BytesIO(wav)), lambda: _read_audio(wav)):
        with pytest.raises(BadAudioError) as err:
            decode()
        assert err.value.code == "bad_audio"


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_g711_expands_to_the_pcm16_it_encodes(law: str) -> None:
    source = (tone(0.5)[::2] * 32767).astype(np.int16)  # 8 kHz
    data = encode_g711(source, law)
    assert len(data) == len(source)
    decoder = G711Decoder(law)
    pcm = np.frombuffer(decoder.decode(data[:1001]) + decoder.decode(data[1001:]), "<i2")
    assert len(pcm) == len(source)
    # 8-bit companding: the error grows with the level, a few percent of it at most.
    assert np.abs(pcm.astype(np.int32) - source).max() < 0.04 * np.abs(source).max()


# ------------------------------------------------------------------ form fields
def form(**fields: object) -> FormData:
    file = UploadFile(io.BytesIO(b"RIFF"), filename="a.wav", headers=Headers({}))
    items: list[tuple[str, object]] = [("file", file)]
    for name, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            items.append((name.replace("__", "[]"), v))
    return FormData(items)


def refused(**fields: object) -> OpenAIError:
    with pytest.raises(OpenAIError) as err:
        parse_transcription_form(form(**fields), MODELS)
    return err.value


def test_form_fields_become_a_typed_request() -> None:
    params = parse_transcription_form(form(model="tiny-en", language="en", prompt="Qwen", temperature="0",
                                           response_format="verbose_json",
                                           timestamp_granularities__=["word"], chunking_strategy="auto"), MODELS)
    assert (params.language, params.prompt, params.response_format) == ("en", "Qwen", "verbose_json")
    assert params.words and not params.segments and not params.stream
    default = parse_transcription_form(form(model="models/tiny-en", language="auto", stream="true"), MODELS)
    assert default.language is None and default.response_format == "json" and default.stream
    assert parse_transcription_form(form(model="tiny-en", response_format="verbose_json"), MODELS).segments


@pytest.mark.parametrize("fields,code,param", [
    ({}, "bad_request", "model"),
    ({"model": "whisper-1"}, "model_not_found", "model"),
    ({"model": "tiny-en", "language": "klingon"}, "bad_request", "language"),
    ({"model": "tiny-en", "response_format": "diarized_json"}, "bad_request", "response_format"),
    ({"model": "tiny-en", "timestamp_granularities__": ["word"]}, "bad_request", "timestamp_granularities"),
    ({"model": "tiny-en", "response_format": "verbose_json", "timestamp_granularities__": ["token"]},
     "bad_request", "timestamp_granularities"),
    ({"model": "tiny-en", "stream": "true", "response_format": "srt"}, "bad_request", "stream"),
    ({"model": "tiny-en", "stream": "maybe"}, "bad_request", "stream"),
    ({"model": "tiny-en", "include__": ["logprobs"]}, "bad_request", "include"),
    ({"model": "tiny-en", "known_speaker_names__": ["agent"]}, "bad_request", "known_speaker_names"),
    ({"model": "tiny-en", "temperature": "hot"}, "bad_request", "temperature"),
    ({"model": "tiny-en", "temperature": "1.5"}, "bad_request", "temperature"),
])
def test_bad_fields_are_refused_naming_the_field(fields: dict, code: str, param: str) -> None:
    err = refused(**fields)
    assert (err.code, err.param) == (code, param)


def test_a_missing_file_is_refused() -> None:
    with pytest.raises(OpenAIError) as err:
        parse_transcription_form(FormData([("model", "tiny-en"), ("file", "not a file")]), MODELS)
    assert err.value.param == "file"


def test_served_model_ids_hide_local_paths() -> None:
    assert served_model_id("models/tiny-en") == "tiny-en"
    assert served_model_id("/tmp/x/tiny-random/") == "tiny-random"
    assert served_model_id("Qwen/Qwen3-ASR-1.7B") == "Qwen/Qwen3-ASR-1.7B"


# ------------------------------------------------------------------ response formats
WORDS = [SessionWord("hello", 0.1, 0.4), SessionWord("there", 0.5, 0.9), SessionWord("again", 2.5, 2.9)]


def test_verbose_json_segments_are_the_caption_cues() -> None:
    body = fmt.verbose_json_body(WORDS, "en", 3.0, with_words=True, with_segments=True)
    assert body["language"] == "english" and body["text"] == "hello there again" and body["duration"] == 3.0
    assert body["words"][1] == {"word": "there", "start": 0.5, "end": 0.9}
    # The 1.6 s pause starts a new segment, as it starts a new srt cue.
    assert [(s["start"], s["end"], s["text"]) for s in body["segments"]] == [(0.1, 0.9, "hello there"),
                                                                            (2.5, 2.9, "again")]
    assert len(build_cues(WORDS)) == 2 and body["segments"][0]["avg_logprob"] is None
    assert "words" not in fmt.verbose_json_body(WORDS, None, 3.0, with_words=False, with_segments=True)
    assert fmt.verbose_json_body([], None, 1.0, False, True)["language"] == "unknown"


def test_text_formats_and_deltas() -> None:
    assert fmt.text_body("text", WORDS) == "hello there again\n"
    assert fmt.text_body("srt", WORDS) == to_srt(WORDS)
    assert fmt.text_body("vtt", WORDS).startswith("WEBVTT\n\n00:00:00.100 --> 00:00:00.900\nhello there")
    deltas = [fmt.delta_text(["hello", "there"], first=True), fmt.delta_text(["again"], first=False)]
    assert "".join(deltas) == fmt.transcript_text(WORDS)
    assert fmt.sse(fmt.text_done_event("hi")) == 'data: {"type":"transcript.text.done","text":"hi"}\n\n'


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("exc,status,kind", [
    (Unauthorized("no key"), 401, "invalid_request_error"),
    (QuotaExceeded("limit"), 429, "insufficient_quota"),
    (RelayError("overloaded", "full"), 503, "server_error"),
    (RelayError("unavailable", "gone"), 503, "server_error"),
    (RelayError("internal", "boom"), 500, "server_error"),
    (RelayError("bad_request", "no such language"), 400, "invalid_request_error"),
    (UnsupportedFormat("text"), 415, "invalid_request_error"),
])
def test_service_errors_get_openai_statuses(exc: Exception, status: int, kind: str) -> None:
    err = from_service_error(exc)
    response = err.response()
    assert response.status_code == status
    assert json.loads(response.body) == {"error": {"message": str(exc), "type": kind, "param": None,
                                                   "code": exc.code}}
    assert "x-should-retry" not in response.headers
    assert from_service_error(exc, retry=False).response().headers["x-should-retry"] == "false"


# ------------------------------------------------------------------ Realtime
# Not the defaults, so the echo is seen to come from the gate's configuration.
VAD = VadConfig(threshold=0.6, endpoint_s=0.7, pad_s=0.3)


def test_server_vad_turn_detection_is_taken_and_echoed_with_the_gates_settings() -> None:
    settings = events.Settings(model="tiny-en")
    vad = events.apply_update(settings, {"type": "transcription", "audio": {"input": {
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 900}}}}, MODELS)
    assert vad.server_vad
    echoed = events.session_event("updated", events.GA, "s", vad, VAD)["session"]["audio"]["input"]["turn_detection"]
    # The gate's own settings apply (they are the ingest's, shared by all streams).
    assert echoed == {"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 300, "silence_duration_ms": 700}
    assert events.apply_update(vad, {"turn_detection": None}, MODELS).server_vad is False
    assert events.apply_update(vad, {"input_audio_transcription": {"language": "en"}}, MODELS).server_vad
    assert events.speech_event("stopped", "item_1", 1.2345)["audio_end_ms"] == 1234


def test_realtime_updates_in_both_dialects() -> None:
    settings = events.Settings(model="tiny-en")
    ga = events.apply_update(settings, {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None, "noise_reduction": None,
        "transcription": {"model": "tiny-en", "language": "en", "prompt": "names: Qwen"}}}}, MODELS)
    assert ga == events.Settings("tiny-en", "en", "names: Qwen", sample_rate=16000)
    beta = events.apply_update(ga, {"input_audio_format": "pcm16", "turn_detection": None,
                                    "input_audio_transcription": {"language": "auto"}}, MODELS)
    assert beta == events.Settings("tiny-en", None, "names: Qwen", sample_rate=24000)
    created = events.session_event("created", events.BETA, "sess_1", beta, VAD)
    assert created["type"] == "transcription_session.created"
    assert created["session"]["input_audio_transcription"]["prompt"] == "names: Qwen"
    updated = events.session_event("updated", events.GA, "sess_1", ga, VAD)
    assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 16000}
    # G.711 is 8 kHz in both dialects.
    ulaw = events.apply_update(ga, {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcmu"}}}},
                               MODELS)
    assert (ulaw.audio_format, ulaw.sample_rate) == (events.ULAW, 8000)
    assert events.session_event("updated", events.GA, "s", ulaw, VAD)["session"]["audio"]["input"]["format"] == \
        {"type": "audio/pcmu"}
    alaw = events.apply_update(ga, {"input_audio_format": "g711_alaw"}, MODELS)
    assert (alaw.audio_format, alaw.sample_rate) == (events.ALAW, 8000)
    assert events.session_event("updated", events.BETA, "s", alaw, VAD)["session"]["input_audio_format"] == "g711_alaw"


@pytest.mark.parametrize("session,param", [
    ({"type": "realtime"}, "session.type"),
    ({"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}, "session.audio.input.turn_detection"),
    ({"turn_detection": {"type": "semantic_vad"}}, "session.turn_detection"),
    ({"audio": {"input": {"format": {"type": "audio/opus"}}}}, "session.audio.input.format.type"),
    ({"input_audio_format": "mp3"}, "session.input_audio_format"),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 4000}}}}, "session.audio.input.format.rate"),
    ({"audio": {"input": {"transcription": {"model": "whisper-1"}}}}, "session.audio.input.transcription.model"),
    ({"input_audio_transcription": {"language": "xx"}}, "session.input_audio_transcription.language"),
    ({"include": ["item.input_audio_transcription.logprobs"]}, "session.include"),
    ("not an object", "session"),
])
def test_realtime_updates_refuse_what_is_not_served(session: object, param: str) -> None:
    with pytest.raises(OpenAIError) as err:
        events.apply_update(events.Settings(model="tiny-en"), session, MODELS)
    assert err.value.param == param


def test_realtime_item_events() -> None:
    ga = [e["type"] for e in events.committed_events(events.GA, "item_b", "item_a")]
    assert ga == ["input_audio_buffer.committed", "conversation.item.added"]
    assert events.committed_events(events.BETA, "item_b", None)[1]["type"] == "conversation.item.created"
    done = events.completed_events(events.GA, "item_b", "item_a", "hello there", 1.25)
    assert done[0]["transcript"] == "hello there" and done[0]["usage"] == {"type": "duration", "seconds": 1.25}
    assert done[1]["item"]["content"][0]["transcript"] == "hello there"
    assert len(events.completed_events(events.BETA, "item_b", None, "x", 1.0)) == 1
    error = events.error_event(OpenAIError("bad_frame", "not JSON"), "client-7")
    assert error["error"] == {"message": "not JSON", "type": "invalid_request_error", "param": None,
                              "code": "bad_frame", "event_id": "client-7"}


# ------------------------------------------------------------------ prompt as context
def test_the_prompt_leads_every_incarnations_context() -> None:
    session = Session(language="en", max_replay_s=30.0, prompt="  Qwen, Ray Serve ")
    assert session.context() == "Qwen, Ray Serve"
    session.add_audio(np.zeros(SAMPLE_RATE, np.float32))
    session.mark_sent(session.unsent(SAMPLE_RATE))
    session.add_words([{"text": "hello", "start": 0.1, "end": 0.5}], "en", 1.0)
    session.rehome()
    assert session.context() == "Qwen, Ray Serve hello"
    assert Session(language=None, max_replay_s=30.0).context() == ""
