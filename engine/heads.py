"""Alignment heads: which decoder self-attention heads track the audio.

A heads file is JSON, sorted best first:

    {"model": "...", "heads": [{"layer": 9, "head": 3, "score": 0.93}, ...]}

The engine uses the first `max_heads` entries. Without a file it uses the
documented default: every head of the layers in the third quarter of the
decoder (layers L/2 .. 3L/4 - 1), at most `max_heads` of them. That default is
a guess, good enough to run; `python -m engine.head_detection` measures the
real ones for a checkpoint (a tool, kept apart: it drives the model runner,
which imports this module).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from engine.loader import ModelSpec

log = logging.getLogger(__name__)

HEADS_FILE = "alignment_heads.json"

Head = tuple[int, int]


def default_heads(spec: ModelSpec, max_heads: int) -> list[Head]:
    """The documented default set (see module docstring)."""
    first, stop = spec.n_layers // 2, max(spec.n_layers // 2 + 1, 3 * spec.n_layers // 4)
    heads = [(layer, head) for layer in range(first, stop) for head in range(spec.n_heads)]
    return heads[:max_heads]


def read_heads_file(path: Path, spec: ModelSpec) -> list[Head]:
    """All heads of a heads file in its order; raises ValueError on a bad file."""
    data = json.loads(path.read_text())
    heads = [(int(h["layer"]), int(h["head"])) for h in data["heads"]]
    for layer, head in heads:
        if not (0 <= layer < spec.n_layers and 0 <= head < spec.n_heads):
            raise ValueError(f"{path}: head ({layer}, {head}) outside a {spec.n_layers}x{spec.n_heads} decoder")
    if not heads:
        raise ValueError(f"{path}: no heads listed")
    return heads


def resolve_heads(
    explicit: str | None, model_dir: Path | None, spec: ModelSpec, max_heads: int
) -> tuple[list[Head], str]:
    """Heads to use and where they came from: explicit file, model dir file, or default."""
    if explicit:
        return read_heads_file(Path(explicit), spec)[:max_heads], explicit
    if model_dir is not None and (model_dir / HEADS_FILE).exists():
        path = model_dir / HEADS_FILE
        return read_heads_file(path, spec)[:max_heads], str(path)
    log.warning("no %s for this model: using the default heads guess (run python -m engine.head_detection)", HEADS_FILE)
    return default_heads(spec, max_heads), "default"


def write_heads_file(path: Path, model: str, scored: list[tuple[Head, float]], meta: dict) -> None:
    """Write heads sorted by score, best first."""
    ordered = sorted(scored, key=lambda item: -item[1])
    header = json.dumps({"model": model, **meta}, indent=1)[:-2]
    heads = ",\n".join(
        "  " + json.dumps({"layer": l, "head": h, "score": round(s, 4)}) for (l, h), s in ordered
    )
    path.write_text(f'{header},\n "heads": [\n{heads}\n ]\n}}\n')
