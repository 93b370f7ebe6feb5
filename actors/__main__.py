"""`python -m actors rollout [model=PRESET | model.name=PATH] [engine=hf|vllm] task="..." [rollout.group_size=G]`: one
group end to end on a local Ray (render farm + critic service + one rollout worker), trajectories printed as JSON lines.
`python -m actors bench [MODEL] [DEVICE]`: the HF engine's decode tokens/s (on CPU with and without prepacked weights;
actors/bench.py). Keys as the launch scripts take them: `model=tiny` picks a preset as hydra's model group does,
`model.name=PATH` any model folder, `engine=vllm` the engine group (`engine.max_model_len=...` its keys)."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

from critic_service.config import CriticConfig
from render_farm.config import RenderConfig

from .config import EngineConfig, RolloutConfig
from .revision import RevisionConfig
from .reward import RewardConfig


@dataclass
class Model:
    name: str = "smollm2-135m"  # a preset (smollm2-135m, tiny) or a Hugging Face model path


@dataclass
class RolloutCLI:
    model: Model = field(default_factory=Model)
    engine: EngineConfig = field(default_factory=EngineConfig)
    task: str = "Write a landing page for a bakery with a menu table and an order form. Use white for the background and navy for components."  # the prompt
    checklist: list[str] = field(default_factory=list)  # optional checks for the critic
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    revision: RevisionConfig = field(default_factory=RevisionConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    critic: CriticConfig = field(default_factory=lambda: CriticConfig(port=0))


def main(argv: list[str]) -> int:
    if argv[:1] == ["bench"] and len(argv) <= 3:
        from .bench import run
        run(*argv[1:])
        return 0
    if not argv or argv[0] != "rollout":
        print("usage: python -m actors rollout [model=tiny|model.name=PATH] [engine=hf|vllm] task=\"...\" "
              "[rollout.group_size=G] [rollout.max_turns=T]\n"
              "       python -m actors bench [MODEL] [cpu|cuda]", file=sys.stderr)
        return 2
    from omegaconf import OmegaConf  # here, not above: the bench needs no config parsing
    from omegaconf.errors import OmegaConfBaseException
    try:
        groups = {"model": "model.name", "engine": "engine.kind"}  # group=option, as hydra's groups read
        args = [f"{groups[a.split('=', 1)[0]]}={a.split('=', 1)[1]}" if a.split("=", 1)[0] in groups else a
                for a in argv[1:]]
        cfg = OmegaConf.merge(OmegaConf.structured(RolloutCLI), OmegaConf.from_dotlist(args))
        cfg = OmegaConf.to_object(cfg)
        cfg.rollout.validate(), cfg.revision.validate(), cfg.reward.validate(), cfg.render.validate(), cfg.critic.validate()
        cfg.engine.validate()
    except (OmegaConfBaseException, ValueError) as e:
        print(f"actors: bad config: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from critic_service.process import endpoint
    from render_farm.farm import RenderFarm

    from .worker import rollout_worker, stream_groups
    ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    try:
        with endpoint(cfg.critic) as url:
            farm = RenderFarm(cfg.render)
            worker = rollout_worker(cfg.engine.kind).remote(cfg.model.name, cfg.rollout, farm.workers, url,
                                                            revision=cfg.revision, reward=cfg.reward, engine=cfg.engine)
            task = {"id": "cli", "prompt": cfg.task, "checklist": cfg.checklist}
            for _, group in stream_groups([worker], [task]):
                for traj in group:
                    print(json.dumps(traj.to_json()))
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
