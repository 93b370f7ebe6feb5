"""`python launch/cluster.py` under faults: rollout and render workers killed mid-run, a critic backend that is down,
and `kill -9` of the driver followed by `trainer.resume=auto`. The policy is the tiny model taught to write a real
page, so that pages render and the critic is asked."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from launch.tasks import batch_for_step, procedural
from render_farm.sandbox import process_tree

from .conftest import ROOT

pytestmark = pytest.mark.slow  # whole training runs: CI runs them (`pytest -m "not sweep"`)

BASE = ["cluster.address=local", "rollout.group_size=2", "rollout.max_new_tokens=64", "trainer.wandb=disabled",
        "trainer.progress=false", "learner.lr=1e-7"]


@pytest.fixture(scope="module")
def taught(taught_model):
    return f"model.name={taught_model}"


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "launch/cluster.py", *BASE, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(path, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def of_run(driver: int, marker: str) -> list[int]:
    """Processes of the run this test started (its driver's own local Ray session, whose processes descend from the
    driver) whose command line holds marker: never another Ray's."""
    found = []
    for pid in process_tree(driver)[1:]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read().replace(b"\0", b" "):
                    found.append(pid)
        except OSError:
            pass
    return found


def kill_one(driver: int, name: str) -> int:
    pids = of_run(driver, f"ray::{name}")
    assert pids, f"no {name} process under the driver {driver}"
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


def samples(out, step):
    return [json.loads(x) for x in (out / "samples" / f"step-{step:06d}.jsonl").read_text().splitlines()]


def test_killed_rollout_and_render_workers_the_run_continues_without_duplicates(tmp_path, taught):
    out = tmp_path / "run"
    proc = start(taught, "trainer.max_steps=4", "rollout.workers=2", "render.workers=2", "trainer.save_every=100",
                 f"trainer.output_dir={out}")
    for step in (1, 2):  # a kill soon after a step's samples land hits the next step's rollout in flight
        wait_for(out / "samples" / f"step-{step:06d}.jsonl", proc)
        time.sleep(0.3)
        kill_one(proc.pid, "HFRolloutWorker")
        time.sleep(0.5)
        kill_one(proc.pid, "RenderWorker")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["policy_version"] == 4
    assert sum(r["resubmitted_groups"] for r in rows) > 0, rows  # the kills hit groups in flight, which were re-run
    pool = procedural("train")
    for step in (1, 2, 3, 4):
        got = sorted((s["task_id"], s["group_id"]) for s in samples(out, step))
        want = sorted((t["id"], g) for t in batch_for_step(pool, step, 2, 0) for g in range(2))
        assert got == want  # every group exactly once, in the planned data order
    assert rows[0]["valid_render_rate"] > 0  # the taught policy writes pages: renders and critiques really ran


def test_critic_backend_down_samples_are_unscorable_and_the_run_says_so(tmp_path, taught):
    out = tmp_path / "run"
    proc = start(taught, "critic=openai", "critic.openai_base_url=http://127.0.0.1:9/v1", "critic.retries=0",
                 "trainer.max_steps=1", f"trainer.output_dir={out}")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    (row,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["valid_render_rate"] > 0 and row["unscorable_rate"] > 0
    assert row["unscorable_rate"] < 1 or "unscorable" in stdout
    assert all(s["unscorable"] for s in samples(out, 1) if s["final_valid"])


def test_kill_9_of_the_driver_then_resume_auto_continues_in_the_same_data_order(tmp_path, taught):
    out = tmp_path / "run"
    proc = start(taught, "trainer.max_steps=3", f"trainer.output_dir={out}")
    wait_for(out / "checkpoints" / "step-000001", proc)
    (critic,) = of_run(proc.pid, "critic_service serve")
    os.kill(proc.pid, signal.SIGKILL)  # the driver only: what it started must die with it
    proc.communicate()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{critic}") and open(f"/proc/{critic}/stat").read().split()[2] != "Z":
        assert time.monotonic() < deadline, "the critic service outlived its killed driver"
        time.sleep(0.2)
    try:  # Ray's own agents of the killed driver's local session linger: clean up this test's process group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    resumed = start(taught, "trainer.max_steps=3", "trainer.resume=auto", f"trainer.output_dir={out}")
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    assert "resumed from" in stdout
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and [r["policy_version"] for r in rows] == [1, 2, 3]
    pool = procedural("train")
    for step in (2, 3):
        assert sorted({s["task_id"] for s in samples(out, step)}) == sorted(t["id"] for t in batch_for_step(pool, step, 2, 0))


def test_sigterm_of_the_driver_unwinds_the_run_and_ends_what_it_started(tmp_path):
    """What a scheduler's preemption does: SIGTERM to the driver alone. Ray's own handler would abort it (no cleanup,
    a checkpoint being written lost); it unwinds instead: exit 143, a last line that says how to go on, no
    half-written checkpoint, and every process it started gone."""
    out = tmp_path / "run"
    proc = start("model=tiny", "trainer.max_steps=50", f"trainer.output_dir={out}")
    try:
        wait_for(out / "metrics.jsonl", proc)
        started = process_tree(proc.pid)[1:]
        assert of_run(proc.pid, "critic_service serve") and of_run(proc.pid, "ray::")
        os.kill(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 143, stderr[-3000:]
        assert "stopped by SIGTERM" in stderr.splitlines()[-1]
        assert not list((out / "checkpoints").glob("*.tmp")) and list((out / "checkpoints").glob("step-*"))
        deadline = time.monotonic() + 15
        while left := [p for p in started if os.path.exists(f"/proc/{p}")
                       and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]:
            assert time.monotonic() < deadline, f"{len(left)} processes the driver started outlived it"
            time.sleep(0.5)
    finally:
        try:  # this test's own process group, whatever happened above
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
