"""Token ids to bytes and word boundaries, precomputed once per tokenizer.

Qwen tokenizers are byte-level BPE: a token is a byte string, and a token
whose bytes start with a space begins a new word. Decoding per token (rather
than whole strings) lets the transcript attach a time to every token and
still join multi-byte UTF-8 characters split across tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

_UNICODE_TO_BYTE = {ch: b for b, ch in bytes_to_unicode().items()}


@dataclass(frozen=True)
class TokenTable:
    """Per-id bytes and flags for one tokenizer."""

    pieces: tuple[bytes, ...]
    starts_word: np.ndarray  # bool[vocab]: bytes begin with a space
    special: np.ndarray  # bool[vocab]: added/special tokens, never transcript text
    eos_ids: frozenset[int]
    asr_text_id: int

    @classmethod
    def build(cls, tokenizer: object, eos_ids: tuple[int, ...], vocab_size: int) -> TokenTable:
        """Read every id of `tokenizer`; ids beyond it (padding rows of the embedding) are special."""
        size = max(vocab_size, len(tokenizer))
        pieces: list[bytes] = [b""] * size
        special = np.ones(size, dtype=bool)
        added = set(tokenizer.get_added_vocab().values())
        for token, idx in tokenizer.get_vocab().items():
            if idx >= size:
                continue
            if idx in added:
                pieces[idx] = token.encode()
                continue
            pieces[idx] = bytes(_UNICODE_TO_BYTE.get(ch, ord(ch) & 0xFF) for ch in token)
            special[idx] = False
        starts = np.array([p[:1] == b" " for p in pieces], dtype=bool) & ~special
        return cls(
            pieces=tuple(pieces),
            starts_word=starts,
            special=special,
            eos_ids=frozenset(eos_ids),
            asr_text_id=tokenizer.convert_tokens_to_ids("<asr_text>"),
        )

    def text(self, ids: list[int]) -> str:
        """Decode transcript ids (special tokens skipped) to text."""
        return b"".join(self.pieces[i] for i in ids if not self.special[i]).decode("utf-8", errors="replace")
