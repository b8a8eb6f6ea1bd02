# Two entry points on a fresh machine: `make test` and `make run`.
# Both bootstrap .venv/ themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Without a GPU we install the CPU build of torch (2.13.0 is the release this
# workplace keeps on disk); with one, pip picks the default CUDA build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4" || echo "torch==2.13.0")

.PHONY: test venv sysdeps browserdeps tiny-en run k8s

venv: $(STAMP)

# espeak-ng and sox synthesise the speech that tests, training and benchmarks use.
# postgresql: the tests run the transcript store on a throwaway live server
# (tests/postgres.py); its binaries live off PATH, under /usr/lib/postgresql/*/bin.
sysdeps:
	@missing=""; for tool in espeak-ng sox; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# Headless Chromium and its WebDriver for the browser test of the captions page.
browserdeps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  echo "installing chromium chromium-driver (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

test: sysdeps browserdeps $(STAMP)
	$(BIN)/python -m pytest -q -ra

# The service on a local Ray at 127.0.0.1:8000. MODEL: hub id or model directory;
# the default, the bundled trained tiny model, runs on a CPU offline.
MODEL ?= models/tiny-en
run: $(STAMP)
	$(BIN)/python -m deployments.run --config serve_config.yaml --model "$(MODEL)"

# Rebuild the bundled trained model from scratch on 2 CPU cores (~6 h): corpus
# (~5 min); phase 1 from scratch (69 min, short clips first); phase 2 continued
# with a restarted learning-rate schedule and all clip lengths (118 min);
# phase 3 with more clips cut mid-speech, as streaming sees them (75 min);
# phase 4 fine-tuned from phase 3's model directory with non-speech clips and
# speech between long silences, up to the engine's 24 s buffer (50 min);
# phase 5 continued from phase 4's checkpoint at half the learning rate (20 min);
# phase 6 fine-tuned from phase 5's model directory with 12% non-speech, clicks
# drawn twice as often (25 min); heads. training/nonspeech.py draws clicks twice
# as often for phases 4 and 5 too: the shipped ones drew them once in eight.
tiny-en: sysdeps $(STAMP)
	$(BIN)/python -m training.corpus --out artifacts/corpus --train 24000 --wav
	$(BIN)/python -m training.train --corpus artifacts/corpus --out artifacts/tiny-en-phase1 \
	  --work artifacts/tiny-en-phase1.work --minutes 69 --expected-steps 7500 --warmup 100
	$(BIN)/python -m training.train --corpus artifacts/corpus --out artifacts/tiny-en-phase2 \
	  --work artifacts/tiny-en-phase2.work --init-from artifacts/tiny-en-phase1.work/checkpoint.pt \
	  --minutes 118 --expected-steps 17500 --lr 1e-3 --warmup 300 --curriculum 0
	$(BIN)/python -m training.train --corpus artifacts/corpus --out artifacts/tiny-en-phase3 \
	  --work artifacts/tiny-en-phase3.work --init-from artifacts/tiny-en-phase2.work/checkpoint.pt \
	  --minutes 75 --expected-steps 11000 --lr 4e-4 --warmup 100 --curriculum 0 --prefix-fraction 0.6
	$(BIN)/python -m training.train --corpus artifacts/corpus --out artifacts/tiny-en-phase4 \
	  --work artifacts/tiny-en-phase4.work --init-from artifacts/tiny-en-phase3 --head-fit-steps 150 \
	  --minutes 50 --schedule-by-time --lr 3e-4 --warmup 100 --curriculum 0 --prefix-fraction 0.6 \
	  --max-clip-s 24 --nonspeech-fraction 0.08 --padded-fraction 0.1 --ctc-weight 0.2
	$(BIN)/python -m training.train --corpus artifacts/corpus --out artifacts/tiny-en-phase5 \
	  --work artifacts/tiny-en-phase5.work --init-from artifacts/tiny-en-phase4.work/checkpoint.pt \
	  --minutes 20 --schedule-by-time --lr 1.5e-4 --warmup 50 --curriculum 0 --prefix-fraction 0.6 \
	  --max-clip-s 24 --nonspeech-fraction 0.08 --padded-fraction 0.1 --ctc-weight 0.2
	$(BIN)/python -m training.train --corpus artifacts/corpus --out models/tiny-en \
	  --work artifacts/tiny-en-phase6.work --init-from artifacts/tiny-en-phase5 --head-fit-steps 150 \
	  --minutes 25 --schedule-by-time --lr 1e-4 --warmup 50 --curriculum 0 --prefix-fraction 0.6 \
	  --max-clip-s 24 --nonspeech-fraction 0.12 --padded-fraction 0.1 --ctc-weight 0.2 --eval-every 100000
	$(BIN)/python -m engine.head_detection --model models/tiny-en --clips artifacts/corpus/heldout

# Re-render k8s/manifests/rayservice.yaml after editing serve_config.yaml,
# k8s/overrides.yaml or k8s/rayservice.base.yaml; commit the result (a test
# fails while it is stale).
k8s: $(STAMP)
	$(BIN)/python -m k8s.render
