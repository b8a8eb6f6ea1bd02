"""Committed words to OpenAI transcription responses and stream events (pure functions).

Words are anything with `text`, `start`, `end` in seconds (captions.exports.TimedWord).
Segments are the caption cues of captions/exports.py (a pause over 0.8 s,
6 s or two 42-character lines start a new one), so `verbose_json` segments
and the `srt`/`vtt` cues agree.
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

from captions.exports import TimedWord, build_cues, to_srt, to_vtt
from engine.languages import CODE_TO_NAME

# Whisper-style values this engine does not compute; they are null, never invented.
_NOT_COMPUTED: dict[str, Any] = {"tokens": None, "avg_logprob": None, "compression_ratio": None,
                                 "no_speech_prob": None}
# Media types of the text formats.
TEXT_MEDIA = {"text": "text/plain; charset=utf-8", "srt": "application/x-subrip; charset=utf-8",
              "vtt": "text/vtt; charset=utf-8"}
# Service start: the `created` time of the one model /v1/models lists.
_STARTED = int(time.time())


def transcript_text(words: Sequence[TimedWord]) -> str:
    return " ".join(w.text for w in words)


def language_name(code: str | None) -> str:
    """OpenAI's verbose_json names the language in lower case ("english"); "unknown" if none was found."""
    if not code:
        return "unknown"
    return CODE_TO_NAME.get(code, code).lower()


def duration_usage(audio_s: float) -> dict[str, Any]:
    """Usage as OpenAI reports it for models billed by audio duration."""
    return {"type": "duration", "seconds": round(audio_s, 3)}


def json_body(words: Sequence[TimedWord], audio_s: float) -> dict[str, Any]:
    return {"text": transcript_text(words), "usage": duration_usage(audio_s)}


def verbose_json_body(words: Sequence[TimedWord], language: str | None, audio_s: float, with_words: bool,
                      with_segments: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": language_name(language),
        "duration": round(audio_s, 3),
        "text": transcript_text(words),
        "usage": duration_usage(audio_s),
    }
    if with_words:
        body["words"] = [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in words]
    if with_segments:
        body["segments"] = segments(words)
    return body


def segments(words: Sequence[TimedWord]) -> list[dict[str, Any]]:
    # seek: Whisper's 30 s window offset; this engine has no such windows. temperature: greedy decoding.
    return [
        {"id": index, "seek": 0, "start": round(cue.start, 3), "end": round(cue.end, 3),
         "text": " ".join(cue.text_lines()), "temperature": 0.0, **_NOT_COMPUTED}
        for index, cue in enumerate(build_cues(words))
    ]


def text_body(response_format: str, words: Sequence[TimedWord]) -> str:
    """The body of a text, srt or vtt response."""
    if response_format == "srt":
        return to_srt(words)
    if response_format == "vtt":
        return to_vtt(words)
    return transcript_text(words) + "\n"


# ------------------------------------------------------------------ streaming (Server-Sent Events)
def delta_text(texts: Sequence[str], first: bool) -> str:
    """Newly committed words as a delta: the deltas of a transcript concatenate to its text."""
    joined = " ".join(texts)
    return joined if first else " " + joined


def sse(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n"


def text_delta_event(delta: str) -> dict[str, Any]:
    return {"type": "transcript.text.delta", "delta": delta}


def text_done_event(text: str) -> dict[str, Any]:
    return {"type": "transcript.text.done", "text": text}


# ------------------------------------------------------------------ models
def model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": _STARTED, "owned_by": "qwen3-live-captions"}


def models_list(model_id: str) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(model_id)]}
