"""ArtifactsBench's own judge: its prompt read from a checkout of the benchmark, its score parsing, and an evaluation
end to end in the benchmark's data format against a fake OpenAI-compatible endpoint (the test double for an MLLM)."""
import asyncio
import json
import threading

import pytest

from critic_service import artifactsbench
from critic_service.config import CriticConfig
from critic_service.fake_openai import FakeOpenAI

from .conftest import ROOT
from .test_inference import script

# A stand-in checkout with the benchmark's layout and names; the text is ours, the mechanics the benchmark's.
TEMPLATE = ('prompt_mllm_content = (\n    "Score the answer strictly.\\n\\n**Scoring Criteria:**\\n\\n$Checklist\\n\\n"\n'
            '    "Reply with a JSON object like {\\"Overall Score\\": \\"35\\"} and your reasons.\\n\\n"\n'
            '    "--------Problem starts--------\\n$Question\\n--------Problem ends--------\\n\\n"\n'
            '    "--------Answer starts--------\\n$Answer\\n--------Answer ends--------\\n"\n)\n'
            "PROMPT = None  # the benchmark builds a string.Template from it\n")
SYSTEM = 'import os\n\nsystem_content = (\n    "You reason from first principles."\n)\n\ndef main():\n    pass\n'


def checkout(tmp_path, template=TEMPLATE):
    (tmp_path / "src" / "prompts").mkdir(parents=True)
    (tmp_path / "src" / "prompts" / "prompt_mllm_check.py").write_text(template)
    (tmp_path / "src" / "infer_qvl.py").write_text(SYSTEM)
    return tmp_path


def test_judge_is_read_from_the_checkout_and_scores_parse_as_the_benchmark_does(tmp_path):
    judge = artifactsbench.load_judge(checkout(tmp_path))
    assert judge.system == "You reason from first principles."
    text = judge.prompt("1. Menu (0-5)", "A bakery page", "```html\n<p>x</p>\n```")
    assert "**Scoring Criteria:**\n\n1. Menu (0-5)\n" in text and "Problem starts--------\nA bakery page\n" in text
    assert "<p>x</p>" in text
    assert artifactsbench.overall_score('```json\n{\n  "Overall Score": "35"\n}\n``` Reason: thin') == 35.0
    assert artifactsbench.overall_score('{"Overall Score": 20} then {"Overall Score": 61.5}') == 61.5  # the last
    assert artifactsbench.overall_score('{"总体打分": "70-80"}') == 70.0  # the Chinese key; the pattern reads 70
    assert artifactsbench.overall_score('score: 90') is None and artifactsbench.overall_score('"Overall Score": 140') is None
    assert artifactsbench.answer_text("<think>plan</think>\n```html\n<p/>\n```") == "```html\n<p/>\n```"

    bad = checkout(tmp_path / "bad", template='prompt_mllm_content = "no placeholders"\n')
    with pytest.raises(artifactsbench.JudgeFileError, match=r"critic.artifactsbench_repo: .*lacks \['\$Checklist'"):
        artifactsbench.load_judge(bad)
    with pytest.raises(artifactsbench.JudgeFileError, match="critic.artifactsbench_repo: cannot read"):
        artifactsbench.load_judge(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="critic.artifactsbench_repo=None is invalid"):
        CriticConfig(backend="openai", judge="artifactsbench").validate()
    with pytest.raises(ValueError, match=r"critic.judge='gpt' is invalid: expected one of \['relook', 'artifactsbench'\]"):
        CriticConfig(judge="gpt").validate()


def test_evaluate_on_artifactsbench_data_sends_the_benchmarks_request(tmp_path, taught_model):
    repo = checkout(tmp_path / "ArtifactsBenchmark")
    # one unreadable reply first: the benchmark asks again until it can read a score
    fake = FakeOpenAI([(200, "I need to look closer.", 0.0),
                       (200, '```json\n{\n  "Overall Score": "72"\n}\n``` Reason: menu and button present.', 0.0)])
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    url = asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
    out = tmp_path / "eval"
    try:
        done = script("evaluate", f"model.name={taught_model}", "self_edit.max_new_tokens=80", "self_edit.temperature=0",
                      "self_edit.rounds=0", "data=artifactsbench", f"data.path={ROOT / 'tests/pages/artifacts_bench.json'}",
                      "data.limit=1", "ray=off", "progress=false", f"out={out}", "critic=openai",
                      f"critic.openai_base_url={url}", "critic.openai_model=judge-model", "critic.judge=artifactsbench",
                      f"critic.artifactsbench_repo={repo}", "critic.backoff_s=0.01")
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert row["valid"] and row["score"] == 72.0 and "menu and button present" in row["feedback"]
    assert len(fake.requests) == 2  # asked again after the unreadable reply
    body = fake.requests[-1]
    assert body["model"] == "judge-model" and body["temperature"] == 0.7 and "max_tokens" not in body
    system, user = body["messages"]
    assert system == {"role": "system", "content": "You reason from first principles."}
    text, *images = user["content"]
    assert text["text"].startswith("Score the answer strictly.") and "2. Ordering (0-5 points)" in text["text"]
    assert "Write a bakery page" in text["text"] and "<h1>Bakery menu</h1>" in text["text"]  # question; the answer
    assert len(images) == 3 and all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in images)
