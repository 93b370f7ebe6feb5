"""GPU checks (marker `gpu`, skipped without CUDA; CI has no GPU): the DeepSpeed learner on CUDA (NCCL, bf16,
ZeRO-2/3), and the colocated layout of launch/placement.py: a learner rank and a rollout engine in one placement
group bundle, sharing its GPU, new weights pushed by CUDA IPC.
Run: pytest -m gpu tests/test_gpu.py, or with the GPU benches: bash scripts/gpu-check.sh"""
import pytest
import ray
import torch

from actors.config import RolloutConfig
from actors.worker import rollout_worker

RolloutWorker = rollout_worker("hf")
from launch import placement
from launch.config import ClusterConfig
from learner.config import LearnerConfig
from learner.learner import Learner

from .test_learner import batch, with_old_logprobs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=8, num_gpus=torch.cuda.device_count(), include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def cuda_cfg(**kw):
    return LearnerConfig(**{"lr": 1e-3, "kl_coef": 0.0, "micro_batch_size": 2, "device": "cuda", **kw})


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_learner_trains_in_bf16_on_cuda(stage):
    learner = Learner("tiny", cuda_cfg(zero_stage=stage, kl_coef=0.01), 1.0, 8)
    info = ray.get(learner.ranks[0].weight_info.remote())
    assert info["device"] == "cuda" and info["gpu_uuid"]
    assert {m.dtype for m in ray.get(learner.ranks[0].weight_metas.remote())} == {"bfloat16"}
    rows = with_old_logprobs(learner, batch())
    best = rows[0]  # the highest advantage of its group
    before = sum(learner.logprobs(best["token_ids"])[7:])
    losses = [learner.step(rows)["loss"] for _ in range(4)]
    assert losses[-1] < losses[0] and sum(learner.logprobs(best["token_ids"])[7:]) > before


def colocated(cluster: ClusterConfig, **learner_kw):
    layout = placement.reserve(placement.plan(cluster, 1, 1, 0, cluster_gpus=1), timeout_s=60)
    learner = Learner("tiny", cuda_cfg(**learner_kw), 1.0, 8, 1, layout.learner_gpus,
                      [placement.options(layout, b) for b in layout.learner])
    worker = RolloutWorker.options(num_cpus=1, num_gpus=layout.rollout_gpus,
                                   **placement.options(layout, layout.rollout[0])).remote("tiny", RolloutConfig(), [], None)
    return layout, learner, worker


@pytest.mark.parametrize("stage", [2, 3])
def test_colocated_engine_takes_weights_by_cuda_ipc(stage):
    layout, learner, worker = colocated(ClusterConfig(colocate=True, placement="strict_pack"),
                                        zero_stage=stage, bucket_mb=0.5)
    try:
        mine, theirs = ray.get([learner.ranks[0].weight_info.remote(), worker.weight_info.remote()])
        assert theirs["device"] == "cuda" and theirs["gpu_uuid"] == mine["gpu_uuid"]  # one GPU, two processes
        rows = with_old_logprobs(learner, batch(seed=2))
        seq = rows[0]["token_ids"]
        for version in (1, 2):
            learner.step(rows)
            stale = ray.get(worker.logprobs.remote(seq))
            assert learner.push_weights([worker]) == version and learner.last_transport == "cuda_ipc"
            fresh, want = ray.get(worker.logprobs.remote(seq)), learner.logprobs(seq)
            assert fresh != pytest.approx(stale, abs=1e-2)
            assert fresh == pytest.approx(want, abs=2e-2)  # bf16 on both sides
    finally:
        placement.release(layout)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="an NCCL broadcast needs the engine on another GPU")
def test_nccl_broadcast_to_an_engine_on_another_gpu():
    learner = Learner("tiny", cuda_cfg(bucket_mb=0.5), 1.0, 8)
    worker = RolloutWorker.options(num_cpus=1, num_gpus=1).remote("tiny", RolloutConfig(), [], None)
    rows = with_old_logprobs(learner, batch(seed=3))
    learner.step(rows)
    learner.push_weights([worker])
    assert learner.last_transport == "broadcast"
    seq = rows[0]["token_ids"]
    assert ray.get(worker.logprobs.remote(seq)) == pytest.approx(learner.logprobs(seq), abs=2e-2)
