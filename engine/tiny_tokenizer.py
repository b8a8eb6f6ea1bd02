"""A small byte-level BPE tokenizer laid out like Qwen3-ASR's.

Real Qwen3-ASR checkpoints ship a 151k-token Qwen2 tokenizer; our tiny models
use the same kind of tokenizer (byte-level BPE, the same special tokens, the
same chat template shape) trained on our own word list, so every code path
that touches token ids is exercised exactly as with the real model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2TokenizerFast, WhisperFeatureExtractor

from engine.languages import QWEN_LANGUAGES

WORDS_FILE = Path(__file__).resolve().parent.parent / "data" / "words.txt"

# The special tokens Qwen3-ASR's prompt and output format use.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<|audio_pad|>",
    "<asr_text>",
]

# Renders the same prompt as the real checkpoints' template:
# <|im_start|>system\n{context}<|im_end|>\n<|im_start|>user\n
# <|audio_start|><|audio_pad|><|audio_end|><|im_end|>\n<|im_start|>assistant\n
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def read_words(path: Path = WORDS_FILE) -> list[str]:
    """The vocabulary of our synthetic speech, one word per line."""
    return [w.strip() for w in path.read_text().splitlines() if w.strip()]


def _training_texts(words: list[str], extra: Iterable[str]) -> list[str]:
    # Every word with and without a leading space, so each becomes one token,
    # plus the words of the prompt and output format.
    texts = [f" {w}" for w in words] + list(words)
    texts += ["system", "user", "assistant", "language"]
    texts += [f"language {name}" for name in QWEN_LANGUAGES] + ["language None"]
    texts += list(extra)
    return texts


def build_tokenizer(
    words: list[str] | None = None, extra_texts: Iterable[str] = (), vocab_size: int = 2048
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE over `words` and wrap it as a Qwen2 tokenizer."""
    words = read_words() if words is None else words
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the texts so that the merges favour whole words.
    tok.train_from_iterator(_training_texts(words, extra_texts) * 4, trainer=trainer)
    return Qwen2TokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        errors="replace",
        clean_up_tokenization_spaces=False,
        add_prefix_space=False,
        extra_special_tokens={
            "audio_token": "<|audio_pad|>",
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
        },
        chat_template=CHAT_TEMPLATE,
    )


def save_processor(tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Write tokenizer + Whisper-style feature extractor as a Qwen3-ASR processor."""
    from qwen_asr.core.transformers_backend import Qwen3ASRProcessor

    features = WhisperFeatureExtractor(feature_size=128, return_attention_mask=True)
    processor = Qwen3ASRProcessor(features, tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(str(out_dir))
