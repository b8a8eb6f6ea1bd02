"""Build tiny Qwen3-ASR checkpoints with the real architecture.

    python -m engine.tiny build OUT_DIR [--seed N]

writes a random-weight model directory (config, safetensors, tokenizer,
feature extractor, chat template) that `engine.loader.load_model` loads like
Qwen/Qwen3-ASR-0.6B. The audio encoder keeps the real windowing
(n_window=50, n_window_infer=800, 128 mel bins); the decoder is a small Qwen3
with grouped-query attention.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from engine.tiny_tokenizer import build_tokenizer, save_processor


@dataclass(frozen=True)
class TinyDims:
    """Sizes of a checkpoint; defaults give a ~1 M parameter model."""

    enc_d_model: int = 64
    enc_layers: int = 2
    enc_heads: int = 4
    enc_ffn: int = 128
    enc_conv_channels: int = 8
    dec_hidden: int = 64
    dec_layers: int = 4
    dec_heads: int = 4
    dec_kv_heads: int = 2
    dec_head_dim: int = 16
    dec_ffn: int = 128
    # None: the tokenizer's size. Real checkpoints have 151936 rows.
    vocab_size: int | None = None
    tie_embeddings: bool = False


# Real Qwen3-ASR sizes (from the published configs), for random-weight speed runs.
PRESETS: dict[str, TinyDims] = {
    "tiny": TinyDims(),
    "0.6b": TinyDims(
        enc_d_model=896, enc_layers=18, enc_heads=14, enc_ffn=3584, enc_conv_channels=480,
        dec_hidden=1024, dec_layers=28, dec_heads=16, dec_kv_heads=8, dec_head_dim=128, dec_ffn=3072,
        vocab_size=151936, tie_embeddings=True,
    ),
    "1.7b": TinyDims(
        enc_d_model=1024, enc_layers=24, enc_heads=16, enc_ffn=4096, enc_conv_channels=480,
        dec_hidden=2048, dec_layers=28, dec_heads=16, dec_kv_heads=8, dec_head_dim=128, dec_ffn=6144,
        vocab_size=151936, tie_embeddings=True,
    ),
}


def tiny_config(tokenizer: PreTrainedTokenizerFast, dims: TinyDims) -> dict:
    """A Qwen3-ASR config.json dict for `dims` and `tokenizer`."""
    ids = tokenizer.convert_tokens_to_ids
    audio = {
        "num_mel_bins": 128,
        "encoder_layers": dims.enc_layers,
        "encoder_attention_heads": dims.enc_heads,
        "encoder_ffn_dim": dims.enc_ffn,
        "d_model": dims.enc_d_model,
        "output_dim": dims.dec_hidden,
        "n_window": 50,
        "n_window_infer": 800,
        "conv_chunksize": 500,
        "downsample_hidden_size": dims.enc_conv_channels,
        "max_source_positions": 1500,
        "activation_function": "gelu",
    }
    # All three MRoPE sections see the same position for audio-only input, so
    # any split of head_dim/2 reproduces the real model's (1-D) rotary scheme.
    half = dims.dec_head_dim // 2
    text = {
        "vocab_size": dims.vocab_size or len(tokenizer),
        "hidden_size": dims.dec_hidden,
        "intermediate_size": dims.dec_ffn,
        "num_hidden_layers": dims.dec_layers,
        "num_attention_heads": dims.dec_heads,
        "num_key_value_heads": dims.dec_kv_heads,
        "head_dim": dims.dec_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": 65536,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": {
            "rope_type": "default",
            "mrope_section": [half - 2 * (half // 4), half // 4, half // 4],
            "interleaved": True,
        },
        "tie_word_embeddings": dims.tie_embeddings,
    }
    thinker = {
        "audio_config": audio,
        "text_config": text,
        "audio_token_id": ids("<|audio_pad|>"),
        "audio_start_token_id": ids("<|audio_start|>"),
        "user_token_id": tokenizer.encode("user")[0],
    }
    return {
        "architectures": ["Qwen3ASRForConditionalGeneration"],
        "model_type": "qwen3_asr",
        "thinker_config": thinker,
        "support_languages": ["English"],
    }


def save_checkpoint(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Save weights, tokenizer and processor files as one loadable directory."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    save_processor(tokenizer, out_dir)
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    generation = {"eos_token_id": eos, "pad_token_id": eos[1], "do_sample": False}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))


def random_model(dims: TinyDims, seed: int, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A random-weight model with the real architecture, and its tokenizer."""
    from qwen_asr.core.transformers_backend import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

    tokenizer = build_tokenizer()
    config = Qwen3ASRConfig(**tiny_config(tokenizer, dims))
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        # Initialise directly on the target device: real sizes take minutes on a CPU.
        with torch.device(device):
            model = Qwen3ASRForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    return model, tokenizer


def random_loaded(preset: str, seed: int, device: str, dtype: torch.dtype):
    """A random model of a preset size, assembled in memory as the engine loads models."""
    from transformers import WhisperFeatureExtractor

    from engine.loader import assemble

    model, tokenizer = random_model(PRESETS[preset], seed, device, dtype)
    mel_filters = WhisperFeatureExtractor(feature_size=128).mel_filters.astype("float32")
    return assemble(f"random-{preset}", model, tokenizer, tokenizer.chat_template, mel_filters, torch.device(device))


def build_random(out_dir: Path, seed: int = 0, dims: TinyDims = TinyDims()) -> Path:
    """Write a random-weight checkpoint to `out_dir` and return it."""
    model, tokenizer = random_model(dims, seed)
    save_checkpoint(model, tokenizer, out_dir)
    (out_dir / "tiny_dims.json").write_text(json.dumps({"seed": seed, **asdict(dims)}, indent=2))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engine.tiny", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write a random tiny checkpoint")
    build.add_argument("out_dir", type=Path)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--arch", choices=sorted(PRESETS), default="tiny", help="tiny, or a real size")
    args = parser.parse_args(argv)
    path = build_random(args.out_dir, seed=args.seed, dims=PRESETS[args.arch])
    print(f"wrote random Qwen3-ASR checkpoint ({args.arch}) to {path}")


if __name__ == "__main__":
    main()
