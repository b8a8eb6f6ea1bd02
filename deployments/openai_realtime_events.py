"""OpenAI Realtime transcription sessions: session settings and server events (pure, no I/O).

Two dialects of the same API are spoken: the GA one (`session.update` with
`session.type = "transcription"`, `session.created`, `conversation.item.added`)
and the beta one that clients sending `OpenAI-Beta: realtime=v1` use
(`transcription_session.update`, `transcription_session.created`,
`conversation.item.created`). An update is answered in the dialect it was
sent in; the rest follows the connection's.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import Any

from deployments.g711 import G711_RATE
from deployments.openai_errors import OpenAIError
from deployments.openai_params import check_language, check_model
from deployments.protocol import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from engine.vad import VadConfig

# The rate OpenAI's `audio/pcm` (beta: `pcm16`) is sent at.
OPENAI_PCM_RATE = 24_000
GA, BETA = "ga", "beta"
# Audio formats by their beta names (used inside too) and GA types; G.711 is always 8 kHz.
PCM16, ULAW, ALAW = "pcm16", "g711_ulaw", "g711_alaw"
_BETA_RATES = {PCM16: OPENAI_PCM_RATE, ULAW: G711_RATE, ALAW: G711_RATE}
_GA_TYPES = {"audio/pcm": PCM16, "audio/pcmu": ULAW, "audio/pcma": ALAW}


@dataclass(frozen=True)
class Settings:
    """A transcription session's effective configuration."""

    model: str
    language: str | None = None
    prompt: str = ""
    audio_format: str = PCM16  # PCM16 (little-endian), ULAW or ALAW
    sample_rate: int = OPENAI_PCM_RATE
    # turn_detection server_vad: the service commits each item when the speaker stops.
    server_vad: bool = False


def event_id() -> str:
    return "event_" + secrets.token_hex(8)


# ------------------------------------------------------------------ client events
def apply_update(settings: Settings, session: Any, model_ids: tuple[str, ...]) -> Settings:
    """`settings` changed by an update's `session` object (either dialect); OpenAIError names the field."""
    if not isinstance(session, dict):
        raise OpenAIError("bad_request", "'session' must be an object", "session")
    if session.get("type", "transcription") != "transcription":
        raise OpenAIError("bad_request", "only transcription sessions are served here (session.type "
                          "'transcription')", "session.type")
    audio_input = _object(_object(session, "audio", "session"), "input", "session.audio")
    if audio_input:
        return _apply_ga(settings, session, audio_input, model_ids)
    return _apply_beta(settings, session, model_ids)


def _apply_ga(settings: Settings, session: dict, audio_input: dict, model_ids: tuple[str, ...]) -> Settings:
    prefix = "session.audio.input"
    if "format" in audio_input:
        settings = _ga_format(settings, audio_input["format"], f"{prefix}.format")
    settings = _turn_detection(settings, audio_input, f"{prefix}.turn_detection")
    _check_include(session.get("include"))
    transcription = _object(audio_input, "transcription", prefix)
    return _apply_transcription(settings, transcription, f"{prefix}.transcription", model_ids)


def _apply_beta(settings: Settings, session: dict, model_ids: tuple[str, ...]) -> Settings:
    if "input_audio_format" in session:
        value = session["input_audio_format"]
        if value not in _BETA_RATES:
            raise OpenAIError("bad_request", f"input_audio_format {value!r} is not supported; use one of "
                              f"{', '.join(_BETA_RATES)}", "session.input_audio_format")
        settings = replace(settings, audio_format=value, sample_rate=_BETA_RATES[value])
    settings = _turn_detection(settings, session, "session.turn_detection")
    _check_include(session.get("include"))
    transcription = _object(session, "input_audio_transcription", "session")
    return _apply_transcription(settings, transcription, "session.input_audio_transcription", model_ids)


def _apply_transcription(settings: Settings, transcription: dict, prefix: str, model_ids: tuple[str, ...]) -> Settings:
    check_model(_optional_text(transcription, "model", prefix), model_ids, f"{prefix}.model")
    if "language" in transcription:
        language = check_language(_optional_text(transcription, "language", prefix), f"{prefix}.language")
        settings = replace(settings, language=language)
    if "prompt" in transcription:
        settings = replace(settings, prompt=_optional_text(transcription, "prompt", prefix) or "")
    return settings


def _ga_format(settings: Settings, value: Any, param: str) -> Settings:
    if not isinstance(value, dict):
        raise OpenAIError("bad_request", "the audio format must be an object", param)
    audio_format = _GA_TYPES.get(value.get("type"))
    if audio_format is None:
        raise OpenAIError("bad_request", f"audio format {value.get('type')!r} is not supported; use one of "
                          f"{', '.join(_GA_TYPES)}", f"{param}.type")
    if audio_format != PCM16:
        return replace(settings, audio_format=audio_format, sample_rate=G711_RATE)
    rate = value.get("rate", OPENAI_PCM_RATE)
    # OpenAI only takes 24 kHz; any rate the native protocol takes is accepted.
    if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise OpenAIError("bad_request", f"rate must be an integer in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}]",
                          f"{param}.rate")
    return replace(settings, audio_format=PCM16, sample_rate=rate)


def _turn_detection(settings: Settings, parent: dict, param: str) -> Settings:
    """null: the client commits items; {type: server_vad}: the service does, at the speaker's pauses.

    server_vad's numbers (threshold, prefix_padding_ms, silence_duration_ms)
    are the service's voice activity gate settings (ingest.vad), shared by all
    streams: a session's own are ignored, and the effective ones are echoed.
    """
    if "turn_detection" not in parent:
        return settings
    value = parent["turn_detection"]
    if value is None:
        return replace(settings, server_vad=False)
    if not isinstance(value, dict) or value.get("type") != "server_vad":
        raise OpenAIError("bad_request", "turn_detection must be null or {type: server_vad} (semantic_vad is "
                          "not available here)", param)
    return replace(settings, server_vad=True)


def _check_include(value: Any) -> None:
    if value:
        raise OpenAIError("bad_request", "log probabilities are not computed", "session.include")


def _object(parent: dict, key: str, where: str) -> dict:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OpenAIError("bad_request", f"'{key}' must be an object", f"{where}.{key}")
    return value


def _optional_text(parent: dict, key: str, where: str) -> str | None:
    value = parent.get(key)
    if value is not None and not isinstance(value, str):
        raise OpenAIError("bad_request", f"'{key}' must be a string", f"{where}.{key}")
    return value


# ------------------------------------------------------------------ server events
def session_event(kind: str, dialect: str, session_id: str, settings: Settings, vad: VadConfig) -> dict[str, Any]:
    """`created` or `updated`: the effective configuration, in the dialect's shape."""
    transcription = {"model": settings.model, "language": settings.language, "prompt": settings.prompt}
    turn = None
    if settings.server_vad:
        turn = {"type": "server_vad", "threshold": vad.threshold, "prefix_padding_ms": round(vad.pad_s * 1000),
                "silence_duration_ms": round(vad.endpoint_s * 1000)}
    if dialect == BETA:
        session: dict[str, Any] = {
            "id": session_id, "object": "realtime.transcription_session", "modalities": ["text"],
            "input_audio_format": settings.audio_format, "input_audio_transcription": transcription,
            "turn_detection": turn, "input_audio_noise_reduction": None, "include": [],
        }
        return {"type": f"transcription_session.{kind}", "event_id": event_id(), "session": session}
    session = {
        "type": "transcription", "id": session_id, "object": "realtime.transcription_session",
        "audio": {"input": {"format": _ga_format_object(settings),
                            "transcription": transcription, "turn_detection": turn, "noise_reduction": None}},
        "include": [],
    }
    return {"type": f"session.{kind}", "event_id": event_id(), "session": session}


def _ga_format_object(settings: Settings) -> dict[str, Any]:
    if settings.audio_format == PCM16:
        return {"type": "audio/pcm", "rate": settings.sample_rate}
    return {"type": next(kind for kind, name in _GA_TYPES.items() if name == settings.audio_format)}


def error_event(error: OpenAIError, client_event_id: str | None = None) -> dict[str, Any]:
    return {"type": "error", "event_id": event_id(), "error": error.body(client_event_id)}


def committed_events(dialect: str, item_id: str, previous_item_id: str | None) -> list[dict[str, Any]]:
    """After a commit: the buffer became a user message item (its transcript still to come)."""
    item = _item(item_id, None)
    added = "conversation.item.created" if dialect == BETA else "conversation.item.added"
    return [
        {"type": "input_audio_buffer.committed", "event_id": event_id(), "item_id": item_id,
         "previous_item_id": previous_item_id},
        {"type": added, "event_id": event_id(), "previous_item_id": previous_item_id, "item": item},
    ]


def speech_event(kind: str, item_id: str, at_s: float) -> dict[str, Any]:
    """`started` (audio_start_ms) or `stopped` (audio_end_ms), in milliseconds of the item's audio."""
    field = "audio_start_ms" if kind == "started" else "audio_end_ms"
    return {"type": f"input_audio_buffer.speech_{kind}", "event_id": event_id(), "item_id": item_id,
            field: round(at_s * 1000)}


def delta_event(item_id: str, delta: str) -> dict[str, Any]:
    return {"type": "conversation.item.input_audio_transcription.delta", "event_id": event_id(),
            "item_id": item_id, "content_index": 0, "delta": delta}


def completed_events(dialect: str, item_id: str, previous_item_id: str | None, transcript: str,
                     audio_s: float) -> list[dict[str, Any]]:
    events = [{"type": "conversation.item.input_audio_transcription.completed", "event_id": event_id(),
               "item_id": item_id, "content_index": 0, "transcript": transcript,
               "usage": {"type": "duration", "seconds": round(audio_s, 3)}}]
    if dialect == GA:
        events.append({"type": "conversation.item.done", "event_id": event_id(), "previous_item_id": previous_item_id,
                       "item": _item(item_id, transcript)})
    return events


def failed_event(item_id: str, error: OpenAIError) -> dict[str, Any]:
    return {"type": "conversation.item.input_audio_transcription.failed", "event_id": event_id(),
            "item_id": item_id, "content_index": 0, "error": error.body()}


def cleared_event() -> dict[str, Any]:
    return {"type": "input_audio_buffer.cleared", "event_id": event_id()}


def _item(item_id: str, transcript: str | None) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
            "content": [{"type": "input_audio", "transcript": transcript}]}
