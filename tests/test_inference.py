"""launch/generate.py and launch/evaluate.py end to end with the tiny model, and each benchmark loader on the bundled
data or a small fixture of the benchmark's documented format."""
import json
import shutil
import subprocess
import sys
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from launch import tasks

from .conftest import ROOT, TASK, WEB_BENCH_PROJECTS, WEBGEN, stop_ray_session

TINY = ["model=tiny", "self_edit.max_new_tokens=24", "revision.edit_max_new_tokens=8"]


def script(name, *args, timeout=300):
    return subprocess.run([sys.executable, f"launch/{name}.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_webgen_and_web_bench_loaders_on_the_bundled_data(data_dir):
    """WebGen-Bench from a path the user gives (not bundled: the error says where to get it); Web-Bench from data/;
    the generator's held-out split as evaluate.py's default."""
    with pytest.raises(ValueError, match="WebGen-Bench is not bundled.*github.com/mnluzimu/WebGen-Bench.*data.path="):
        tasks.load("webgen")
    webgen = tasks.load("webgen", str(WEBGEN))
    assert len(webgen) == 8 and all(t["prompt"] and t["checklist"] for t in webgen)
    assert tasks.load("webgen", str(WEBGEN), limit=3) == webgen[:3]
    assert webgen[0]["checklist"][0].startswith("Search for a stock") and "Expected:" in webgen[0]["checklist"][0]
    held = tasks.load("procedural", limit=4)
    assert len(held) == 4 and {t["id"] for t in held} <= {t["id"] for t in tasks.procedural("heldout")}
    web = tasks.load("web-bench")  # per project: init from no files, task-1 from src-init, each with its specs
    assert sorted(t["id"] for t in web) == sorted(f"{p}/{t}" for p in WEB_BENCH_PROJECTS for t in ("init", "task-1"))
    calc = next(t for t in web if t["id"] == "calculator/init")
    assert "calculator" in calc["prompt"] and "display" in calc["prompt"]  # the init task's description
    assert calc["web_bench"]["task"] == 0 and calc["files"] == {}
    dom1 = next(t for t in web if t["id"] == "dom/task-1")
    assert dom1["files"].keys() == {"index.html", "index.js", "index.css"} and "```js index.js" in dom1["prompt"]
    one = tasks.load("web-bench", str(data_dir / "web-bench" / "flex" / "tasks.jsonl"))
    assert [t["id"] for t in one] == ["flex/init", "flex/task-1"]


def test_artifactsbench_loader_reads_json_arrays_and_jsonl(tmp_path):
    rows = [{"index": 7, "question": "Make an SVG clock.", "checklist": ["Hands move.", "Numbers shown."],
             "class": "SVG"}, {"index": 8, "question": "A game of snake.", "checklist": "The snake moves."}]
    array, lines = tmp_path / "a.json", tmp_path / "a.jsonl"
    array.write_text(json.dumps(rows))
    lines.write_text("\n".join(json.dumps(r) for r in rows))
    for path in (array, lines):
        got = tasks.load("artifactsbench", str(path))
        assert [t["id"] for t in got] == ["7", "8"] and got[0]["category"] == "SVG"
        assert got[0]["checklist"] == ["Hands move.", "Numbers shown."] and got[1]["checklist"] == ["The snake moves."]
    with pytest.raises(ValueError, match="data.path is required"):
        tasks.load("artifactsbench")


def test_fullstack_loader_keeps_the_html_rows_from_jsonl_and_parquet(tmp_path):
    rows = [{"id": 1, "content": "Build a login page.", "labels": {"programming_language": "html", "category": "Web"}},
            {"id": 2, "content": "Sort a list.", "labels": {"programming_language": "python", "category": "Basic"}}]
    jl, pqf = tmp_path / "fs.jsonl", tmp_path / "fs.parquet"
    jl.write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), pqf)
    for path in (jl, pqf):
        got = tasks.load("fullstack", str(path))
        assert got == [{"id": "1", "prompt": "Build a login page.", "checklist": [], "category": "Web"}]


def test_loaders_say_what_they_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at"):
        tasks.load("webgen", str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no index"}\n')
    with pytest.raises(ValueError, match=r"lacks \['index'\]"):
        tasks.load("artifactsbench", str(bad))
    bad.write_text("not json at all\n")
    with pytest.raises(ValueError, match="not JSON Lines"):
        tasks.load("fullstack", str(bad))
    with pytest.raises(ValueError, match="data.source='nope'"):
        tasks.load("nope")


@pytest.mark.slow
def test_generate_runs_the_cycle_and_writes_its_files(tmp_path):
    out = tmp_path / "page.html"
    res = script("generate", *TINY, "task=a bakery landing page", f"out={out}", "self_edit.rounds=2")
    assert res.returncode == 0, res.stderr[-2000:]
    line = json.loads(res.stdout.strip().splitlines()[-1])
    assert 1 <= line["rounds"] <= 2 and line["stop"] in ("rounds", "no_change", "truncated", "edits_not_found",
                                                           "page_unchanged", "not_improved")
    assert len(line["history"]) == line["rounds"] + 1 and line["tokens"] > 0 and line["latency_s"] > 0
    assert out.is_file() and line["out"] == str(out) and all(p.endswith(".png") for p in line["shots"])

    # every round runs: a cycle that re-generates the same first page and then revises twice costs more than the
    # one-shot page it is compared with, pair by pair
    bench = script("generate", *TINY, "task=a bakery landing page", f"out={out}", "+bench=true", "bench_repeats=2",
                   "self_edit.early_stop=false", "self_edit.rounds=2")
    assert bench.returncode == 0, bench.stderr[-2000:]
    b = json.loads(bench.stdout.strip().splitlines()[-1])["bench"]
    assert len(b["pairs"]) == 2 and all(p["rounds"] == 2 and p["tokens"] > p["base_tokens"] for p in b["pairs"])
    assert b["self_edit_vs_base_latency"] > 1.0 and b["rounds_configured"] == 2

    missing = script("generate", "model=tiny", timeout=60)
    assert missing.returncode == 2 and "task is required" in missing.stderr
    bad = script("generate", "model=tiny", "task=x", "revision.format=diff", timeout=60)
    assert bad.returncode == 2 and "revision.format='diff'" in bad.stderr


def test_evaluate_writes_results_summary_report_and_resumes(tmp_path, taught_model):
    """The taught policy writes a real page for the task it was taught: each is rendered and scored by the critic (a
    score above 0 proves the scoring path ran); the untrained tiny model writes none, which scores strictly 0."""
    out, bench = tmp_path / "eval", tmp_path / "tasks.json"
    bench.write_text(json.dumps([{"index": "a", "question": TASK["prompt"]}, {"index": "b", "question": TASK["prompt"]},
                                 {"index": "c", "question": "A todo app with a form."}]))
    data = ["data=artifactsbench", f"data.path={bench}", "ray=off", "progress=false", f"out={out}"]
    taught = [f"model.name={taught_model}", "self_edit.max_new_tokens=80", "self_edit.temperature=0",
              "self_edit.rounds=0"]
    first = script("evaluate", *taught, *data, "data.limit=2")
    assert first.returncode == 0, first.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["a", "b"]
    for r in rows:
        assert (out / r["page"]).is_file() and r["rounds"] == 0
        assert r["valid"] and r["score"] > 0 and len(r["screenshots"]) == 3, r
        assert all((out / shot).is_file() for shot in r["screenshots"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"] == 2 and summary["valid_render_rate"] == 1.0 and summary["mean_score"] > 0
    report = (out / "report.html").read_text()
    assert report.count("<section>") == 2 and "pages/a.html" in report

    again = script("evaluate", *TINY, *data, "data.limit=3")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 already done" in again.stdout
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["a", "b", "c"]  # only the new task ran
    new = next(r for r in rows if r["id"] == "c")
    assert not new["valid"] and new["reason"] == "no_html" and new["score"] == 0.0  # no page: strictly zero

    missing = script("evaluate", "model=tiny", "data=artifactsbench", f"out={tmp_path / 'x'}", timeout=60)
    assert missing.returncode == 2 and "data.path is required" in missing.stderr


def test_evaluate_generates_on_rollout_workers_when_a_ray_cluster_is_up(tmp_path, data_dir):
    ray_cli = str(ROOT / ".venv" / "bin" / "ray") if (ROOT / ".venv" / "bin" / "ray").exists() else "ray"
    temp_dir = tempfile.mkdtemp(prefix="rl-", dir="/tmp")  # short: Ray's socket paths must fit AF_UNIX's limit
    env_start = subprocess.run([ray_cli, "start", "--head", "--num-cpus=6", "--include-dashboard=false",
                                "--disable-usage-stats", f"--temp-dir={temp_dir}"], capture_output=True, text=True,
                               timeout=120)
    assert env_start.returncode == 0, env_start.stderr[-2000:]
    try:
        out = tmp_path / "eval"
        res = script("evaluate", *TINY, "data=webgen", f"data.path={WEBGEN}", "data.limit=2", "ray=auto", "workers=2", "progress=false",
                     f"out={out}")
        assert res.returncode == 0, res.stderr[-2000:]
        rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
        assert sorted(r["id"] for r in rows) == ["000001", "000002"] and all(r["score"] == 0.0 for r in rows)
        assert "on 2 rollout worker(s)" in res.stdout
    finally:
        stop_ray_session(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
