# fleetpilot runtime image: the daemon and its ONNX policies, without torch.
#
#   docker build -t fleetpilot:0.1.0 .                                  # CPU (python:3.11-slim)
#   docker build --build-arg VARIANT=gpu -t fleetpilot:0.1.0-gpu .      # GPU (onnxruntime-gpu on CUDA)
#
# Runs as UID 10001 with a read-only root filesystem; only /var/lib/fleetpilot (the decision journal) and /tmp
# must be writable. See docs/deploy.md.

# cpu | gpu: picks the base stage below.
ARG VARIANT=cpu
# CPU base: Debian slim with CPython 3.11 (the project's minimum).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# GPU base: CUDA runtime with cuDNN 9, which onnxruntime-gpu's CUDA execution provider loads at run time.
# Ubuntu 24.04 ships CPython 3.12 (requires-python >= 3.11). Keep CUDA in step with onnxruntime-gpu's
# requirements table (https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
# onnxruntime-gpu replaces onnxruntime in the GPU image (same Python module; both cannot be installed).
ARG ONNXRUNTIME_GPU_VERSION=1.32.0

# ---------------------------------------------------------------------------------------------------------
# Base stages: the same Python in builder and runtime, so the venv copied between them works as is.
FROM ${PYTHON_IMAGE} AS base-cpu

FROM ${CUDA_IMAGE} AS base-gpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# DL3008 (pin apt versions) is ignored on purpose for this one line: Ubuntu keeps only the newest security
# build of python3 in noble-updates/noble-security, so an exact pin either breaks the build after the next
# Python security update or (pinned to the release pocket) freezes a Python with known CVEs. The CUDA base tag
# above is what pins this image; the CPU image installs no apt package at all.

# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
# DL3006 (tag the image) does not apply: base-cpu / base-gpu are the stages above, each with a pinned tag.

# ---------------------------------------------------------------------------------------------------------
FROM base AS builder
ARG VARIANT
ARG ONNXRUNTIME_GPU_VERSION
SHELL ["/bin/sh", "-eu", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller/ controller/
COPY policies/ policies/
COPY sim/ sim/
COPY training/ training/
# The runtime venv: the project wheel with its runtime dependencies only (no `train` extra, so no torch,
# onnx or matplotlib). For the GPU variant onnxruntime is swapped for onnxruntime-gpu at a pinned version.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-cache-dir /wheels/fleetpilot-*.whl \
    && if [ "${VARIANT}" = "gpu" ]; then \
         /opt/venv/bin/pip uninstall -y onnxruntime \
         && /opt/venv/bin/pip install --no-cache-dir "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"; \
       fi \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit('torch must not be in the runtime image' if u.find_spec('torch') else 0)" \
    && /opt/venv/bin/python -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" \
    && /opt/venv/bin/fleetpilot --version

# ---------------------------------------------------------------------------------------------------------
FROM base AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="fleetpilot" \
      org.opencontainers.image.description="Predictive autoscaling controller (ONNX policy, no torch)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.fleetpilot.variant="${VARIANT}"
# Fixed non-root UID/GID 10001 (matches the helm chart's securityContext and any hostPath ownership).
RUN groupadd --system --gid 10001 fleetpilot \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
               --shell /usr/sbin/nologin fleetpilot \
    && mkdir -p /etc/fleetpilot /var/lib/fleetpilot \
    && chown 10001:10001 /var/lib/fleetpilot \
    && chmod 0750 /var/lib/fleetpilot
COPY --from=builder /opt/venv /opt/venv
# A harmless default config (built-in simulator, simulated backend, dry run): `docker run` works out of the
# box. Mount your own at /etc/fleetpilot/config.yaml (read-only) for real groups.
COPY deploy/systemd/config.yaml /etc/fleetpilot/config.yaml
# PYTHONDONTWRITEBYTECODE: bytecode was compiled at install time; nothing is written under the read-only root.
# STATE_DIRECTORY: where a config without journal_path puts the journal (/var/lib/fleetpilot/journal.sqlite),
# the same variable systemd's StateDirectory= sets (controller/state.py).
# FLEETPILOT_SERVER__HOST: inside a container the metrics/health server must listen on all interfaces so the
# orchestrator's probes and Prometheus can reach it (outside containers the daemon's default is 127.0.0.1).
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    STATE_DIRECTORY=/var/lib/fleetpilot \
    FLEETPILOT_SERVER__HOST=0.0.0.0
USER 10001:10001
WORKDIR /var/lib/fleetpilot
# The only writable paths under `--read-only`: the journal and scratch space.
VOLUME ["/var/lib/fleetpilot", "/tmp"]
EXPOSE 9108
# slim has no curl: probe /healthz with the standard library. Assumes the default port 9108.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["fleetpilot"]
CMD ["run", "--config", "/etc/fleetpilot/config.yaml"]
