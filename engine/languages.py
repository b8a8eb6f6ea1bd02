"""Language names as Qwen3-ASR writes them, and the codes clients send."""

from __future__ import annotations

from engine.errors import BadRequestError

# code -> the name Qwen3-ASR uses in "language <Name><asr_text>".
CODE_TO_NAME: dict[str, str] = {
    "zh": "Chinese",
    "en": "English",
    "yue": "Cantonese",
    "ar": "Arabic",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "pt": "Portuguese",
    "id": "Indonesian",
    "it": "Italian",
    "ko": "Korean",
    "ru": "Russian",
    "th": "Thai",
    "vi": "Vietnamese",
    "ja": "Japanese",
    "tr": "Turkish",
    "hi": "Hindi",
    "ms": "Malay",
    "nl": "Dutch",
    "sv": "Swedish",
    "da": "Danish",
    "fi": "Finnish",
    "pl": "Polish",
    "cs": "Czech",
    "fil": "Filipino",
    "fa": "Persian",
    "el": "Greek",
    "ro": "Romanian",
    "hu": "Hungarian",
    "mk": "Macedonian",
}
NAME_TO_CODE: dict[str, str] = {name: code for code, name in CODE_TO_NAME.items()}
QWEN_LANGUAGES: tuple[str, ...] = tuple(CODE_TO_NAME.values())


def resolve_language(value: str | None) -> str | None:
    """Map "auto"/None to None and a code or a name to the Qwen name.

    Raises BadRequestError for anything else.
    """
    if value is None or value.strip().lower() in ("", "auto"):
        return None
    text = value.strip()
    if text.lower() in CODE_TO_NAME:
        return CODE_TO_NAME[text.lower()]
    name = text[:1].upper() + text[1:].lower()
    if name in NAME_TO_CODE:
        return name
    raise BadRequestError(f"unsupported language {value!r}; use 'auto' or one of {sorted(CODE_TO_NAME)}")


def language_code(name: str) -> str:
    """The client-facing code of a Qwen language name (the name itself if unknown)."""
    return NAME_TO_CODE.get(name, name.lower())
