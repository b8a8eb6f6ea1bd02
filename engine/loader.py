"""Load a Qwen3-ASR checkpoint (hub id or local directory) through qwen-asr.

qwen-asr's transformers backend provides the model, config and processor
classes; we register them with the Auto* factories (as qwen-asr's own
wrapper does) and keep the thinker (audio encoder + text decoder), the
tokenizer and the mel filter bank. Nothing here falls back to another model:
a checkpoint that cannot be loaded raises ModelLoadError.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import ModelLoadError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ModelSpec:
    """The dimensions the runner and scheduler need, read from the config."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    vocab_size: int
    n_mels: int
    n_window: int
    n_window_infer: int
    audio_token_id: int


@dataclass
class LoadedModel:
    """A loaded checkpoint: modules on their device, tokenizer, features."""

    name: str
    directory: Path | None
    thinker: torch.nn.Module
    tokenizer: object
    chat_template: str | None
    mel_filters: np.ndarray
    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype
    eos_ids: tuple[int, ...]


def resolve_device(device: str) -> torch.device:
    """'auto' means the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' means bfloat16 on GPUs and on CPUs with AMX tiles, else float32.

    With AMX (Intel Sapphire Rapids and later) a bfloat16 matmul of prefill
    size runs ~10x faster than float32 on one core; without it bfloat16 is
    emulated and slower. On the held-out clips the bundled model's WER is the
    same in both (streaming 8.1% vs 8.0% on 60 clips, benchmarks/quality.py).
    """
    if dtype == "auto":
        if device.type == "cuda" or (device.type == "cpu" and torch.cpu._is_amx_tile_supported()):
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"dtype must be auto or one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def register_qwen3_asr() -> None:
    """Make AutoConfig/AutoModel/AutoProcessor know the qwen3_asr model type."""
    from qwen_asr.core.transformers_backend import (
        Qwen3ASRConfig,
        Qwen3ASRForConditionalGeneration,
        Qwen3ASRProcessor,
    )
    from transformers import AutoConfig, AutoModel, AutoProcessor

    AutoConfig.register("qwen3_asr", Qwen3ASRConfig, exist_ok=True)
    AutoModel.register(Qwen3ASRConfig, Qwen3ASRForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(Qwen3ASRConfig, Qwen3ASRProcessor, exist_ok=True)


def resolve_model_path(name: str) -> str:
    """A local directory (absolute, relative to cwd or to the repo) or a hub id as given."""
    for candidate in (Path(name), REPO_ROOT / name):
        if candidate.is_dir():
            return str(candidate.resolve())
    return name


def _spec(thinker: torch.nn.Module) -> ModelSpec:
    config = thinker.config
    text, audio = config.text_config, config.audio_config
    return ModelSpec(
        n_layers=text.num_hidden_layers,
        n_heads=text.num_attention_heads,
        n_kv_heads=text.num_key_value_heads,
        head_dim=text.head_dim,
        hidden=text.hidden_size,
        vocab_size=text.vocab_size,
        n_mels=audio.num_mel_bins,
        n_window=audio.n_window,
        n_window_infer=audio.n_window_infer,
        audio_token_id=config.audio_token_id,
    )


def _eos_ids(tokenizer: object, directory: Path | None) -> tuple[int, ...]:
    # The checkpoint's generation config lists the end tokens; the chat
    # format's <|im_end|> and <|endoftext|> are always among them.
    ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    if directory is not None and (directory / "generation_config.json").exists():
        eos = json.loads((directory / "generation_config.json").read_text()).get("eos_token_id", [])
        ids |= set(eos if isinstance(eos, list) else [eos])
    return tuple(sorted(ids))


def load_model(name: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load `name` (hub id or directory) onto `device` in `dtype`."""
    register_qwen3_asr()
    from transformers import AutoModel, AutoProcessor

    path = resolve_model_path(name)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    try:
        model = AutoModel.from_pretrained(path, dtype=torch_dtype)
        processor = AutoProcessor.from_pretrained(path, fix_mistral_regex=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load Qwen3-ASR model {name!r} (resolved to {path!r}): {exc}. "
            "Give a local checkpoint directory or a hub id reachable from this machine."
        ) from exc
    if getattr(model.config, "model_type", None) != "qwen3_asr":
        raise ModelLoadError(f"{name!r} is a {model.config.model_type!r} model, not qwen3_asr")
    chat_template = getattr(processor, "chat_template", None) or processor.tokenizer.chat_template
    return assemble(
        name,
        model,
        processor.tokenizer,
        chat_template,
        np.asarray(processor.feature_extractor.mel_filters, dtype=np.float32),
        torch_device,
        Path(path) if Path(path).is_dir() else None,
    )


def assemble(
    name: str,
    model: torch.nn.Module,
    tokenizer: object,
    chat_template: str | None,
    mel_filters: np.ndarray,
    device: torch.device,
    directory: Path | None = None,
) -> LoadedModel:
    """A LoadedModel from an instantiated Qwen3ASRForConditionalGeneration."""
    thinker = model.thinker.to(device).eval()
    spec = _spec(thinker)
    dtype = next(thinker.parameters()).dtype
    log.info("loaded %s on %s (%s): %s", name, device, dtype, spec)
    return LoadedModel(
        name=name,
        directory=directory,
        thinker=thinker,
        tokenizer=tokenizer,
        chat_template=chat_template,
        mel_filters=mel_filters,
        spec=spec,
        device=device,
        dtype=dtype,
        eos_ids=_eos_ids(tokenizer, directory),
    )
