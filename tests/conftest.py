import asyncio
import os
import pathlib

import pytest

# The environment every test needs, set here rather than in CI scripts.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "data"  # what the repository carries (Web-Bench's projects)
WEBGEN = ROOT / "tests" / "data" / "webgen-test.jsonl"  # WebGen-Bench's format, our own instructions (not bundled)


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    return DATA


def run(coro):
    return asyncio.run(coro)


WEB_BENCH_PROJECTS = ["bom", "calculator", "calculator-files", "dom", "dom1", "esmodule", "flex", "float", "form",
                      "grid", "survey", "table"]


def stop_ray_session(temp_dir: str) -> None:
    """Stop the Ray that `ray start --head --temp-dir=temp_dir` started, and only that one: its processes are found by
    their session directory, then their descendants; other Ray instances on the machine are left alone."""
    import signal

    from render_farm.sandbox import process_tree
    ours = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if temp_dir.encode() in f.read().replace(b"\0", b" "):
                        ours.append(int(name))
            except OSError:
                pass
    for pid in {p for root in ours for p in process_tree(root)} - {os.getpid()}:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


PAGE = ("```html\n<html><body style='background:#fff'><h1>Bakery menu</h1><button>Order</button></body></html>\n```")
TASK = {"id": "bakery", "prompt": "Write a bakery page with a menu and an order button.", "checklist": []}


def _teach(path: pathlib.Path) -> None:
    """The tiny model after a few supervised steps on PAGE, in first-turn and revision contexts: greedy decoding
    then writes a real page every time, so renders are valid and the critic is always asked."""
    import torch

    from actors.config import RolloutConfig
    from actors.engine import Completion, HFEngine
    from actors.revision import critic_report, revision_message
    from actors.rollout import Conversation
    cfg = RolloutConfig()
    engine = HFEngine("tiny")
    tok, model = engine.tokenizer, engine.model
    conv = Conversation(tok, cfg.system_prompt, cfg.feedback_role)
    target = tok(PAGE, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    first = conv.prompt_ids(TASK["prompt"])
    contexts = [first]
    done = Completion(target, [0.0] * len(target), PAGE, True)
    ctx = first
    for score in (50, 55, 61.5):  # the revision contexts, turn after turn
        fb = revision_message("The page rendered.", "page", critic_report(score, f"feedback after {score:g}"))
        ctx = ctx + target + conv.feedback_ids(TASK["prompt"], done, fb)
        contexts.append(ctx)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(120):
        for ctx in contexts:
            ids = torch.tensor([ctx + target])
            labels = ids.clone()
            labels[0, :len(ctx)] = -100
            model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(path)
    tok.save_pretrained(path)


@pytest.fixture(scope="session")
def taught_model(tmp_path_factory) -> str:
    """A model folder of the taught tiny policy, trained once per test session (~20 s)."""
    path = tmp_path_factory.mktemp("taught")
    _teach(path)
    return str(path)


def pytest_collection_modifyitems(config, items):
    """A plain `pytest` is the fast suite: `slow` tests (whole training jobs, faults, several hosts; CI runs them:
    `pytest -m "not sweep"`) and the `sweep` (every bundled Web-Bench reference, `pytest -m sweep`) are skipped.
    With `-m`, the expression alone chooses."""
    if config.getoption("-m"):
        return
    for item in items:
        for name, how in (("slow", 'pytest -m "not sweep"'), ("sweep", "pytest -m sweep")):
            if name in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"{name}: run with `{how}`"))
