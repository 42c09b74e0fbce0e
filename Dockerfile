# faceverify service image (docs/deploy.md).
#
#   docker build -t faceverify:cpu .                                        # no torch (default)
#   docker build -t faceverify:gpu --build-arg FACEVERIFY_EXTRAS=gpu .      # + CUDA torch
#   docker build -t faceverify:gpu --build-arg FACEVERIFY_EXTRAS=gpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 .
#
# The CPU image carries no torch: the service runs the int8 graph in ONNX Runtime and finds
# faces with YuNet and dlib's landmarks (pyproject.toml's core dependencies). FACEVERIFY_EXTRAS
# adds pyproject extras; `gpu` adds torch for the encoder on CUDA, from TORCH_INDEX_URL (empty:
# the default package index, whose wheels are CUDA builds that bundle the CUDA runtime; or any
# other wheel index, e.g. a CUDA-specific one). The GPU image needs the NVIDIA container
# toolkit on the host and a device reservation: docker-compose.gpu.yml.
#
# The default weights, weights/faceverify-encoder.safetensors + .json, the 5-point landmark
# model they align faces with, weights/landmarks-dlib5.safetensors, and the face detector,
# weights/detector-yunet.onnx, and the int8 graph of the encoder the CPU runs,
# weights/faceverify-encoder.int8.onnx + .json, are baked into the image.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ARG FACEVERIFY_EXTRAS=
ARG TORCH_INDEX_URL=
ARG TORCH_VERSION=2.14.1

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=120 \
    PYTHONDONTWRITEBYTECODE=1

SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# 1. The GPU image only: torch first, from TORCH_INDEX_URL (or the default index when it is
#    empty). Its exact installed version (e.g. 2.14.1+cu130) then constrains every later
#    install, so that pip never swaps it for another build.
RUN : > /opt/torch-constraints.txt; \
    case ",${FACEVERIFY_EXTRAS}," in *,gpu,*) \
      if [ -n "${TORCH_INDEX_URL}" ]; then export PIP_INDEX_URL="${TORCH_INDEX_URL}"; fi; \
      pip install --retries=5 "torch==${TORCH_VERSION}"; \
      pip freeze | grep -iE '^torch==' > /opt/torch-constraints.txt;; \
    esac; \
    cat /opt/torch-constraints.txt

# 2. The service's dependencies: the project's core dependencies and the FACEVERIFY_EXTRAS'
#    (no training, benchmark or test extras), read from pyproject.toml, at the versions
#    requirements.lock pins (make lock), so that the image runs what CI tested. This layer is
#    rebuilt only when either file changes.
COPY pyproject.toml requirements.lock ./
RUN FACEVERIFY_EXTRAS="${FACEVERIFY_EXTRAS}" python3 -c 'import os, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; extras = [e for e in os.environ["FACEVERIFY_EXTRAS"].split(",") if e]; print("\n".join(p["dependencies"] + [d for e in extras for d in p["optional-dependencies"][e]]))' > /opt/requirements.txt; \
    cat /opt/requirements.txt; \
    pip install --retries=5 -c /opt/torch-constraints.txt -c requirements.lock -r /opt/requirements.txt

# 3. Every dependency there and consistent, and torch only where it was asked for. The
#    service's own code is not installed into the venv: the runtime stage copies app/, model/
#    and faceverify/ next to it, so that a code change rebuilds a few small layers, not the
#    venv's.
RUN pip check && \
    find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + && \
    case ",${FACEVERIFY_EXTRAS}," in *,gpu,*) ;; *) \
      if python3 -c 'import torch' 2>/dev/null; then echo "torch in the CPU image" >&2; exit 1; fi;; \
    esac

# 4. The service's code and the weights, readable by the runtime user whatever the build
#    context's file modes were.
COPY app /opt/app/app
COPY model /opt/app/model
COPY faceverify /opt/app/faceverify
COPY weights /opt/app/weights
RUN for f in faceverify-encoder.safetensors faceverify-encoder.json landmarks-dlib5.safetensors \
             detector-yunet.onnx faceverify-encoder.int8.onnx faceverify-encoder.int8.json; do \
      test -s "/opt/app/weights/$f" || { echo "weights/$f is missing: build from a tree with the default weights (see docs/deploy.md)" >&2; exit 1; }; \
    done; \
    find /opt/app -name '__pycache__' -prune -exec rm -rf {} +; \
    chmod -R a+rX,go-w /opt/app

# ---------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="faceverify" \
      org.opencontainers.image.description="Face verification service (Siamese encoder; YuNet and dlib alignment)" \
      org.opencontainers.image.licenses="MIT"

# uid/gid 10001: no clash with a host user; the app files stay owned by root (read-only to it).
RUN groupadd --gid 10001 faceverify && \
    useradd --uid 10001 --gid 10001 --no-log-init --home-dir /home/faceverify --create-home \
            --shell /usr/sbin/nologin faceverify

COPY --from=builder /opt/venv /opt/venv
COPY deploy/docker-entrypoint.sh /usr/local/bin/faceverify-entrypoint
COPY --from=builder /opt/app /app
# The default gallery store, sqlite:///data/gallery.db, is /app/data/gallery.db: the one
# directory the service writes to. Mount a volume there (compose: `gallery-data`; k8s: a PVC),
# or the service cannot start on a read-only root filesystem. A new named volume takes this
# directory's owner (uid 10001), so it starts writable (docs/deploy.md, "Galleries").
RUN install -d -o 10001 -g 10001 -m 0750 /app/data

# MALLOC_ARENA_MAX=2: glibc keeps two malloc arenas instead of one per thread, so memory freed
# after large uploads is reused: peak RSS at 128 concurrent maximum-size requests 2.30 GiB
# instead of 2.51 (python -m bench.upload_memory; docs/operations.md, "Memory").
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app \
    HOME=/home/faceverify \
    HOST=0.0.0.0 \
    PORT=8000 \
    WEB_CONCURRENCY=1 \
    OMP_NUM_THREADS=2 \
    MALLOC_ARENA_MAX=2 \
    FACEVERIFY_TORCH_THREADS=2 \
    FACEVERIFY_DETECT_WORKERS=2 \
    FACEVERIFY_WEIGHTS=/app/weights/faceverify-encoder.safetensors

WORKDIR /app
USER 10001:10001
EXPOSE 8000

# Ready = weights loaded and warmed up (503 before). The warm-up takes seconds on a CPU.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('PORT', '8000'), timeout=4)"]

ENTRYPOINT ["/usr/local/bin/faceverify-entrypoint"]
