# The serving image for Kubernetes (k8s/, docs/deploy-kubernetes.md).
#
#   docker build -t REGISTRY/qwen3-live-captions:TAG .                                # weights fetched at start
#   docker build --build-arg MODEL_ID=Qwen/Qwen3-ASR-1.7B -t REGISTRY/...:TAG .       # weights baked in
#
# Ray's GPU image (CUDA, Python 3.11) at exactly the Ray version that
# pyproject.toml pins and the RayService's rayVersion names: head, workers
# and the Serve config must all run one Ray.
FROM rayproject/ray:2.60.0-py311-gpu

# The Hugging Face cache lives in the image. Baked: MODEL_ID set at build
# time downloads the weights into it, and pods run with HF_HUB_OFFLINE=1.
# Fetched at start: MODEL_ID empty, pods run with HF_HUB_OFFLINE=0 and the
# model replica downloads the weights into the same path (mount a volume
# there to keep them across restarts). This layer comes before the code so
# a code change does not download the weights again. The hub client range is
# the one transformers (pinned in pyproject.toml) accepts.
ENV HF_HOME=/home/ray/hf
ARG MODEL_ID=""
RUN if [ -n "$MODEL_ID" ]; then \
      pip install --no-cache-dir "huggingface_hub>=0.34,<1.0" && \
      python -c "import sys; from huggingface_hub import snapshot_download; snapshot_download(sys.argv[1])" "$MODEL_ID"; \
    fi

# The project installs as a regular package (not editable, not a working_dir):
# the app builder, request router and autoscaling policy named in
# serve_config.yaml are then importable in every Ray process of every pod,
# and by `serve deploy` / `serve status` on the head. COPY creates the
# directory owned by the image's `ray` user (a WORKDIR made first would be
# root's, and the build writes its metadata into the source tree). The import
# check runs isolated (-I: the source tree is not on sys.path), so it imports
# the installed package.
COPY --chown=ray:users . /home/ray/app
WORKDIR /home/ray/app
# psycopg (the project's `postgres` extra, pinned here for a reproducible
# image): the ingest's transcript database in a cluster is PostgreSQL (CAPTIONS_DB_URL).
RUN pip install --no-cache-dir . "psycopg[binary]==3.2.3" && python -I -c "import engine, deployments, captions, k8s"
