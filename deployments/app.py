"""The application builder named in serve_config.yaml: `deployments.app:build_app`.

    ingest (CPU) --DeploymentHandle, session_id = stream key--> ASRModel (GPU)

Deployment options (replicas, autoscaling, router, max_ongoing_requests) come
from serve_config.yaml; only the model replica's GPU count is decided here,
because it depends on the cluster: a machine without GPUs runs the model
replica on its CPU (DESIGN.md), which is logged.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.serve import Application

from deployments.asr import ASRModel
from deployments.config import ServiceConfig
from deployments.ingest import Ingest

log = logging.getLogger("ray.serve")


def build_app(args: dict[str, Any]) -> Application:
    cfg = ServiceConfig.from_args(args)
    gpus = cfg.gpus_per_replica
    if gpus > 0 and ray.cluster_resources().get("GPU", 0) == 0:
        log.warning("no GPU in the Ray cluster: the model replicas run on the CPU")
        gpus = 0
    model = ASRModel.options(ray_actor_options={"num_gpus": gpus, "num_cpus": cfg.cpus_per_replica}).bind(args)
    return Ingest.bind(model, args)
