"""The decoder prompt of one stream, as token ids.

Layout (the checkpoint's own chat template, rendered once):

    <|im_start|>system\\n {context} <|im_end|>\\n<|im_start|>user\\n<|audio_start|>
    <|audio_pad|> x n_audio
    <|audio_end|><|im_end|>\\n<|im_start|>assistant\\n
    language <Name><asr_text> {committed tokens}

`context` is earlier committed text whose audio has left the buffer; the
committed tokens are the transcript of the audio still in the buffer, which
the decoder continues. Everything before the audio, plus the audio tokens of
complete encoder windows, is a stable prefix whose key/values can be reused.
"""

from __future__ import annotations

from dataclasses import dataclass

_CONTEXT_MARK = "\x00context\x00"


@dataclass(frozen=True)
class PromptLayout:
    """A built prompt: ids and where its audio placeholders start."""

    ids: list[int]
    audio_pos: int
    n_audio: int


@dataclass(frozen=True)
class PromptTemplate:
    """Token pieces of the prompt, cut out of the rendered chat template."""

    before_context: tuple[int, ...]
    before_audio: tuple[int, ...]
    after_audio: tuple[int, ...]
    audio_token_id: int
    asr_text_id: int
    tokenizer: object

    @classmethod
    def from_tokenizer(cls, tokenizer: object, chat_template: str | None, audio_token_id: int) -> PromptTemplate:
        """Render the chat template with a context marker and one audio item, then cut it."""
        messages = [
            {"role": "system", "content": _CONTEXT_MARK},
            {"role": "user", "content": [{"type": "audio", "audio": ""}]},
        ]
        text = tokenizer.apply_chat_template(
            messages, chat_template=chat_template, add_generation_prompt=True, tokenize=False
        )
        audio_token = tokenizer.convert_ids_to_tokens(audio_token_id)
        head, rest = text.split(_CONTEXT_MARK)
        mid, tail = rest.split(audio_token)

        def encode(s: str) -> tuple[int, ...]:
            return tuple(tokenizer.encode(s, add_special_tokens=False))

        return cls(
            before_context=encode(head),
            before_audio=encode(mid),
            after_audio=encode(tail),
            audio_token_id=audio_token_id,
            asr_text_id=tokenizer.convert_tokens_to_ids("<asr_text>"),
            tokenizer=tokenizer,
        )

    def language_prefix(self, name: str) -> tuple[int, ...]:
        """The assistant's "language <Name><asr_text>" as the model writes it."""
        return tuple(self.tokenizer.encode(f"language {name}", add_special_tokens=False)) + (self.asr_text_id,)

    def stable_len(self, context: list[int]) -> int:
        """Prompt positions before the first audio token."""
        return len(self.before_context) + len(context) + len(self.before_audio)

    def build(self, context: list[int], n_audio: int, assistant: list[int]) -> PromptLayout:
        """The full prompt for `n_audio` audio tokens and the assistant prefix."""
        head = [*self.before_context, *context, *self.before_audio]
        ids = head + [self.audio_token_id] * n_audio + [*self.after_audio, *assistant]
        return PromptLayout(ids=ids, audio_pos=len(head), n_audio=n_audio)
