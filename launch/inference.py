"""What generate.py and evaluate.py share: their config schema and the inference stack in one process (the policy's
engine, a Chromium renderer, the critic or none), plus writing a page and its screenshots to disk."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from actors.config import EngineConfig, SelfEditConfig
from actors.engine import Batcher
from actors.revision import RevisionConfig
from actors.rollout import Conversation
from actors.self_edit import EditResult, self_edit
from actors.worker import make_engine
from common.checks import check
from critic_service.config import CriticConfig
from render_farm.config import RenderConfig

from .config import DataConfig, ModelConfig


@dataclass
class GenerateConfig:
    task: str = ""  # the request (required)
    checklist: list[str] = field(default_factory=list)  # optional checks, for a critic
    out: str = "outputs/page.html"  # the final page; screenshots are written beside it (<stem>-shot<k>.png)
    seed: int = 0  # sampling seed
    bench_repeats: int = 3  # with +bench=true: base/self-edit pairs timed, side by side
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    critic: CriticConfig = field(default_factory=lambda: CriticConfig(backend="none"))
    render: RenderConfig = field(default_factory=RenderConfig)
    self_edit: SelfEditConfig = field(default_factory=SelfEditConfig)
    revision: RevisionConfig = field(default_factory=RevisionConfig)

    def validate(self) -> "GenerateConfig":
        return _validate_parts(self)


@dataclass
class EvalConfig:
    out: str = "outputs/eval"  # results.jsonl, summary.json, report.html, pages/, shots/
    ray: str = "auto"  # "auto": generate on rollout workers when a Ray cluster is up, else in this process; "off"
    workers: int = 1  # rollout workers on a Ray cluster
    concurrency: int = 2  # tasks in flight in this process (their generate calls are batched together)
    spec_workers: int = 0  # Web-Bench: the official runner's test workers (the projects' MAX_TEST_WORKERS; 0 = their default, half the CPUs); a failing spec mostly waits out its timeout, so more finish sooner
    seed: int = 0  # sampling seed
    progress: bool = True  # a progress bar
    independent: bool = False  # also judge each task's one-shot and final page by executable checks (critic_service/probes.py)
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(source="procedural"))
    self_edit: SelfEditConfig = field(default_factory=lambda: SelfEditConfig(use_critic=False))
    revision: RevisionConfig = field(default_factory=RevisionConfig)

    def validate(self) -> "EvalConfig":
        checks = [("ray", self.ray in ("auto", "off"), "'auto' or 'off'"),
                  ("workers", self.workers >= 1, "an integer >= 1"),
                  ("concurrency", self.concurrency >= 1, "an integer >= 1"),
                  ("spec_workers", self.spec_workers >= 0, "an integer >= 0 (0 = the project's default)")]
        check("", self, checks)
        return _validate_parts(self)


def _validate_parts(cfg):
    cfg.engine.validate(), cfg.self_edit.validate(), cfg.revision.validate(), cfg.render.validate()
    if cfg.critic.backend != "none":  # "none" is an inference-only choice the critic's own schema does not allow
        cfg.critic.validate()
    return cfg


def resolve(dcfg: DictConfig, extras: tuple[str, ...] = ()):
    """Hydra's config -> the typed dataclass, validated; a bad value exits 2 naming the key. `extras` are keys
    allowed with `+key=value` (not in the schema); their values are returned beside the config."""
    found = {}
    with open_dict(dcfg):
        for key in extras:
            found[key] = dcfg.pop(key, None)
    try:
        cfg = OmegaConf.to_object(dcfg).validate()
    except Exception as e:  # OmegaConf's missing/typed-value errors and ours, before any work starts
        print(f"config error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    return cfg, found


class Stack:
    """The policy engine, a renderer and the critic in this process: `await stack.run(task)` -> EditResult."""

    def __init__(self, cfg):
        self.cfg = cfg

    async def __aenter__(self) -> "Stack":
        from render_farm.renderer import Renderer
        cfg = self.cfg
        self.engine = make_engine(cfg.engine, cfg.model.name, cfg.seed)
        # vLLM batches by itself; the HF engine through a Batcher
        self.generate = getattr(self.engine, "agenerate", None) or Batcher(self.engine).generate
        self.conv = Conversation(self.engine.tokenizer, cfg.self_edit.system_prompt, cfg.self_edit.feedback_role)
        self.renderer = await Renderer(cfg.render).__aenter__()
        self.critic = None
        if cfg.critic.backend != "none" and cfg.critic.url:
            from critic_service.client import CriticClient
            self.critic = CriticClient(cfg.critic.url)
        elif cfg.critic.backend != "none":
            from critic_service.service import make_backend
            self.critic = make_backend(cfg.critic)
        return self

    async def run(self, task: dict, self_edit_cfg: SelfEditConfig | None = None) -> EditResult:
        critique = self.critic.critique if self.critic is not None else None
        return await self_edit(task, self.conv, self.generate, self.renderer.render,
                               self_edit_cfg or self.cfg.self_edit, critique, self.cfg.revision)

    async def __aexit__(self, *exc) -> None:
        await self.renderer.__aexit__(*exc)
        if self.critic is not None:
            await self.critic.aclose()
        if hasattr(self.engine, "close"):
            self.engine.close()


def write_page(res: EditResult, page: Path, shots_dir: Path, shot_prefix: str) -> list[Path]:
    """The kept page at `page` (the model's raw reply when it held no page) and its screenshots as
    shots_dir/<shot_prefix><k>.png; returns the screenshot paths."""
    page.parent.mkdir(parents=True, exist_ok=True)
    shots_dir.mkdir(parents=True, exist_ok=True)
    page.write_text(res.html if res.html is not None else res.reply, encoding="utf-8")
    shots = []
    for k, png in enumerate(res.page.screenshots if res.page is not None else []):
        shots.append(shots_dir / f"{shot_prefix}{k}.png")
        shots[-1].write_bytes(png)
    return shots


def done_rows(path: Path) -> list[dict]:
    """Rows already written (a line cut off by a crash is dropped, so its task runs again)."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"evaluate: ignoring a partial line in {path}", file=sys.stderr)
    return rows
