"""Web-Bench end to end: multi-file answers and renders, the official spec runner, the training spec server (same
verdicts), the specs as part of the reward, and the benchmark's protocol in launch/evaluate.py."""
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors.engine import Completion
from actors.revision import entry_page, extract_files
from actors.reward import RewardConfig
from actors.rollout import run_trajectory
from critic_service.service import HeuristicBackend
from critic_service.specs import Project, SpecServer, official_check
from launch.web_bench import read_files, task_prompt
from render_farm.renderer import Renderer
from render_farm.result import RenderRequest

ROOT = Path(__file__).resolve().parents[1]
PROJECTS = ["bom", "calculator", "calculator-files", "dom", "dom1", "esmodule", "flex", "float", "form", "grid",
            "survey", "table"]


def run(coro):
    return asyncio.run(coro)


def test_a_reply_with_several_fenced_files_becomes_a_file_set():
    reply = ("index.html:\n```html\n<script type=module src=index.js></script>\n```\n"
             "```js src/index.js\nexport const x = 1\n```\n**common/a.css**\n```css\nbody{}\n```\n"
             "```js ../../etc/x.js\nnope\n```\n```python\nprint(1)\n```")
    assert extract_files(reply) == {"index.html": "<script type=module src=index.js></script>\n",
                                    "index.js": "export const x = 1\n", "common/a.css": "body{}\n"}
    assert extract_files("```html\n<h1>one page</h1>\n```") == {"index.html": "<h1>one page</h1>\n"}
    assert extract_files("no code at all") == {}
    assert entry_page({"a.css": "", "index.html": "", "b.html": ""}) == "index.html"
    assert entry_page({"survey.js": "", "design.html": "", "x/index.html": ""}) == "design.html"  # survey's start
    assert entry_page({"index.js": ""}) is None


def test_a_file_set_renders_under_one_origin_and_reaches_nothing_else(data_dir):
    src = read_files(data_dir / "web-bench" / "dom" / "src")
    html = src.pop("index.html")
    hostile = {"a.js": "fetch('http://198.18.0.1/x'); document.body.append('module ran'); location.href = '/b.html'",
               "b.html": "<h1>elsewhere</h1>"}

    async def go():
        async with Renderer() as r:
            full = await r.render(RenderRequest(html, files=src))  # ES modules, relative CSS, built by JS
            site = {"style.css": "body { background: rgb(10, 80, 40) }", "m.js": "import {x} from './lib/x.js';"
                    " document.body.append(x)", "lib/x.js": "export const x = 'from a nested module'"}
            alone = await r.render(RenderRequest('<link rel=stylesheet href=style.css><h1>Site</h1>'
                                                 '<script type=module src=m.js></script>', files=site))
            bad = await r.render(RenderRequest('<script type=module>import "./a.js"</script><p>hi</p>', files=hostile))
            return full, alone, bad
    full, alone, bad = run(go())
    assert full.valid and full.dom["counts"]["buttons"] >= 5 and not full.page_errors, full.detail
    assert "from a nested module" in alone.dom["text"] and not alone.console_errors, alone.console_errors
    assert alone.dom["colors"]["body_bg"] == "rgb(10, 80, 40)", alone.dom["colors"]  # the relative stylesheet
    assert bad.valid and "module ran" in bad.dom["text"] and "elsewhere" not in bad.dom["text"]
    assert bad.blocked_requests >= 2  # the fetch and the navigation


@pytest.mark.slow
def test_the_official_runner_passes_a_reference_solution_and_fails_the_start(data_dir, tmp_path):
    """`launch/web_bench.py check` with @playwright/test, the project's own config, Debian's Chromium."""
    project = data_dir / "web-bench" / "calculator-files"
    done = subprocess.run([sys.executable, "launch/web_bench.py", "check", "--project", str(project), "--files",
                           str(project / "src"), "--task", "20", "--workers", "2"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    ref = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and ref["failed"] == 0 and ref["total"] == ref["passed"] > 40, ref
    start = official_check(Project(project), project / "src-init", 1, workers=4)  # failing specs wait: 4 at once
    assert start.failed > 0 and start.passed > 0 and start.error is None  # init passes, task-1 does not yet
    assert all(f["spec"] == "task-1.spec.js" for f in start.failures)
    bad = subprocess.run([sys.executable, "launch/web_bench.py", "check", "--project", str(tmp_path), "--files",
                          str(tmp_path), "--task", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a Web-Bench project" in bad.stderr
    neg = subprocess.run([sys.executable, "launch/web_bench.py", "check", "--project", str(project), "--files",
                          str(project / "src"), "--task", "1", "--workers", "-1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert neg.returncode == 2 and "--workers -1 is invalid" in neg.stderr


def _processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, working directory, command line) of every process we may read."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                out[int(d.name)] = (int(stat[stat.rindex(")") + 2:].split()[1]), str((d / "cwd").resolve()),
                                    (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except (OSError, ValueError):
                pass
    return out


def test_a_check_killed_mid_run_leaves_no_web_server_behind(data_dir):
    """Playwright starts a config's webServer detached (a process group of its own) and stops it only on its way out.
    Measured without tether.js: a driver killed with SIGKILL leaves `npx serve` running (the runner, told by the
    kernel, dies without stopping it); with it, nothing of the check is left."""
    project = data_dir / "web-bench" / "esmodule"
    code = ("from critic_service.specs import Project, official_check; "
            f"official_check(Project({str(project)!r}), {str(project / 'src')!r}, 20)")
    driver = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work, left = None, []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the runner (the driver's child) and, in its folder, its web server
            procs = _processes()
            runner = next((p for p, (pp, _, cmd) in procs.items() if pp == driver.pid and "cli.js" in cmd), None)
            work = procs[runner][1] if runner else None
            if work and any(cwd == work and "serve" in cmd and p != runner for p, (_, cwd, cmd) in procs.items()):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the official runner never started its web server")
        os.killpg(driver.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = [cmd for p, (_, cwd, cmd) in _processes().items() if work in cwd or work in cmd]  # cwd: "(deleted)"
            if not left:
                break
            time.sleep(0.2)
        assert not left, f"still running in {work} after the check was killed: {left}"
    finally:
        with contextlib.suppress(OSError):
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        for p, (_, cwd, cmd) in _processes().items():  # what this test started, should it have failed
            if work and (work in cwd or work in cmd):
                with contextlib.suppress(OSError):
                    os.killpg(os.getpgid(p), signal.SIGKILL)


def _same_verdicts(project_name: str, data_dir, task: int, folder: str, workers: int = 0):
    """The training check (spec server, short timeouts capped at reward.spec_wait_ms, reward.spec_lanes tests at
    once) against the official runner with the benchmark's production timeouts: the same verdicts."""
    project = Project(data_dir / "web-bench" / project_name)

    async def fast():
        async with SpecServer(RewardConfig.spec_lanes, RewardConfig.spec_wait_ms) as s:
            return await s.check(project, project.dir / folder, project.specs_up_to(task), task, production=False)
    quick, official = run(fast()), official_check(project, project.dir / folder, task, production=True,
                                                   workers=workers)
    assert quick.error is None and official.error is None, (quick.error, official.error)
    assert (quick.passed, quick.failed, quick.total) == (official.passed, official.failed, official.total)
    assert sorted(f["title"] for f in quick.failures) == sorted(f["title"] for f in official.failures)
    return quick


@pytest.mark.slow
@pytest.mark.parametrize("name", ["esmodule"])  # ES modules, top-level await, import.meta: the hardest to mimic
def test_the_spec_server_gives_the_official_verdicts(name, data_dir):
    ref = _same_verdicts(name, data_dir, 20, "src")
    assert ref.failed == 0
    start = _same_verdicts(name, data_dir, 2, "src-init", workers=4)  # failing specs wait out timeouts: 4 at once
    assert start.failed > 0


@pytest.mark.sweep
@pytest.mark.parametrize("name", PROJECTS)
def test_every_bundled_reference_passes_and_the_spec_server_agrees(name, data_dir):
    assert _same_verdicts(name, data_dir, 20, "src").failed == 0
    _same_verdicts(name, data_dir, 1, "src-init", workers=4)


@pytest.mark.slow
def test_the_specs_join_the_reward_and_the_feedback_in_training(data_dir):
    """A Web-Bench task in the rollout: the page is a file set, its task's spec runs on the spec server, the score
    blends critic and tests (reward.tests_weight), and the failing assertions reach the next revision."""
    from launch.tasks import web_bench
    task = next(t for t in web_bench(str(data_dir / "web-bench" / "calculator")) if t["id"] == "calculator/init")
    reference = (data_dir / "web-bench" / "calculator" / "src" / "index.html").read_text()
    good = Completion([1], [-1.0], f"```html index.html\n{reference}\n```", True)
    broken = Completion([1], [-1.0], "```html index.html\n<html><body><h1>Calculator</h1><input id=display>"
                                     "<button>1</button></body></html>\n```", True)
    critic = HeuristicBackend()
    shaping = RewardConfig(tests_weight=0.5)

    async def go():
        async with Renderer() as r, SpecServer() as s:
            async def specs(t, files):
                p = Project(t["web_bench"]["project"])
                return await s.check(p, files, [p.spec(t["web_bench"]["task"])], t["web_bench"]["task"])
            cfg = __import__("actors.config", fromlist=["RolloutConfig"]).RolloutConfig(max_turns=1)
            out = []
            for c in (good, broken):
                out.append(await run_trajectory(task, 0, c, [5], None, None, r.render, critic.critique, cfg,
                                                shaping=shaping, specs=specs))
            return out
    ok, bad = run(go())
    # The reference passes all 17 init specs alone; under CI's load one of them once ran past the config's 2 s test
    # timeout, which the training spec server keeps (critic_service/README.md): allow that one, name it if more.
    assert ok.final_checks["tests"] >= 16 / 17, ok.attempts[0].feedback
    assert bad.final_checks["tests"] < 0.5
    assert ok.reward > bad.reward > 0
    assert "tests fail" in bad.attempts[0].feedback and "check all buttons" in bad.attempts[0].feedback
    assert task["files"] == {} and "Task: generate a calculator" in task["prompt"]
    assert task_prompt("do it", {"a.js": "x"}).count("```js a.js") == 1


@pytest.mark.slow
def test_evaluate_runs_the_web_bench_protocol_and_resumes(tmp_path, data_dir):
    """The tiny random model writes no file: task-1 fails twice (pass@2 false), the project stops there."""
    out = tmp_path / "wb"
    args = [sys.executable, "launch/evaluate.py", "model=tiny", "critic=heuristic", "data=web-bench",
            f"data.path={data_dir / 'web-bench' / 'flex'}", "self_edit.max_new_tokens=16", "progress=false",
            "ray=off", "spec_workers=4", f"out={out}"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"] == {"projects": 1, "tasks": 20, "pass@1": 0.0, "pass@2": 0.0, "error@1": 1.0}
    assert summary["spec_workers"] == 4
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["flex/task-1"] and len(rows[0]["attempts"]) == 2
    assert rows[0]["attempts"][0]["failed"] > 0 and "task-1" in (out / "report.html").read_text()
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and len((out / "results.jsonl").read_text().splitlines()) == 1


def _own_project(root: Path, web_server: str) -> Path:
    """A small Web-Bench-format project written here (not upstream's): a task list with no init row (task-1,
    task-2), specs that require @web-bench/test-util, an assets/ folder that the web server copies into the served
    folder before serving it (upstream's tailwind-style configs), src/ the reference and src-init/ the start."""
    p = root / "my-project"
    (p / "test").mkdir(parents=True)
    (p / "assets").mkdir()
    (p / "assets" / "mark.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
                                           '<rect width="40" height="20" fill="teal"/></svg>')
    (p / "tasks.yml").write_text("- id: task-1\n  level: easy\n  description: show a heading 'Hello' and the mark "
                                 "image assets/mark.svg\n- id: task-2\n  level: easy\n  description: add a button "
                                 "'Count' that counts its clicks into #n\n")
    (p / "package.json").write_text(json.dumps({"name": "@mine/p", "devDependencies": {"@playwright/test": "^1.56.1"}}))
    (p / "playwright.config.js").write_text(f"""const {{ defineConfig }} = require('@playwright/test')
const PROJECT_DIR = process.env.EVAL_PROJECT_ROOT || 'src'
const PORT = process.env.EVAL_PROJECT_PORT || 3299
module.exports = defineConfig({{
  testDir: './test', timeout: 10_000, expect: {{ timeout: 2_000 }}, fullyParallel: true,
  use: {{ baseURL: `http://127.0.0.1:${{PORT}}` }},
  webServer: {{ command: `{web_server}`, url: `http://127.0.0.1:${{PORT}}` }},
}})
""")
    head = "const { test, expect } = require('@playwright/test')\nconst { getOffset } = require('@web-bench/test-util')\n"
    (p / "test" / "init.spec.js").write_text(head + "test('a page', async ({ page }) => { await page.goto('/index.html');"
                                             " await expect(page.locator('body')).toBeAttached() })\n")
    (p / "test" / "task-1.spec.js").write_text(head + """test('heading and mark', async ({ page }) => {
  await page.goto('/index.html')
  await expect(page.locator('h1')).toHaveText('Hello')
  expect((await getOffset(page, 'h1')).width).toBeGreaterThan(0)
  await expect.poll(() => page.locator('img').evaluate((i) => i.naturalWidth)).toBe(40)
})
""")
    (p / "test" / "task-2.spec.js").write_text(head + """test('counts', async ({ page }) => {
  await page.goto('/index.html')
  await page.click('button:text("Count")')
  await page.click('button:text("Count")')
  await expect(page.locator('#n')).toHaveText('2')
})
""")
    (p / "src").mkdir()
    (p / "src" / "index.html").write_text("<h1>Hello</h1><img src='assets/mark.svg'><button onclick=\"n.textContent="
                                          "+n.textContent+1\">Count</button><span id=n>0</span>")
    (p / "src-init").mkdir()
    (p / "src-init" / "index.html").write_text("<p>start</p>")
    return p


@pytest.mark.slow
def test_any_upstream_format_runs_unchanged_wherever_its_folder_is(tmp_path):
    """A project outside the data folder (no _lib/ above it: the runner's own @web-bench/test-util serves), whose
    task list has no init row (tasks are read by id) and whose web server copies assets/ first (the scratch copy
    holds all the project does but its src/); a runner that executes no test is an error, never 0/0."""
    project = _own_project(tmp_path, "cp -r assets ${PROJECT_DIR} && npx serve ${PROJECT_DIR} -p ${PORT}")

    def check(files: Path, task: str) -> tuple[int, dict | None, str]:
        done = subprocess.run([sys.executable, "launch/web_bench.py", "check", "--project", str(project), "--files",
                               str(files), "--task", task, "--workers", "2"], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        lines = done.stdout.strip().splitlines()
        return done.returncode, json.loads(lines[-1]) if lines else None, done.stderr

    rc, ref, err = check(project / "src", "2")
    assert rc == 0 and ref["error"] is None and ref["passed"] == ref["total"] == 3, (ref, err)  # init, task-1, task-2
    rc, start, _ = check(project / "src-init", "task-1")
    assert rc == 0 and start["passed"] == 1 and start["failed"] == 1, start  # init passes, task-1 does not yet
    assert "heading and mark" in start["failures"][0]["title"]
    rc, _, err = check(project / "src", "3")
    assert rc == 2 and "has no task 3" in err and "task-1 .. task-2" in err, err
    p = Project(project)
    assert p.task(1)["description"].startswith("show a heading") and p.last_task == 2 and 0 not in p.by_index
    assert p.workspace["@web-bench/test-util"].endswith("critic_service/node/packages/test-util")

    broken = _own_project(tmp_path / "b", "exit 1")  # a web server that cannot start: no test runs
    report = official_check(Project(broken), broken / "src", 2, workers=1)
    assert report.error is not None and "executed no test" in report.error and report.total == 0, report
    assert "webServer" in report.error, report.error  # the runner's own message
