"""Autoscaling on open streams per model replica (DESIGN.md), not in-flight requests.

Each model replica reports `open_streams` from record_autoscaling_stats();
the policy asks for ceil(total / target) replicas. Serve applies min/max
replicas, delays and smoothing on top (2.54+).
"""

from __future__ import annotations

import math
from typing import Any

from ray.serve.config import AutoscalingContext

METRIC = "open_streams"


class OpenStreamsPolicy:
    """desired replicas = ceil(open streams / target_streams_per_replica), at least 1."""

    def __init__(self, target_streams_per_replica: float = 16.0) -> None:
        if target_streams_per_replica <= 0:
            raise ValueError("target_streams_per_replica must be > 0")
        self.target = target_streams_per_replica

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        per_replica = (ctx.aggregated_metrics or {}).get(METRIC, {})
        if not per_replica:
            # No report yet (replicas starting): keep what we have.
            return ctx.current_num_replicas, ctx.policy_state
        total = sum(per_replica.values())
        return desired_replicas(total, self.target), {"open_streams": total}


def desired_replicas(open_streams: float, target: float) -> int:
    return max(1, math.ceil(open_streams / target - 1e-9))
