"""`python launch/cluster.py` end to end with the tiny model: outputs, policy versions, resume, config errors."""
import json
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from .conftest import ROOT, WEBGEN

FAST = ["model=tiny", "cluster.address=local", "rollout.group_size=2", "rollout.max_new_tokens=32",
        "trainer.wandb=disabled", "trainer.progress=false"]


def cluster(*args, timeout=400):
    return subprocess.run([sys.executable, "launch/cluster.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_two_steps_then_resume_runs_only_step_three(tmp_path):
    out = tmp_path / "run"
    first = cluster(*FAST, "trainer.max_steps=2", f"trainer.output_dir={out}")
    assert first.returncode == 0, first.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and [r["policy_version"] for r in rows] == [1, 2]
    assert "placement PACK (3 bundles)" in first.stdout  # learner rank, rollout worker, render worker
    assert rows[0]["weight_sync"] == "object_store"  # auto, on CPU
    for key in ("reward_mean", "valid_render_rate", "unscorable_rate", "kl", "loss", "rollout_s", "learn_s",
                "push_s", "renders_per_s", "tokens_per_s", "overlap_ratio"):
        assert key in rows[0]
    samples = [json.loads(line) for line in open(out / "samples" / "step-000001.jsonl")]
    assert len(samples) == 2 * 2 and all(s["total_tokens"] == len(s["token_ids"]) for s in samples)
    for r in rows:  # on-policy: every sample of step s comes from policy version s - 1; the engines' batching is counted
        got = [json.loads(line)["policy_version"] for line in open(out / "samples" / f"step-{r['step']:06d}.jsonl")]
        assert got == [r["step"] - 1] * 4 and r["staleness_max"] == 0 and r["max_staleness"] == 0
        assert r["engine_calls"] >= 1 and 1 <= r["engine_batch_mean"] <= r["engine_batch_max"] <= 16
        assert r["engine_ready_mean"] >= r["engine_batch_mean"] * 0.75
        # the on-policy check: the learner scores exactly what the engine sampled (rounding alone), and says so
        assert r["logprob_diff_mean"] <= 1e-3 and abs(r["ratio_mean"] - 1) <= 1e-3 and r["context_full"] == 0, r
    assert "WARNING step" not in first.stdout
    ckpt = out / "checkpoints" / "step-000002"
    AutoModelForCausalLM.from_pretrained(ckpt / "hf")
    AutoTokenizer.from_pretrained(ckpt / "hf")
    assert (out / "config.yaml").is_file()

    second = cluster(*FAST, "trainer.max_steps=3", "trainer.resume=auto", f"trainer.output_dir={out}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "step 2" in second.stdout
    assert "other settings" not in second.stdout  # max_steps may change freely: the same run goes on
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["policy_version"] == 3


def test_a_changed_setting_is_a_new_run_and_the_same_settings_continue(tmp_path):
    """trainer.resume=auto (launch/run_io.run_folder): a folder trained with other settings is left alone and the run
    goes to <folder>-2 (the next free one, or the one already trained with these settings); a key that may change
    freely (trainer.max_steps) continues in place."""
    from launch.run_io import run_folder

    def trained(folder, **settings):
        ckpt = folder / "checkpoints" / "step-000002"
        ckpt.mkdir(parents=True)
        (ckpt / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in settings.items()))

    run = tmp_path / "run"
    assert run_folder(str(run), {"learner": 1}) == (run, [])  # nothing there yet
    trained(run, learner={"lr": 1e-6}, trainer={"max_steps": 2})
    assert run_folder(str(run), {"learner.lr": 1e-6, "trainer.max_steps": 3}) == (run, [])
    folder, changed = run_folder(str(run), {"learner.lr": 2e-6, "trainer.max_steps": 2})
    assert folder == tmp_path / "run-2" and changed == ["learner.lr: 1e-06 -> 2e-06"]
    trained(tmp_path / "run-2", learner={"lr": 2e-6}, trainer={"max_steps": 2})  # that run, interrupted or done
    assert run_folder(str(run), {"learner.lr": 2e-6, "trainer.max_steps": 2})[0] == tmp_path / "run-2"
    assert run_folder(str(run), {"learner.lr": 3e-6, "trainer.max_steps": 2})[0] == tmp_path / "run-3"


def test_config_errors_fail_fast_naming_the_key(tmp_path):
    out = f"trainer.output_dir={tmp_path}"  # hydra makes its run folder before the config is checked
    unknown = cluster("trainer.nope=1", out, timeout=60)
    assert unknown.returncode != 0 and "nope" in unknown.stderr
    bad = cluster("learner.zero_stage=5", out, timeout=60)
    assert bad.returncode == 2 and "learner.zero_stage=5" in bad.stderr and "1, 2 or 3" in bad.stderr
    colocated = cluster("cluster.colocate=true", "rollout.workers=2", out, timeout=60)
    assert colocated.returncode == 2 and "learner.ranks=1 and rollout.workers=2 must be equal" in colocated.stderr
    bad_group = cluster("critic=gpt4", out, timeout=60)
    assert bad_group.returncode != 0 and "critic" in bad_group.stderr
    layout = cluster("cluster.placement=diagonal", out, timeout=60)
    assert layout.returncode == 2 and "cluster.placement='diagonal'" in layout.stderr
    cold = cluster("trainer.eval_temperature=-0.5", out, timeout=60)
    assert cold.returncode == 2 and "trainer.eval_temperature=-0.5" in cold.stderr and "-1" in cold.stderr


@pytest.mark.slow
def test_a_sweep_trains_each_job_in_its_own_folder(tmp_path):
    """hydra multirun: job 1 must not resume from job 0's checkpoint, and each keeps its own config."""
    res = cluster("-m", *FAST, "trainer.max_steps=1", "learner.lr=1e-5,2e-5", f"hydra.sweep.dir={tmp_path}",
                  timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" not in res.stdout
    for job, lr in ((0, "1.0e-05"), (1, "2.0e-05")):
        rows = [json.loads(line) for line in open(tmp_path / str(job) / "metrics.jsonl")]
        assert [r["step"] for r in rows] == [1] and rows[0]["policy_version"] == 1
        assert f"lr: {lr}" in (tmp_path / str(job) / "config.yaml").read_text()
        assert (tmp_path / str(job) / "checkpoints" / "step-000001" / "hf").is_dir()


def test_placement_plan_bundles():
    from launch.config import ClusterConfig
    from launch.placement import plan
    cpu = plan(ClusterConfig(), learner_ranks=1, rollout_workers=2, render_workers=2, cluster_gpus=0)
    assert cpu.bundles == [{"CPU": 1.0}] * 3 + [{"CPU": 1}] * 2 and (cpu.learner, cpu.rollout, cpu.render) == ([0], [1, 2], [3, 4])
    gpu = plan(ClusterConfig(learner_cpus=4), learner_ranks=2, rollout_workers=2, render_workers=1, cluster_gpus=8)
    assert gpu.bundles[:4] == [{"CPU": 4.0, "GPU": 1.0}] * 2 + [{"CPU": 1.0, "GPU": 1.0}] * 2
    shared = plan(ClusterConfig(colocate=True, placement="strict_pack"), 1, 1, 1, cluster_gpus=1)
    assert shared.bundles == [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 1}] and shared.learner == shared.rollout == [0]
    assert shared.learner_gpus == shared.rollout_gpus == 0.5 and shared.strategy == "STRICT_PACK"


def test_derived_config_values():
    """The documented 'auto' values, made in one place each (launch/config.py): the engine's share of the cores, the
    learner's loss and seed, the held-out temperature."""
    import dataclasses

    from actors.config import RolloutConfig
    from launch.config import TrainConfig
    sync = TrainConfig()
    run_async = dataclasses.replace(sync, trainer=dataclasses.replace(sync.trainer, max_staleness=1))
    assert sync.resolved_rollout().engine_cores == 1.0 and run_async.resolved_rollout().engine_cores == 0.5
    pinned = dataclasses.replace(run_async, rollout=dataclasses.replace(sync.rollout, engine_cores=0.25))
    assert pinned.resolved_rollout().engine_cores == 0.25
    assert (sync.resolved_learner().loss, run_async.resolved_learner().loss) == ("ppo", "decoupled")
    assert sync.resolved_learner().seed == sync.trainer.seed
    assert sync.resolved_eval_temperature() == sync.rollout.temperature
    with pytest.raises(ValueError, match="rollout.engine_cores=1.5"):
        RolloutConfig(engine_cores=1.5).validate()


def test_unreachable_critic_url_fails_before_training(tmp_path):
    res = cluster(*FAST, "critic.url=http://127.0.0.1:9", f"trainer.output_dir={tmp_path}", timeout=120)
    assert res.returncode != 0 and "critic.url='http://127.0.0.1:9' does not answer" in (res.stderr + res.stdout)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "config.yaml").exists()  # before any work


@pytest.mark.slow
def test_asynchronous_training_bounds_staleness_and_resumes(tmp_path):
    """trainer.max_staleness=1: rollouts run ahead of the learner, no sample trained at step s is more than one
    version older than the policy being updated (s - 1), and a resumed run continues."""
    out = tmp_path / "run"
    first = cluster(*FAST, "trainer.max_steps=3", "trainer.max_staleness=1", f"trainer.output_dir={out}")
    assert first.returncode == 0, first.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3] and [r["policy_version"] for r in rows] == [1, 2, 3]
    for r in rows:
        versions = [json.loads(line)["policy_version"] for line in open(out / "samples" / f"step-{r['step']:06d}.jsonl")]
        assert versions and all(r["step"] - 1 - v <= 1 for v in versions), (r["step"], versions)
        assert r["staleness_max"] <= 1 and r["max_staleness"] == 1
        assert len(versions) + r["dropped_stale"] == 4
    assert "learner.loss" not in first.stderr
    bad = cluster("trainer.max_staleness=1", "learner.loss=ppo", f"trainer.output_dir={tmp_path / 'x'}", timeout=60)
    assert bad.returncode == 2 and "learner.loss='ppo'" in bad.stderr
    again = cluster(*FAST, "trainer.max_steps=4", "trainer.max_staleness=1", "trainer.resume=auto",
                    f"trainer.output_dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and "step 3" in again.stdout
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["policy_version"] == 4


@pytest.mark.slow
def test_ablation_trains_each_arm_and_writes_its_table(tmp_path, taught_model):
    """+experiment=ablation end to end at toy size (the taught tiny model, one step per arm): every arm trains from
    the same seed until the token budget, prints its learning-check line, is evaluated round by round, and the table,
    JSON and plot are written."""
    out = tmp_path / "ablation"
    run = cluster(f"model.name={taught_model}", "+experiment=ablation", "cluster.address=local", "trainer.max_steps=2",
                  "trainer.token_budget=1", "trainer.eval_every=1", "data.heldout_tasks=1", "data.limit=1",
                  "rollout.group_size=2", "rollout.max_new_tokens=80", "rollout.max_resamples=1",
                  "trainer.eval_temperature=0", "trainer.wandb=disabled", f"trainer.output_dir={out}",
                  f"trainer.ablation_webgen={WEBGEN}", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    checks = [line for line in lines if "baseline_checks" in line]
    assert [line["max_turns"] for line in checks] == [1, 2, 2]  # web_rl, relook, relook_no_fo
    assert {line["eval_temperature"] for line in checks} == {0}
    for line in checks:
        for key in ("baseline_reward", "final_reward", "minutes", "accepted_revisions_per_trajectory",
                    "final_checks", "baseline_valid_rate", "final_valid_rate", "task_checks_gain", "reward_formula"):
            assert key in line, key
        assert {"terms", "elements", "layout"} <= set(line["baseline_checks"])  # the taught page renders: checks exist
    arms = [line["arm"] for line in lines if "arm" in line]
    assert arms == ["base", "web_rl", "relook", "relook_no_fo"]
    for name in ("heldout-baseline", "heldout-000001", "heldout-final"):  # the evaluated pages, kept for reading
        held = [json.loads(line) for line in open(out / "relook" / "samples" / f"{name}.jsonl")]
        assert len(held) == 2 and all(len(t["attempts"]) == 1 for t in held)  # 1 task x 2 samples, one-shot
    result = json.loads((out / "ablation.json").read_text())
    for name in arms[1:]:  # the budget (1 token) ends each trained arm after its first step
        a = result["arms"][name]
        assert a["steps"] == 1 and a["generated_tokens"] > 0 and a["heldout_curve"][0][0] == 0
        assert len(a["webgen_per_round"]) == 4 and len(a["heldout_per_round"]) == 4
        assert 0 <= a["heldout_changed"] <= 1 and 0 <= a["heldout_independent_self_edit"] <= 100
    assert "| relook_no_fo |" in (out / "ablation.md").read_text() and (out / "ablation.png").stat().st_size > 1000
