"""The critic service as a process of the caller: `critic.url` when one is given, else a local service started for the
whole CriticConfig, logging to a file, and dying with the process that started it (used by launch/ and actors' CLI).
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator

import httpx

from .config import CriticConfig


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """True when a critic service answers GET /healthz at url."""
    try:
        return httpx.get(url.rstrip("/") + "/healthz", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies, however it dies (kill -9 included). Linux only;
    elsewhere the caller's `finally` stops the service."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_local(cfg: CriticConfig, log_path: str | None = None, timeout_s: float = 30.0) -> tuple[str, subprocess.Popen]:
    """Run `python -m critic_service serve` for this whole config on a free port; returns (url, process). Its output
    goes to log_path (appended), or is discarded: never to a pipe nobody reads."""
    port = cfg.port
    if port == 0:
        with socket.socket() as s:
            s.bind((cfg.host, 0))
            port = s.getsockname()[1]
    whole = json.dumps({**dataclasses.asdict(cfg), "port": port, "url": None})
    cmd = [sys.executable, "-m", "critic_service", "serve", "--config-json", whole]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    finally:
        if log_path:
            log.close()  # the child holds its own descriptor
    url = f"http://{cfg.host}:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = open(log_path, errors="replace").read()[-500:] if log_path else "(no log: pass log_path)"
            raise RuntimeError(f"the critic service exited with {proc.returncode}: {tail}")
        if answers(url):
            return url, proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the critic service did not answer on {url} within {timeout_s:g} s")


def stop(proc: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def endpoint(cfg: CriticConfig, log_path: str | None = None) -> Iterator[str]:
    """The critic's base URL for the length of the block: `cfg.url` when set (it must answer GET /healthz, else
    ValueError naming the key), otherwise a local service for cfg, stopped when the block ends."""
    if cfg.url:
        if not answers(cfg.url):
            raise ValueError(f"critic.url={cfg.url!r} does not answer GET /healthz")
        yield cfg.url
        return
    url, proc = start_local(cfg, log_path)
    try:
        yield url
    finally:
        stop(proc)
