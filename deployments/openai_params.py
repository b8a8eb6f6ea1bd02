"""The form fields of POST /v1/audio/transcriptions, checked into one typed request.

Each OpenAI field is supported, ignored (accepted, no effect) or refused
(400 naming the field); docs/openai.md lists which is which and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from starlette.datastructures import UploadFile

from deployments.openai_errors import OpenAIError
from engine.errors import BadRequestError
from engine.languages import resolve_language

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
# Formats that can be streamed: the events carry text only.
STREAM_FORMATS = ("json", "text")
GRANULARITIES = ("word", "segment")
# Fields that ask for output this service cannot produce: refused, not silently dropped.
_REFUSED = {
    "include": "log probabilities are not computed",
    "known_speaker_names": "speaker diarization is not supported",
    "known_speaker_references": "speaker diarization is not supported",
}


class Form(Protocol):
    """What is read from Starlette's FormData."""

    def get(self, key: str, default: object = None) -> object: ...

    def getlist(self, key: str) -> list[object]: ...


@dataclass(frozen=True)
class TranscriptionParams:
    file: UploadFile
    language: str | None  # an ISO-639-1 code, None for detection
    prompt: str  # the stream's initial context
    response_format: str
    words: bool  # verbose_json carries `words`
    segments: bool  # verbose_json carries `segments`
    stream: bool


def served_model_id(model: str) -> str:
    """The id /v1/models lists: a model directory's name, or the hub id as configured.

    A local path is recognised as deployments.run.check_model does, so a
    client never sees the server's file system layout.
    """
    local = Path(model).exists() or model.startswith((".", "/", "~")) or model.startswith("models/")
    return Path(model.rstrip("/")).name if local else model


def parse_transcription_form(form: Form, model_ids: tuple[str, ...]) -> TranscriptionParams:
    """The checked request, or OpenAIError (400 naming the field, 404 for an unknown model)."""
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise OpenAIError("bad_request", "'file' must be an uploaded audio file", "file")
    _check_model(_text(form, "model"), model_ids)
    for name, why in _REFUSED.items():
        if _values(form, name):
            raise OpenAIError("bad_request", f"'{name}' is not supported: {why}", name)
    _check_temperature(_text(form, "temperature"))
    response_format = _text(form, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise OpenAIError("bad_request", f"response_format {response_format!r} is not supported; "
                          f"use one of {', '.join(RESPONSE_FORMATS)}", "response_format")
    granularities = _values(form, "timestamp_granularities")
    unknown = sorted(set(granularities) - set(GRANULARITIES))
    if unknown:
        raise OpenAIError("bad_request", f"unknown timestamp_granularities {unknown}; use word and/or segment",
                          "timestamp_granularities")
    if granularities and response_format != "verbose_json":
        raise OpenAIError("bad_request", "timestamp_granularities need response_format 'verbose_json'",
                          "timestamp_granularities")
    stream = _flag(_text(form, "stream"))
    if stream and response_format not in STREAM_FORMATS:
        raise OpenAIError("bad_request", f"stream=true sends text events: use response_format "
                          f"{' or '.join(STREAM_FORMATS)}, not {response_format!r}", "stream")
    return TranscriptionParams(
        file=file,
        language=check_language(_text(form, "language"), "language"),
        prompt=_text(form, "prompt") or "",
        response_format=response_format,
        words="word" in granularities,
        # Whisper's default: verbose_json without granularities carries segments.
        segments="segment" in granularities or not granularities,
        stream=stream,
    )


def check_language(value: str | None, param: str) -> str | None:
    """A language code or name the engine knows (None/"" /"auto": detect), or 400 naming `param`."""
    if value is None or value.strip().lower() in ("", "auto"):
        return None
    try:
        resolve_language(value)
    except BadRequestError as exc:
        raise OpenAIError("bad_request", str(exc), param) from exc
    return value.strip()


def check_model(model: str | None, model_ids: tuple[str, ...], param: str) -> None:
    """404 model_not_found unless `model` is absent or one of the served ids."""
    if model is not None and model not in model_ids:
        raise OpenAIError("model_not_found", f"the model {model!r} is not served here; this service serves "
                          f"{model_ids[0]!r} (GET /v1/models)", param)


def _check_model(model: str | None, model_ids: tuple[str, ...]) -> None:
    if not model:
        raise OpenAIError("bad_request", "'model' is required (GET /v1/models lists the served one)", "model")
    check_model(model, model_ids, "model")


def _check_temperature(value: str | None) -> None:
    # Decoding is greedy whatever the value; a malformed one is still a client bug worth reporting.
    if value is None:
        return
    try:
        temperature = float(value)
    except ValueError:
        raise OpenAIError("bad_request", f"temperature must be a number, got {value!r}", "temperature") from None
    if not 0.0 <= temperature <= 1.0:
        raise OpenAIError("bad_request", "temperature must lie within [0, 1]", "temperature")


def _text(form: Form, name: str) -> str | None:
    value = form.get(name)
    if value is not None and not isinstance(value, str):
        raise OpenAIError("bad_request", f"'{name}' must be a text field", name)
    return value


def _values(form: Form, name: str) -> list[str]:
    """A list field: the SDKs send `name[]` once per value; plain `name` is accepted too."""
    values = [*form.getlist(f"{name}[]"), *form.getlist(name)]
    if not all(isinstance(v, str) for v in values):
        raise OpenAIError("bad_request", f"'{name}' must be text fields", name)
    return [v for v in values if v]


def _flag(value: str | None) -> bool:
    if value is None or value.lower() in ("false", "0", ""):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise OpenAIError("bad_request", f"stream must be true or false, got {value!r}", "stream")
