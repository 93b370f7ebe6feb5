"""`python launch/cluster.py --plan`: placement and memory per GPU for a model and cluster, without GPUs or weights;
a plan that cannot fit is refused naming the key to change."""
import subprocess
import sys

import pytest

from .conftest import ROOT


def compose(*overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from launch.config import TrainConfig
    ConfigStore.instance().store(name="base_config", node=TrainConfig)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(hydra_compose("config", overrides=list(overrides)))
    return cfg.validate(planning=True)


def test_the_7b_recipe_on_two_nodes_of_eight_gpus_prints_a_placement_and_a_memory_table():
    res = subprocess.run([sys.executable, "launch/cluster.py", "+experiment=gpu", "--plan"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "Qwen/Qwen2.5-Coder-7B-Instruct (7.6" in out and "2 node(s) x 8 GPU(s)" in out and "plan fits" in out
    for i in range(8):  # every learner rank and engine has a GPU of its own
        assert out.count(f": learner rank {i};") + out.count(f": learner rank {i}\n") == 1
        assert out.count(f": engine {i};") + out.count(f": engine {i}\n") == 1
    assert "learner rank (ZeRO-3, 8 ranks)" in out and "KV cache" in out and "contexts of engine.max_model_len=16384" in out


def test_the_recipe_is_a_real_7b_run():
    """What issue 31 found the documented GPU recipe lacked: G >= 8, page-sized budgets, >= 3 turns with Forced
    Optimization resamples, ZeRO-3, vLLM."""
    cfg = compose("+experiment=gpu")
    r = cfg.rollout
    assert r.group_size >= 8 and r.max_new_tokens >= 4096 and r.max_turns >= 3 and r.max_resamples >= 2
    assert r.forced_optimization and cfg.learner.zero_stage == 3 and cfg.engine.kind == "vllm"
    assert cfg.data.tasks_per_step * r.group_size >= 16 * r.workers  # enough trajectories to fill the engines
    assert cfg.engine.max_model_len >= r.max_turns * r.max_new_tokens


@pytest.mark.parametrize("overrides,key", [
    (["learner.zero_stage=1"], "learner.zero_stage=3"),
    (["learner.zero_stage=2", "learner.ranks=2"], "learner.ranks"),
    (["learner.gradient_checkpointing=false"], "learner.gradient_checkpointing=true"),
    (["engine.max_model_len=2000000"], "engine.max_model_len"),
    (["engine.gpu_memory_utilization=0.15"], "engine.gpu_memory_utilization"),
    (["learner.ranks=12"], "learner.ranks"),
    (["cluster.colocate=true", "engine.gpu_memory_utilization=0.9"], "engine.gpu_memory_utilization"),
    (["cluster.gpu_memory_gib=24"], "engine.max_model_len"),
])
def test_a_plan_that_cannot_fit_is_refused_naming_the_key(overrides, key):
    from launch.plan import PlanError, report
    with pytest.raises(PlanError) as e:
        report(compose("+experiment=gpu", *overrides))
    assert key in str(e.value) and e.value.lines and e.value.lines[0].startswith("plan: ")


def test_the_parameter_count_from_a_config_is_the_model_s():
    """Shape.params (what --plan sizes memory from) against the real models: SmolLM2 (tied, Llama) and tiny (Qwen2)."""
    import json
    import os

    from common.models import load_model, resolve
    from launch.plan import Shape
    for name in ("tiny", "smollm2-135m"):
        shape = Shape.of(json.load(open(os.path.join(resolve(name), "config.json"))))
        real = sum(p.numel() for p in load_model(name).parameters())
        assert shape.params == pytest.approx(real, rel=0.01), name
