"""Stream task groups through rollout workers: least-loaded first, results in completion order, no batch barrier.

A worker that dies is restarted by Ray (max_restarts=-1); the groups it was running are submitted again, and each
task's group is delivered exactly once.
"""
from __future__ import annotations

from typing import Iterator

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError


def stream_groups(workers: list, tasks: list[dict], max_in_flight: int = 2, max_retries: int = 3,
                  stats: dict | None = None) -> Iterator[tuple[dict, list]]:
    """Yield (task, trajectories) for every task, as each group finishes. `stats` (if given) counts
    "resubmitted" groups and tracks "in_flight" for dashboards."""
    stats = stats if stats is not None else {}
    stats.setdefault("resubmitted", 0)
    pending = list(reversed(tasks))
    load = {i: 0 for i in range(len(workers))}
    running: dict[ray.ObjectRef, tuple[int, dict, int]] = {}  # ref -> (worker index, task, attempt)

    def submit(task: dict, attempt: int) -> None:
        w = min(load, key=load.get)
        load[w] += 1
        running[workers[w].rollout.remote(task)] = (w, task, attempt)

    while pending or running:
        while pending and min(load.values()) < max_in_flight:
            submit(pending.pop(), 0)
        (ref,), _ = ray.wait(list(running), num_returns=1)
        w, task, attempt = running.pop(ref)
        load[w] -= 1
        try:
            group = ray.get(ref)
        except (RayActorError, ActorDiedError, ActorUnavailableError):
            if attempt >= max_retries:
                raise
            stats["resubmitted"] += 1
            submit(task, attempt + 1)  # the worker died mid-group: run the whole group again
            continue
        stats["in_flight"] = len(running)
        yield task, group
