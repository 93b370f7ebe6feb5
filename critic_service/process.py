"""Start the critic service as a local process and wait until it answers (used by launch/ and actors' CLI)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx

from .config import CriticConfig


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """True when a critic service answers GET /healthz at url."""
    try:
        return httpx.get(url.rstrip("/") + "/healthz", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def start_local(cfg: CriticConfig, timeout_s: float = 30.0) -> tuple[str, subprocess.Popen]:
    """Run `python -m critic_service serve` for this config on a free port; returns (url, process)."""
    port = cfg.port
    if port == 0:
        with socket.socket() as s:
            s.bind((cfg.host, 0))
            port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "critic_service", "serve", "--host", cfg.host, "--port", str(port),
           "--backend", cfg.backend, "--openai-base-url", cfg.openai_base_url, "--openai-model", cfg.openai_model,
           "--timeout", str(cfg.timeout_s), "--retries", str(cfg.retries), "--max-concurrency", str(cfg.max_concurrency)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://{cfg.host}:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the critic service exited: {proc.stderr.read().decode()[-500:]}")
        if answers(url):
            return url, proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the critic service did not answer on {url} within {timeout_s:g} s")
