"""Engine configuration: one validated tree, units in the names.

`EngineConfig.from_dict` reads the `engine:` section of serve_config.yaml (or
any dict); unknown keys are an error, so a typo never silently becomes a
default.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from engine.policy import PolicyConfig


@dataclass(frozen=True)
class EngineConfig:
    """Everything one scheduler (one model replica) needs."""

    model: str = "models/tiny-en"
    device: str = "auto"
    dtype: str = "auto"
    # Heads file; None means <model dir>/alignment_heads.json or the default guess.
    alignment_heads: str | None = None
    max_alignment_heads: int = 8
    # Slots: streams one scheduler holds at once; max_batch: rows per model step.
    max_streams: int = 32
    max_batch: int = 32
    # A stream joins a step once it has this much new audio (or has ended).
    min_step_s: float = 0.5
    # At most this much of a stream's waiting audio enters one step.
    max_step_s: float = 2.0
    # Encoder windows are dropped from the front of the buffer once it is longer
    # than this and their audio is transcribed; one extra window is the hard cap.
    max_buffer_s: float = 24.0
    # Audio a stream may have waiting beyond what steps consume (backpressure).
    max_backlog_s: float = 10.0
    # Largest single chunk `feed` accepts.
    max_chunk_s: float = 30.0
    # Earlier committed tokens kept as context in the system prompt.
    context_max_tokens: int = 48
    # Decode budget: tokens per second of new audio in one step (a runaway guard).
    max_tokens_per_s: float = 8.0
    # Tentative tokens decoded after a border stop, for `partial` captions.
    partial_tokens: int = 2
    # No committed word for this long: earlier text stops being context.
    silence_reset_s: float = 6.0
    # The decoder ended the text and the last word ended this long ago: the
    # utterance is over, and the buffer restarts after it (its text becomes
    # context), so a buffer holds one utterance, as the model was trained on.
    endpoint_s: float = 1.0
    # Audio kept after the last word's end (an estimate: the heads mark where a
    # word starts) when the buffer restarts.
    restart_margin_s: float = 0.5
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    # Reuse decoder key/values of the stable prompt prefix across steps (off only to check parity).
    reuse_prefix: bool = True
    # Benchmarks only: decode exactly this many tokens per second of new audio,
    # ignoring end-of-text and the policy (random-weight models never stop).
    fixed_tokens_per_s: float | None = None

    def __post_init__(self) -> None:
        positive = ("min_step_s", "max_step_s", "max_buffer_s", "max_chunk_s", "max_tokens_per_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"engine.{name} must be > 0, got {getattr(self, name)}")
        if self.max_step_s < self.min_step_s:
            raise ValueError("engine.max_step_s must be >= min_step_s")
        if self.max_streams < 1 or self.max_batch < 1 or self.max_alignment_heads < 1:
            raise ValueError("engine.max_streams, max_batch and max_alignment_heads must be >= 1")
        if self.max_backlog_s < self.max_step_s:
            raise ValueError("engine.max_backlog_s must be >= max_step_s")
        if self.context_max_tokens < 0 or self.partial_tokens < 0 or self.silence_reset_s <= 0:
            raise ValueError("engine.context_max_tokens/partial_tokens must be >= 0, silence_reset_s > 0")
        if self.endpoint_s <= 0 or not 0 <= self.restart_margin_s < self.endpoint_s:
            raise ValueError("engine.endpoint_s must be > 0 and 0 <= restart_margin_s < endpoint_s")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineConfig:
        """Build from a mapping (e.g. YAML); nested `policy` allowed."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown engine config keys: {sorted(unknown)}")
        values = dict(data)
        if isinstance(values.get("policy"), dict):
            policy_known = {f.name for f in dataclasses.fields(PolicyConfig)}
            bad = set(values["policy"]) - policy_known
            if bad:
                raise ValueError(f"unknown engine.policy keys: {sorted(bad)}")
            values["policy"] = PolicyConfig(**values["policy"])
        return cls(**values)

    def replace(self, **changes: Any) -> EngineConfig:
        return dataclasses.replace(self, **changes)

    def step_token_budget(self, new_audio_s: float) -> int:
        """Most transcript tokens one step may commit for `new_audio_s` of audio."""
        return int(math.ceil(new_audio_s * self.max_tokens_per_s)) + 4
