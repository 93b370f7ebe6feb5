"""Stream task groups through rollout workers: least-loaded first, results in completion order, no batch barrier.

A worker that dies is restarted by Ray (max_restarts=-1); the groups it was running are submitted again after a
short backoff (a restarting actor refuses work for a moment), and each task's group is delivered exactly once.
"""
from __future__ import annotations

import time
from typing import Iterator

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError


def stream_groups(workers: list, tasks: list[dict], max_in_flight: int = 2, max_retries: int = 6,
                  stats: dict | None = None) -> Iterator[tuple[dict, list]]:
    """Yield (task, trajectories) for every task, as each group finishes. `stats` (if given) counts
    "resubmitted" groups and tracks "in_flight" for dashboards."""
    stats = stats if stats is not None else {}
    stats.setdefault("resubmitted", 0)
    pending = [(task, 0) for task in reversed(tasks)]
    delayed: list[tuple[float, dict, int]] = []  # (not before, task, attempt): groups of a worker that died
    load = {i: 0 for i in range(len(workers))}
    running: dict[ray.ObjectRef, tuple[int, dict, int]] = {}  # ref -> (worker index, task, attempt)

    while pending or running or delayed:
        now = time.monotonic()
        pending += [(task, attempt) for at, task, attempt in delayed if at <= now]
        delayed = [d for d in delayed if d[0] > now]
        while pending and min(load.values()) < max_in_flight:
            task, attempt = pending.pop()
            w = min(load, key=load.get)
            load[w] += 1
            running[workers[w].rollout.remote(task)] = (w, task, attempt)
        if not running:
            time.sleep(max(0.0, min(at for at, _, _ in delayed) - time.monotonic()))
            continue
        done, _ = ray.wait(list(running), num_returns=1, timeout=0.5 if delayed else None)
        if not done:
            continue
        w, task, attempt = running.pop(done[0])
        load[w] -= 1
        try:
            group = ray.get(done[0])
        except (RayActorError, ActorDiedError, ActorUnavailableError):
            if attempt >= max_retries:
                raise
            stats["resubmitted"] += 1
            delayed.append((time.monotonic() + min(0.5 * 2 ** attempt, 8.0), task, attempt + 1))
            continue
        stats["in_flight"] = len(running)
        yield task, group
