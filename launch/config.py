"""The training run's structured config: every part's dataclass, composed; hydra validates overrides against it."""
from __future__ import annotations

from dataclasses import dataclass, field

from actors.config import EngineConfig, RolloutConfig
from actors.revision import RevisionConfig
from actors.reward import RewardConfig
from common.checks import check
from critic_service.config import CriticConfig
from learner.config import LearnerConfig
from render_farm.config import RenderConfig

DATA_SOURCES = ("procedural", "webgen", "web-bench", "artifactsbench", "fullstack")


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"  # a preset (smollm2-135m, tiny) or a Hugging Face path / hub id
    arch: dict = field(default_factory=dict)  # --plan only: the model's config.json fields where its files are not on this machine ({} = read its config.json)


@dataclass
class DataConfig:
    source: str = "procedural"  # "procedural" (WebGen-style generator), "webgen", "web-bench", "artifactsbench", "fullstack"
    path: str = ""  # the benchmark's file or folder; "" = the copy in data/ (web-bench; webgen is not bundled: data/README.md)
    limit: int = 0  # use only the first N tasks of a benchmark (0 = all)
    tasks_per_step: int = 2  # B tasks per RL step (each gets rollout.group_size trajectories)
    heldout_tasks: int = 4  # held-out tasks used by evaluation (never trained on; a benchmark's first N rows)
    independent_path: str = "data/independent/tasks.jsonl"  # the learning check's tasks from another distribution (WebGen-Bench format), judged by executable checks (launch/independent.py)
    independent_tasks: int = 0  # how many of them the learning check evaluates before and after training (0 = none)
    seed: int = 0  # task order


@dataclass
class ClusterConfig:
    address: str = "auto"  # "auto": join a running Ray cluster if there is one, else start a local one; "local": always local
    num_cpus: int = 0  # logical CPUs of a local Ray (0 = max(8, machine's))
    placement: str = "pack"  # the run's placement group: "pack" / "spread" / "strict_pack" bundles, or "none" (Ray's default)
    colocate: bool = False  # learner rank i and rollout worker i share one bundle and its GPU (weights pushed by CUDA IPC)
    learner_cpus: float = 1.0  # CPUs reserved per learner rank
    learner_gpus: float = -1.0  # GPUs per learner rank; -1 = 1 if the cluster has GPUs (0.5 colocated), else 0
    rollout_cpus: float = 1.0  # CPUs reserved per rollout worker
    rollout_gpus: float = -1.0  # GPUs per rollout worker (its engine); -1 as for learner_gpus
    placement_timeout_s: float = 120.0  # a placement group that does not fit within this fails the run, saying why
    nodes: int = 0  # --plan only: nodes of the cluster to plan for (0 = this machine; a run reads Ray's)
    gpus_per_node: int = 0  # --plan only: GPUs per node
    gpu_memory_gib: float = 80.0  # --plan only: memory of one GPU

    def validate(self, learner_ranks: int, rollout_workers: int) -> "ClusterConfig":
        check("cluster", self, [
            ("address", self.address in ("auto", "local") or self.address.startswith(("ray://", "http"))
             or ":" in self.address, "'auto', 'local' or a Ray address"),
            ("placement", self.placement in ("pack", "spread", "strict_pack", "none"),
             "'pack', 'spread', 'strict_pack' or 'none'")])
        if self.colocate and learner_ranks != rollout_workers:
            raise ValueError(f"cluster.colocate=true pairs learner rank i with rollout worker i: learner.ranks="
                             f"{learner_ranks} and rollout.workers={rollout_workers} must be equal")
        return self


@dataclass
class TrainerConfig:
    max_steps: int = 2  # RL steps of this run (a resumed run stops at the same number)
    output_dir: str = "outputs/run"  # metrics.jsonl, samples/, checkpoints/, config.yaml, critic.log; under -m each sweep job gets its own (hydra's sweep dir, or <output_dir>/<job number> when set)
    resume: str = "auto"  # "auto": continue from the latest checkpoint in output_dir; "never"; or a checkpoint path
    save_every: int = 1  # checkpoint every N steps (and at the end)
    eval_every: int = 0  # mean reward on held-out tasks every N steps (0 = never)
    eval_max_turns: int = 1  # turns of a held-out evaluation: 1 = the first page alone (no critic, as at inference); 0 = rollout.max_turns
    eval_temperature: float = -1.0  # sampling temperature of a held-out evaluation: -1 = rollout.temperature; inference decodes at self_edit.temperature (0.2)
    seed: int = 0  # sampling seeds (per step and task, whichever worker runs it); also the learner's when learner.seed is -1
    wandb: str = "offline"  # wandb mode: "offline", "online" (needs a key) or "disabled"
    wandb_project: str = "relook"  # wandb project name
    progress: bool = True  # a progress bar with the live figures
    learning_check: bool = False  # held-out reward before and after training, printed as one JSON line
    max_staleness: int = 0  # 0: on-policy (rollout, update, push, in turn); k >= 1: rollouts run ahead while the learner steps, on policies at most k versions old
    throughput: bool = False  # +experiment=throughput: the same steps synchronously, then with max_staleness=1; one JSON line per mode
    token_budget: int = 0  # stop after the step whose generated tokens (all attempts, this run) reach this many; 0 = max_steps only
    ablation: bool = False  # +experiment=ablation: train and evaluate the paper's arms (launch/ablation.py)
    ablation_webgen: str = ""  # +experiment=ablation: WebGen-Bench's test.jsonl, evaluated beside the held-out tasks ("" = held-out tasks alone; not bundled: data/README.md)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    critic: CriticConfig = field(default_factory=lambda: CriticConfig(host="auto", port=0))
    render: RenderConfig = field(default_factory=RenderConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(group_size=2, max_turns=2, max_resamples=1, max_new_tokens=192))
    revision: RevisionConfig = field(default_factory=RevisionConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self, planning: bool = False) -> "TrainConfig":
        """planning: a --plan for another machine (its engine need not be installed here)."""
        self.engine.validate(installed=not planning)
        for part in (self.critic, self.render, self.learner, self.rollout, self.revision, self.reward):
            part.validate()
        self.cluster.validate(self.learner.ranks, self.rollout.workers)
        return check("", self, [
            ("data.source", self.data.source in DATA_SOURCES, f"one of {list(DATA_SOURCES)}"),
            ("data.tasks_per_step", self.data.tasks_per_step >= 1, "an integer >= 1"),
            ("trainer.max_steps", self.trainer.max_steps >= 1, "an integer >= 1"),
            ("trainer.save_every", self.trainer.save_every >= 1, "an integer >= 1"),
            ("trainer.wandb", self.trainer.wandb in ("offline", "online", "disabled"), "'offline', 'online' or 'disabled'"),
            ("trainer.max_staleness", self.trainer.max_staleness >= 0, "an integer >= 0"),
            ("trainer.eval_max_turns", self.trainer.eval_max_turns >= 0, "an integer >= 0 (0 = rollout.max_turns)"),
            ("trainer.eval_temperature", self.trainer.eval_temperature >= 0 or self.trainer.eval_temperature == -1,
             ">= 0, or -1 (= rollout.temperature)"),
            ("trainer.token_budget", self.trainer.token_budget == 0 or (self.trainer.token_budget > 0 and
                                                                        not self.trainer.max_staleness),
             "0, or > 0 with trainer.max_staleness=0 (the budget is checked between synchronous steps)"),
            ("learner.loss", not (self.trainer.max_staleness and self.learner.loss == "ppo"),
             "'decoupled' or 'auto' with trainer.max_staleness >= 1 (stale samples need the importance weight)"),
        ])

    def resolved_eval_temperature(self) -> float:
        """trainer.eval_temperature with its documented default made: -1 = rollout.temperature."""
        t = self.trainer.eval_temperature
        return t if t >= 0 else self.rollout.temperature

    def resolved_rollout(self) -> RolloutConfig:
        """rollout.engine_cores auto (0) made: every core while the learner waits (synchronous training), half of them
        while it trains alongside (measured on 2 cores: both stages on every core made the asynchronous step 1.3x
        slower than the synchronous one, 107.9 against 82.1 s)."""
        import dataclasses
        if self.rollout.engine_cores:
            return self.rollout
        return dataclasses.replace(self.rollout, engine_cores=0.5 if self.trainer.max_staleness else 1.0)

    def resolved_learner(self) -> LearnerConfig:
        """The learner's config with its two documented derivations made: learner.seed -1 = trainer.seed, and
        learner.loss auto = decoupled with trainer.max_staleness >= 1, else ppo."""
        import dataclasses
        return dataclasses.replace(
            self.learner, seed=self.learner.seed if self.learner.seed >= 0 else self.trainer.seed,
            loss=self.learner.loss if self.learner.loss != "auto" else ("decoupled" if self.trainer.max_staleness else "ppo"))
