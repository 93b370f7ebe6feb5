"""Rollout workers on a local Ray: the full loop through the render farm and the critic service, streaming, faults."""
import time

import httpx
import pytest
import ray

from actors.config import RolloutConfig
from actors.engine import HFEngine
from actors.worker import rollout_worker, stream_groups
from critic_service.config import CriticConfig
from critic_service.process import endpoint
from render_farm.config import RenderConfig
from render_farm.farm import RenderFarm

from .conftest import TASK


@pytest.fixture(scope="module")
def cluster(taught_model, tmp_path_factory):
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    log = str(tmp_path_factory.mktemp("critic") / "critic.log")
    with endpoint(CriticConfig(port=0), log) as url:
        cfg = RolloutConfig(group_size=2, max_turns=2, max_resamples=2, temperature=0.0, max_new_tokens=80)
        farm = RenderFarm(RenderConfig(workers=1))
        workers = [rollout_worker("hf").remote("tiny", cfg, farm.workers, url, seed=i) for i in range(2)]
        taught = HFEngine(taught_model)
        weights = ray.put({k: v.clone() for k, v in taught.model.state_dict().items()})
        assert ray.get([w.load.remote(weights, 1) for w in workers]) == [1, 1]  # the learner's object-store push
        yield workers, url, weights
    ray.shutdown()


def test_full_loop_through_render_farm_and_critic_service(cluster):
    workers, url, _ = cluster
    ((task, group),) = list(stream_groups(workers[:1], [TASK]))
    assert task["id"] == "bakery" and [t.group_id for t in group] == [0, 1]
    for t in group:
        assert t.final_valid and t.final_score is not None and 0 < t.reward <= 1.1, t.attempts
        assert t.policy_version == 1 and t.attempts[0].accepted
        assert t.timings_s["render"] > 0 and t.timings_s["critic"] > 0
    metrics = httpx.get(url + "/metrics").text
    hits = [float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("critic_cache_hits_total")]
    assert hits and hits[0] >= 1  # the group's identical greedy pages: one critique, then cache


def test_results_stream_in_completion_order(cluster):
    workers, _, _ = cluster
    tasks = [{**TASK, "id": f"t{i}"} for i in range(6)]
    seen = []
    for task, group in stream_groups(workers, tasks, max_in_flight=2):
        seen.append((task["id"], max(t.finished_at for t in group)))
    assert sorted(i for i, _ in seen) == sorted(t["id"] for t in tasks)
    finish = [f for _, f in seen]
    assert all(b >= a - 0.25 for a, b in zip(finish, finish[1:]))  # delivered as they finished, not as submitted


def test_killed_worker_loses_nothing_and_duplicates_nothing(cluster):
    workers, _, weights = cluster
    tasks = [{**TASK, "id": f"k{i}"} for i in range(6)]
    stats = {}
    stream = stream_groups(workers, tasks, max_in_flight=2, stats=stats)
    delivered = [next(stream)[0]["id"]]
    ray.kill(workers[0], no_restart=False)  # mid-batch: it holds groups in flight
    delivered += [task["id"] for task, _ in stream]
    assert sorted(delivered) == sorted(t["id"] for t in tasks)  # every group once
    assert stats["resubmitted"] >= 1  # the kill really hit groups in flight
    for _ in range(60):  # restarted by Ray, usable again once its constructor has run
        try:
            ray.get(workers[0].load.remote(weights, 1))
            break
        except ray.exceptions.ActorUnavailableError:
            time.sleep(0.5)
    assert ray.get(workers[0].weight_info.remote())["version"] == 1


def test_a_seeded_rollout_samples_the_same_on_any_worker(cluster):
    """stream_groups' seed fixes every sampled token, whichever worker runs a group and whatever shares its batch:
    one worker or two, the same trajectories (and a resumed step re-samples what the first run sampled)."""
    _, url, _ = cluster
    cfg = RolloutConfig(group_size=2, max_turns=1, temperature=1.0, max_new_tokens=24)
    farm = RenderFarm(RenderConfig(workers=1))
    sampling = [rollout_worker("hf").remote("tiny", cfg, farm.workers, url, seed=10 + i) for i in range(2)]
    tasks = [{**TASK, "id": f"s{i}"} for i in range(4)]

    def tokens(workers, seed, overrides=None, few=tasks):
        return {task["id"]: [t.token_ids for t in group]
                for task, group in stream_groups(workers, few, max_in_flight=2, seed=seed, overrides=overrides)}
    one, two = tokens(sampling[:1], 7), tokens(sampling, 7)
    assert one == two
    other = tokens(sampling, 8)
    assert all(one[i] != other[i] for i in one)  # another seed, other draws
    assert all(len({tuple(x) for x in group}) == 2 for group in one.values())  # a group's samples differ
    # overrides (a held-out evaluation's temperature) hold for those groups only: greedy, then the same draws again
    greedy = tokens(sampling, 7, {"temperature": 0.0}, tasks[:1])["s0"]
    assert greedy[0] == greedy[1] and tokens(sampling, 7, None, tasks[:1])["s0"] == one["s0"]
    for w in sampling + farm.workers:
        ray.kill(w)
