# syntax=docker/dockerfile:1
# CPU image (default) or GPU image: docker build --build-arg EXTRAS=gpu -t reco-service:gpu .
# The bundle is not baked in: mount it at /bundles (RECO_BUNDLE_PATH=/bundles/current).
ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS build
ARG EXTRAS=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY service ./service
RUN /opt/venv/bin/pip install ".[${EXTRAS}]"

FROM python:${PYTHON}-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 RECO_BUNDLE_PATH=/bundles/current
RUN useradd --system --uid 10001 --no-create-home reco
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s --start-period=60s \
  CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"]
CMD ["uvicorn", "--factory", "service.main:create_app", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]
