# syntax=docker/dockerfile:1
# dtkd's images, two targets from one lock (constraints.txt):
#   train  (default, the last stage): torch + the CUDA 13 libraries as PyPI wheels (the lock's
#          torch==2.14.0 / torchvision==0.29.2 pair; the GPU driver comes from the node through the
#          NVIDIA container toolkit, so no CUDA base image is needed), the project with its `mlops`
#          extra, configs/ and the Kubernetes entry point k8s/prepare_run.py under /opt/dtkd.
#          The ZenML step pods (parent_image with skip_build: k8s/zenml-run-k8s.yaml) and the
#          TrainJob/PyTorchJob all run it as is: the steps import the installed project.
#   server: the MLflow tracking server (with its basic-auth app) and the ZenML server (k8s/base),
#          the same mlflow and zenml versions as every client, with psycopg2 (PostgreSQL) and
#          PyMySQL (MySQL). No torch.
#
#   docker build -t ghcr.io/example/dtkd:0.1.0 .
#   docker build --target server -t ghcr.io/example/dtkd-server:0.1.0 .
#
# Both run as uid/gid 10001 with nothing writable in the image: the pods mount /tmp and /data.
# No compiler or build tool reaches a final stage: they live in the build stages only.
# The base is pinned by tag and by the digest of its multi-architecture index; where that digest
# came from and how to re-pin it: docs/deploy.md, "Image pins".
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# ---- build stages -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build-train
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A compiler for the few sdists of the lock (fvcore, iopath, pytorchvideo are source-only).
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY dtkd ./dtkd
COPY dtkd_ops ./dtkd_ops
COPY steps ./steps
COPY pipelines ./pipelines
# One resolve with the lock, as `make install` does (a second pip install once broke zenml's pins).
RUN pip install "pip>=24" wheel && pip install -c constraints.txt ".[mlops]" && pip check

FROM ${PYTHON_IMAGE} AS build-server
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY constraints.txt /tmp/constraints.txt
RUN pip install "pip>=24" && pip install -c /tmp/constraints.txt "mlflow[auth]" "zenml[server]" psycopg2-binary PyMySQL \
    && pip check

# ---- final stages -------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS server
RUN groupadd --gid 10001 dtkd && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin dtkd
COPY --from=build-server /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH HOME=/tmp PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    ZENML_ANALYTICS_OPT_IN=false MLFLOW_DISABLE_TELEMETRY=true
EXPOSE 5000 8080
USER 10001:10001

FROM ${PYTHON_IMAGE} AS train
# git: DVC (the data-version step) shells out to it. Nothing else from apt.
RUN apt-get update && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 dtkd && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin dtkd
COPY --from=build-train /opt/venv /opt/venv
WORKDIR /opt/dtkd
COPY configs ./configs
COPY k8s/zenml-run-k8s.yaml k8s/prepare_run.py ./k8s/
ENV PATH=/opt/venv/bin:$PATH HOME=/tmp PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    ZENML_ANALYTICS_OPT_IN=false MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1
USER 10001:10001
