"""The GRPO learner on DeepSpeed (CPU, gloo) as Ray actors: learning, ZeRO-2 across ranks, checkpoints, weight push."""
import os
import pathlib
import time

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from actors.config import RolloutConfig
from actors.engine import HFEngine
from actors.worker import rollout_worker
from learner.config import LearnerConfig
from learner.learner import Learner
from learner.weight_sync import PushInterrupted

RolloutWorker = rollout_worker("hf")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def batch(seed=0, n=8, length=24, prompt=8):
    """Two task groups of random sequences with rewards; rollout log-probs come from the learner itself."""
    g = torch.Generator().manual_seed(seed)
    rewards = [1.0, 0.0, 0.6, 0.3, 0.9, 0.1, 0.4, 0.4]
    return [{"task_id": "a" if i < n // 2 else "b", "token_ids": torch.randint(3, 500, (length,), generator=g).tolist(),
             "loss_mask": [0] * prompt + [1] * (length - prompt), "reward": rewards[i % 8], "unscorable": i == 7}
            for i in range(n)]


def with_old_logprobs(learner, rows, prompt=8):
    for r in rows:
        lp = learner.logprobs(r["token_ids"])  # position t -> token t+1
        r["logprobs"] = [0.0] * prompt + lp[prompt - 1:]
    return rows


def make(ranks=1, **kw):
    cfg = LearnerConfig(**{"ranks": ranks, "lr": 1e-3, "kl_coef": 0.0, "micro_batch_size": 2, **kw})
    return Learner("tiny", cfg, temperature=1.0, trajectories_per_step=8)


def test_steps_lower_the_loss_and_raise_positive_advantage_logprobs():
    learner = make(kl_coef=0.01)
    rows = with_old_logprobs(learner, batch())
    best = rows[0]  # reward 1.0: the highest advantage of its group
    before = sum(learner.logprobs(best["token_ids"])[7:])
    losses = [learner.step(rows)["loss"] for _ in range(4)]
    after = sum(learner.logprobs(best["token_ids"])[7:])
    assert losses[-1] < losses[0] and after > before
    assert learner.version == 4


def test_turn_credit_pays_a_rescued_first_page_less_than_trajectory_credit():
    """Trajectories as the rollout makes them (Attempt objects): one whose poor first page a revision rescued
    (first_reward 0, reward 1). Under learner.credit=turn its first reply's tokens gain less log-prob than under
    trajectory credit, and its revision's tokens the same."""
    from actors.rollout import Attempt, Trajectory
    rows = batch(seed=5)
    gain = {}
    for credit in ("trajectory", "turn"):
        learner = make(credit=credit)
        trajs = []
        for i, r in enumerate(with_old_logprobs(learner, [dict(r) for r in rows])):
            t = Trajectory(r["task_id"], i, "p", token_ids=r["token_ids"], loss_mask=r["loss_mask"],
                           logprobs=r["logprobs"], reward=r["reward"], unscorable=r["unscorable"],
                           first_reward=0.0 if i == 0 else r["reward"], first_end=16)
            t.attempts = [Attempt(0, "", None if t.unscorable else 50.0, True, None, True)]
            trajs.append(t)
        rescued = trajs[0].token_ids  # reward 1.0, the best of its group; its first page alone earned nothing
        before = learner.logprobs(rescued)
        learner.step(trajs)
        after = learner.logprobs(rescued)
        gain[credit] = (sum(after[7:15]) - sum(before[7:15]), sum(after[15:]) - sum(before[15:]))  # first, revision
    assert gain["turn"][0] < gain["trajectory"][0]
    assert gain["turn"][1] == pytest.approx(gain["trajectory"][1], rel=0.5)


@pytest.mark.parametrize("stage,memory", [(2, {}), (3, {}),
                                          (3, {"gradient_checkpointing": True, "ref_offload": True, "bucket_mb": 0.1})])
def test_two_ranks_zero_match_one_rank(stage, memory):
    """ZeRO-2/3 on two ranks = one rank. With ZeRO-3's memory keys too: the policy partitioned as it loads, the KL
    reference a ZeRO-3 engine on CPU, activations recomputed in backward, the weights gathered 0.1 MiB at a time."""
    rows = batch(seed=1)
    kl = {"kl_coef": 0.01} if memory else {}
    one, two = make(ranks=1, zero_stage=2, **kl), make(ranks=2, zero_stage=stage, **kl, **memory)
    with_old_logprobs(one, rows)
    m1, m2 = one.step(rows), two.step(rows)
    if memory:  # a second step, so the policy has left the reference and the KL term is not 0
        m1, m2 = one.step(rows), two.step(rows)
        assert m1["kl"] > 0
    a, b = one.state_dict(), two.state_dict()
    assert a.keys() == b.keys()
    # Adam's first step moves each weight by ~lr (1e-3) whatever its gradient's size, so a weight whose gradient is
    # near zero magnifies the all-reduce's rounding: measured 1.5e-5 on 1 weight of 427k on an AVX2 CPU (< 1e-6 on
    # the rest). A rank that missed the other's rows is off by 2e-3 on a third of the weights.
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 5e-5
    assert m1["loss"] == pytest.approx(m2["loss"], abs=1e-5) and m1["train_tokens"] == m2["train_tokens"]
    assert m1["kl"] == pytest.approx(m2["kl"], rel=1e-3, abs=1e-9)


@pytest.mark.slow
def test_mini_batches_are_one_optimiser_step_each_and_epochs_reuse_the_batch():
    """learner.mini_batches=2 on two groups of 4 = the same learner stepped on each group in turn (the advantages
    are per group, each mini-batch is its own token mean); learner.epochs=2 makes a second pass, off-policy, which
    the ratio clip sees."""
    rows = batch(seed=2)
    split_run, by_hand = make(mini_batches=2), make()
    with_old_logprobs(split_run, rows)
    m = split_run.step(rows)
    by_hand.step(rows[:4])
    by_hand.step(rows[4:])
    a, b = split_run.state_dict(), by_hand.state_dict()
    assert m["optimizer_steps"] == 2 and split_run.version == 1
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    twice = make(epochs=2, lr=5e-3)
    m2 = twice.step(rows)
    assert m2["optimizer_steps"] == 2 and m2["clip_fraction"] > 0  # the second pass moved past the clip somewhere


def test_checkpoint_resume_is_bit_identical_and_loads_in_transformers(tmp_path):
    rows = batch(seed=2)
    learner = make(zero_stage=2)
    with_old_logprobs(learner, rows)
    learner.step(rows)
    path = learner.save(str(tmp_path / "step-000001"))
    learner.step(rows)
    expected = learner.state_dict()
    resumed = make(zero_stage=2)
    resumed.load(path)
    resumed.step(rows)
    got = resumed.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    hf = AutoModelForCausalLM.from_pretrained(os.path.join(path, "hf"))
    assert sum(p.numel() for p in hf.parameters()) > 0
    assert not os.path.exists(path + ".tmp")
    # the weights are stored once (in hf/): DeepSpeed's files hold the two Adam moments and no copy of the weights
    size = lambda d: sum(f.stat().st_size for f in pathlib.Path(path, d).rglob("*") if f.is_file())  # noqa: E731
    weights = os.path.getsize(os.path.join(path, "hf", "model.safetensors"))
    assert size("deepspeed") < 2.2 * weights, (size("deepspeed"), weights)


@pytest.mark.parametrize("transport", ["object_store", "broadcast"])
def test_weight_push_makes_engines_match_the_learner(transport):
    # small buckets: the tiny model travels in several; a short timeout bounds a broadcast cut by the kill below
    learner = make(weight_sync=transport, bucket_mb=0.5, push_timeout_s=20)
    rows = with_old_logprobs(learner, batch(seed=3))
    learner.step(rows)
    workers = [RolloutWorker.remote("tiny", RolloutConfig(), [], "http://127.0.0.1:9") for _ in range(2)]
    seq = rows[0]["token_ids"]
    assert ray.get(workers[0].logprobs.remote(seq)) != pytest.approx(learner.logprobs(seq), abs=1e-4)  # stale
    for version in (1, 2):
        assert learner.push_weights(workers) == version and learner.last_transport == transport
        for w in workers:
            assert ray.get(w.weight_info.remote())["version"] == version
            assert ray.get(w.logprobs.remote(seq)) == pytest.approx(learner.logprobs(seq), abs=1e-4)
        learner.step(with_old_logprobs(learner, batch(seed=4)))
    if transport == "broadcast":
        assert len(learner.pusher._buckets()) > 1
        group = learner.pusher._group
        ray.kill(workers[1], no_restart=False)  # Ray restarts it with the base weights and no weight group
        for _ in range(10):  # as launch/trainer.py's push: a push that meets the dying worker fails fast; retry
            try:
                learner.push_weights(workers)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, PushInterrupted, TimeoutError):
                time.sleep(1)
        assert learner.pusher._group != group  # membership changed: a new group was formed
        assert ray.get(workers[1].logprobs.remote(seq)) == pytest.approx(learner.logprobs(seq), abs=1e-4)


def test_broadcast_push_gathers_zero3_partitions_from_two_ranks():
    learner = make(ranks=2, zero_stage=3, weight_sync="broadcast", bucket_mb=0.5)
    rows = with_old_logprobs(learner, batch(seed=5))
    learner.step(rows)
    worker = RolloutWorker.remote("tiny", RolloutConfig(), [], "http://127.0.0.1:9")
    learner.push_weights([worker])
    seq = rows[1]["token_ids"]
    assert ray.get(worker.logprobs.remote(seq)) == pytest.approx(learner.logprobs(seq), abs=1e-4)


@ray.remote(max_restarts=1)
class DyingEngine(HFEngine):
    """An HF engine whose process dies as the first broadcast reaches it, with the other members mid-collective."""

    def __init__(self, flag: str):
        super().__init__("tiny")
        self.flag = flag

    def receive(self, *args):
        if os.path.exists(self.flag):
            os.remove(self.flag)
            os._exit(1)
        return super().receive(*args)


@pytest.mark.slow
def test_broadcast_cut_by_a_dying_engine_fails_fast_then_a_new_group_delivers(tmp_path):
    learner = make(weight_sync="broadcast", bucket_mb=0.5, push_timeout_s=20)
    rows = with_old_logprobs(learner, batch(seed=6))
    learner.step(rows)
    flag = tmp_path / "die"
    flag.touch()
    engines = [RolloutWorker.remote("tiny", RolloutConfig(), [], None), DyingEngine.remote(str(flag))]
    t = time.perf_counter()
    with pytest.raises((PushInterrupted, ray.exceptions.RayActorError)):
        learner.push_weights(engines)
    assert time.perf_counter() - t < 15 and learner.pusher._group is None  # not the 20 s timeout; the group is dropped
    for _ in range(10):  # launch/trainer.py's push retries the same way while Ray restarts the engine
        try:
            learner.push_weights(engines)
            break
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, PushInterrupted, TimeoutError):
            time.sleep(1)
    seq = rows[0]["token_ids"]
    for e in engines:
        assert ray.get(e.logprobs.remote(seq)) == pytest.approx(learner.logprobs(seq), abs=1e-4)


@ray.remote
class StalledEngine:
    """A WeightReceiver that never answers."""

    def load(self, state_dict, version):
        time.sleep(60)

    def weight_info(self):
        return {"device": "cpu", "gpu_uuid": None, "group_id": None, "version": 0}

    def join(self, *args):
        time.sleep(60)


@pytest.mark.parametrize("transport", ["object_store", "broadcast"])
def test_stalled_push_times_out_with_a_clear_error(transport):
    learner = make(weight_sync=transport)
    t = time.perf_counter()
    with pytest.raises(TimeoutError, match="reached 0 of 1 engines within learner.push_timeout_s=1"):
        learner.push_weights([StalledEngine.remote()], timeout_s=1)
    assert time.perf_counter() - t < 10


def test_a_group_that_cannot_form_fails_in_time_naming_its_address():
    t = time.perf_counter()
    with pytest.raises(TimeoutError, match=r"did not form at [0-9.]+:[0-9]+ .*rendezvous_timeout_s=0.2 s"):
        make(ranks=2, rendezvous_timeout_s=0.2)  # importing DeepSpeed alone takes longer than that
    assert time.perf_counter() - t < 30


def test_output_dir_not_seen_by_learner_rank_0_is_a_clear_error(tmp_path):
    from launch.run_io import RunFiles

    @ray.remote
    class ElsewhereRank:  # a rank on a host that does not mount the driver's folder
        def sees(self, path):
            return False

    elsewhere = type("L", (), {"ranks": [ElsewhereRank.remote()], "hosts": ["198.18.0.2"]})()
    with pytest.raises(RuntimeError, match="not visible from learner rank 0 on 198.18.0.2"):
        RunFiles(str(tmp_path)).check_shared(elsewhere)
    assert not list(tmp_path.glob(".shared-*"))  # the marker is removed
    learner = make()
    RunFiles(str(tmp_path)).check_shared(learner)  # the same machine: seen
