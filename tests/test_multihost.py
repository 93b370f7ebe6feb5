"""`python launch/cluster.py` across two hosts: two network namespaces joined by a veth pair (addresses in
198.18.0.0/15, the range set aside for network testing), each with its own loopback like a real machine; a Ray head in
one, a Ray worker node in the other, the driver on the head host. Learner ranks, rollout workers and render workers
land on both hosts; the run trains, checkpoints and resumes. Needs root (CI runs as root); skips, saying why, where
namespaces cannot be made. Cleans up only what it made: its namespaces and the processes of its own Ray session."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from transformers import AutoModelForCausalLM

from .conftest import ROOT, stop_ray_session

pytestmark = pytest.mark.slow  # whole training runs: CI runs them (`pytest -m "not sweep"`)

RAY = str(ROOT / ".venv" / "bin" / "ray") if (ROOT / ".venv" / "bin" / "ray").exists() else "ray"


def sh(*cmd, check=True, timeout=120, **kw):
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr[-2000:]}")
    return res


@pytest.fixture(scope="module")
def two_hosts():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("two hosts need network namespaces: run as root with iproute2 installed")
    n = os.getpid() % 250 + 1
    a, b = f"rl{os.getpid()}a", f"rl{os.getpid()}b"
    ips = (f"198.18.{n}.1", f"198.18.{n}.2")
    made = sh("ip", "netns", "add", a, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot make network namespaces here: {made.stderr.strip()}")
    temp = tempfile.mkdtemp(prefix="rlh-", dir="/tmp")  # short: Ray's socket paths must fit AF_UNIX's limit
    try:
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", f"{a}0", "type", "veth", "peer", "name", f"{b}0")
        for ns, dev, ip in ((a, f"{a}0", ips[0]), (b, f"{b}0", ips[1])):
            sh("ip", "link", "set", dev, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        sh("ip", "netns", "exec", a, RAY, "start", "--head", "--node-ip-address", ips[0], "--port", "6379",
           "--num-cpus", "3", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}/a", env=env)
        sh("ip", "netns", "exec", b, RAY, "start", "--address", f"{ips[0]}:6379", "--node-ip-address", ips[1],
           "--num-cpus", "3", "--disable-usage-stats", f"--temp-dir={temp}/b", env=env)
        yield a, ips
    finally:
        stop_ray_session(temp)
        for ns in (a, b):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(temp, ignore_errors=True)


def cluster(ns: str, head: str, *args, timeout=600):
    cmd = ["ip", "netns", "exec", ns, sys.executable, "launch/cluster.py", f"cluster.address={head}:6379",
           "learner.ranks=2", "cluster.placement=spread", "rollout.group_size=2", "rollout.max_new_tokens=64",
           "trainer.wandb=disabled", "trainer.progress=false", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_two_hosts_train_checkpoint_and_resume(two_hosts, tmp_path, taught_model):
    """The taught tiny policy writes real pages, so renders and critiques cross the hosts too."""
    ns, ips = two_hosts
    out, model = tmp_path / "run", f"model.name={taught_model}"
    first = cluster(ns, ips[0], model, "trainer.max_steps=2", f"trainer.output_dir={out}")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    hosts = json.loads((out / "hosts.json").read_text())
    assert set(hosts["learner"]) == set(ips), hosts  # the DeepSpeed group spans both hosts
    everywhere = hosts["learner"] + hosts["rollout"] + hosts["render"]
    assert ips[1] in everywhere and set(everywhere) <= set(ips)
    assert f"critic service: http://{ips[0]}:" in first.stdout  # on the driver's node IP, not its loopback
    assert "2 nodes run the same project, environment and Chromium" in first.stdout  # launch/nodes.py's check
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and [r["policy_version"] for r in rows] == [1, 2]
    assert all(r["valid_render_rate"] > 0 and r["unscorable_rate"] == 0 for r in rows), rows  # rendered and scored
    AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step-000002" / "hf")

    again = cluster(ns, ips[0], model, "trainer.max_steps=3", "trainer.resume=auto", f"trainer.output_dir={out}")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "resumed from" in again.stdout and "step 2" in again.stdout
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["policy_version"] == 3
