"""Web-Bench's own Playwright specs as a judge: which of a task's end-to-end tests a set of files passes.

Two ways to run the same spec files, giving the same verdicts (tests/test_web_bench.py checks that):
- `official_check`: the benchmark's protocol. The official `@playwright/test` runner with the project's own
  playwright.config.js (its `webServer` command, timeouts and browser settings), in a scratch copy of the project
  with the files under `src/`; only Debian's Chromium (executablePath) and a free port are overridden. For
  evaluation and `launch/web_bench.py check`.
- `SpecServer`: one long-lived Node process (node/spec_server.js) on one warm Chromium, check after check, for the
  training loop: no runner start, no web-server start, pages and contexts reused between tests.
Node packages come from node/ (package-lock.json, installed by scripts/setup.sh); the packages a project's
package.json declares beyond them are installed next to them on first use.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from render_farm.chromium import find as find_chromium

from .process import _die_with_parent

NODE_DIR = Path(__file__).resolve().parent / "node"
# The official runner drives Chromium's headless shell, Playwright's own headless browser (what upstream's `npx
# playwright test` runs), which Debian ships: twice as fast as the full browser in headless mode here, and bom's
# timing-bound specs (a 100 ms reading timer, a popup's URL read at once) pass on it where the full browser misses
# them. The spec server keeps the full browser: it reuses one browser for many checks, and the shell's emulated
# fullscreen does not survive that (bom task-19). RELOOK_CHROMIUM overrides both.
HEADLESS_SHELL = "/usr/lib/chromium/chromium-headless-shell"
CHROMIUM = find_chromium(missing_ok=True)  # render_farm/chromium.py: RELOOK_CHROMIUM first
OFFICIAL_CHROMIUM = os.environ.get("RELOOK_CHROMIUM") or (HEADLESS_SHELL if os.path.exists(HEADLESS_SHELL) else CHROMIUM)
RUNNER_PACKAGES = ("@web-bench/test-util",)  # shipped in node/packages (Apache-2.0, its licence beside it)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_WRAPPER = """// written by ReLook: the project's own config (CommonJS or ES module); only the browser executable is this machine's,
// and its web server command runs under tether.js, which stops it if this runner is killed before it can
import base from './playwright.config.js'
const patch = (use) => ({ ...(use || {}), launchOptions: { ...((use || {}).launchOptions || {}),
  executablePath: process.env.RELOOK_CHROMIUM } })
const quote = (s) => `'${s.replace(/'/g, `'\\''`)}'`
const tie = (w) => (w && w.command ? { ...w, env: { ...(w.env || {}), RELOOK_TETHERED: w.command },
  command: `${quote(process.execPath)} ${quote(process.env.RELOOK_TETHER)} ${process.pid}` } : w)
const webServer = Array.isArray(base.webServer) ? base.webServer.map(tie) : tie(base.webServer)
export default { ...base, ...(webServer ? { webServer } : {}), use: patch(base.use),
  projects: (base.projects || [{}]).map((p) => ({ ...p, use: patch(p.use) })) }
"""


@dataclass
class SpecReport:
    project: str
    task: int  # the specs judged: init (0) up to task-N, or task-N alone for a training check
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    total: int = 0
    failures: list[dict] = field(default_factory=list)  # {spec, title, error}
    seconds: float = 0.0
    error: str | None = None  # the runner itself failed (no verdict): counted as all failed

    @property
    def ok(self) -> bool:
        return self.error is None and self.total > 0 and self.failed == 0

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total and self.error is None else 0.0

    def to_json(self) -> dict:
        return asdict(self)

    def feedback(self, limit: int = 3) -> str:
        """The failing assertions, as the next revision reads them."""
        if self.error:
            return f"The tests could not run: {self.error[:300]}"
        if not self.failures:
            return f"All {self.total} tests pass."
        lines = [f"{self.failed} of {self.total} tests fail:"]
        for f in self.failures[:limit]:
            lines.append(f"- {f['title']}: {f['error'].strip().splitlines()[0][:200] if f['error'].strip() else ''}")
        return "\n".join(lines)


class Project:
    """One Web-Bench project folder: tasks, specs, config and declared packages."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder).resolve()
        if not (self.dir / "playwright.config.js").is_file() or not (self.dir / "test").is_dir():
            raise FileNotFoundError(f"{self.dir} is not a Web-Bench project (no playwright.config.js and test/)")
        self.name = self.dir.name
        self.tasks = self._tasks()  # in file order
        # By id, as upstream's evaluator reads them: "init" is 0, "task-N" is N (some lists have no init row)
        self.by_index = {self._index(r["id"]): r for r in self.tasks}
        self.last_task = max(self.by_index)
        self.package = json.loads((self.dir / "package.json").read_text()) if (self.dir / "package.json").is_file() else {}

    def _tasks(self) -> list[dict]:
        if (self.dir / "tasks.jsonl").is_file():
            rows = [json.loads(line) for line in (self.dir / "tasks.jsonl").read_text().splitlines() if line.strip()]
        elif (self.dir / "tasks.yml").is_file():
            rows = yaml.safe_load((self.dir / "tasks.yml").read_text())
        else:
            raise FileNotFoundError(f"{self.dir}: no tasks.jsonl or tasks.yml")
        for r in rows:
            if "id" not in r or "description" not in r:
                raise ValueError(f"{self.dir}: every task needs 'id' and 'description', got {sorted(r)}")
        return rows

    def _index(self, task_id) -> int:
        tid = str(task_id)
        if tid == "init":
            return 0
        if re.fullmatch(r"task-[1-9][0-9]*", tid):
            return int(tid[5:])
        raise ValueError(f"{self.dir}: task id {tid!r} is neither 'init' nor 'task-N'")

    def task(self, n: int) -> dict:
        """The task row of index n (0 = init, N = task-N)."""
        if n not in self.by_index:
            have = sorted(self.by_index)
            raise ValueError(f"{self.name} has no task {n} ({'init' if n == 0 else f'task-{n}'}): its tasks are "
                             f"{'init, ' if 0 in have else ''}task-{min(i for i in have if i)} .. task-{have[-1]}")
        return self.by_index[n]

    def spec(self, task: int) -> str:
        """The spec file of task index `task` (0 = init), relative to the project."""
        return "test/init.spec.js" if task == 0 else f"test/task-{task}.spec.js"

    def specs_up_to(self, task: int) -> list[str]:
        """What upstream runs for task N: init.spec and task-1 ... task-N (those that exist)."""
        return [s for s in (self.spec(i) for i in range(task + 1)) if (self.dir / s).is_file()]

    @functools.cached_property
    def workspace(self) -> dict[str, str]:
        """Packages declared as `workspace:*`, by name: a `_lib/` folder above the project (the benchmark's checkout:
        the project's own) wins, then the runner's copy (node/packages: @web-bench/test-util); looked up once.
        The specs require @web-bench/test-util whether or not the project declares it."""
        wanted = {n for n, v in self._declared().items() if str(v).startswith("workspace:")} | set(RUNNER_PACKAGES)
        found = {}
        for folder in [p / "_lib" for p in self.dir.parents if (p / "_lib").is_dir()] + [NODE_DIR / "packages"]:
            for pkg in sorted(folder.glob("*/package.json")):
                name = json.loads(pkg.read_text()).get("name")
                if name in wanted and name not in found:
                    found[name] = str(pkg.parent)
        missing = wanted - set(found)
        if missing:
            raise FileNotFoundError(f"{self.dir}: workspace package(s) {sorted(missing)} not found in a _lib/ above it "
                                    f"nor among the spec runner's own ({NODE_DIR / 'packages'})")
        return found

    def _declared(self) -> dict[str, str]:
        return {**self.package.get("dependencies", {}), **self.package.get("devDependencies", {})}

    def extra_packages(self) -> dict[str, str]:
        """Declared npm packages the runner's own node_modules lacks (upstream, some specs require a colour lib)."""
        have = node_modules()
        return {n: v for n, v in self._declared().items()
                if not str(v).startswith("workspace:") and not (have / n / "package.json").is_file()}


@functools.lru_cache(maxsize=None)
def project_at(folder: str) -> Project:
    """The Project of a folder, read once per process (a training worker checks the same projects over and over)."""
    return Project(folder)


def node_modules() -> Path:
    nm = NODE_DIR / "node_modules"
    if not (nm / "@playwright" / "test").is_dir():
        raise FileNotFoundError(f"{nm} has no @playwright/test: run `bash scripts/setup.sh` (it installs the spec "
                                f"runner's Node packages from critic_service/node/package-lock.json)")
    return nm


def extra_modules(project: Project) -> list[str]:
    """node_modules folders holding what the project declares beyond the runner's packages (installed once)."""
    extra = project.extra_packages()
    if not extra:
        return []
    key = hashlib.sha256(json.dumps(sorted(extra.items())).encode()).hexdigest()[:12]
    prefix = NODE_DIR / "extra" / key
    if not (prefix / ".done").is_file():
        prefix.mkdir(parents=True, exist_ok=True)
        specs = [f"{n}@{v}" for n, v in sorted(extra.items())]
        done = subprocess.run(["npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(prefix), *specs],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{project.name} declares {specs}, which npm could not install: {done.stderr[-500:]}")
        (prefix / ".done").write_text("\n".join(specs))
    return [str(prefix / "node_modules")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _link_modules(dest: Path, project: Project) -> None:
    """dest/node_modules: the runner's packages (linked), the project's extra packages (linked) and its workspace
    packages (copied, so that what they require resolves from here)."""
    nm = dest / "node_modules"
    nm.mkdir()
    for source in [node_modules(), *map(Path, extra_modules(project))]:
        for entry in source.iterdir():
            if entry.name.startswith("@") and entry.is_dir():
                (nm / entry.name).mkdir(exist_ok=True)
                for sub in entry.iterdir():
                    if not (nm / entry.name / sub.name).exists():
                        (nm / entry.name / sub.name).symlink_to(sub)
            elif not (nm / entry.name).exists():
                (nm / entry.name).symlink_to(entry)
    for name, folder in project.workspace.items():
        shutil.copytree(folder, nm / name, symlinks=True)


def _walk(suite: dict, titles: list[str], out: SpecReport) -> None:
    for spec in suite.get("specs", []):
        for t in spec.get("tests", []):
            title = " › ".join([*titles, spec["title"]])
            status = t.get("status")  # expected / unexpected / flaky / skipped
            if status == "skipped":
                out.skipped += 1
            elif status in ("expected", "flaky"):
                out.passed += 1
            else:
                out.failed += 1
                errors = [e.get("message", "") for r in t.get("results", []) for e in r.get("errors", [])]
                out.failures.append({"spec": Path(spec.get("file", "")).name, "title": title,
                                     "error": _ANSI.sub("", "\n".join(errors))[:2000]})
    for child in suite.get("suites", []):
        _walk(child, [*titles, child["title"]], out)  # a describe block


def official_check(project: Project, files: str | Path, task: int, production: bool = True,
                   timeout_s: float = 1800, workers: int = 0) -> SpecReport:
    """Run init.spec ... task-N.spec of `project` on the files in folder `files` with the official runner. workers:
    its test workers, through the projects' own knob (MAX_TEST_WORKERS); 0 = the config's default (half the CPUs)."""
    t0 = time.perf_counter()
    report = SpecReport(project.name, task)
    with tempfile.TemporaryDirectory(prefix=f"relook-wb-{project.name}-") as tmp:
        work = _scratch(project, Path(tmp))
        shutil.copytree(files, work / "src")
        (work / "relook.config.mjs").write_text(_WRAPPER)
        _link_modules(work, project)
        env = {k: v for k, v in os.environ.items() if k not in ("CI", "IS_EVAL_PRODUCTION")}  # ours, not the benchmark's
        # the files' folder, absolute: configs serve it, and some specs import modules from it (esmodule)
        env.update(RELOOK_CHROMIUM=OFFICIAL_CHROMIUM, RELOOK_TETHER=str(NODE_DIR / "tether.js"), EVAL_PROJECT_ROOT=str(work / "src"), EVAL_PROJECT_PORT=str(_free_port()),
                   PLAYWRIGHT_JSON_OUTPUT_NAME=str(work / "report.json"),
                   PATH=f"{work / 'node_modules' / '.bin'}{os.pathsep}{env.get('PATH', '')}")
        if production:
            env["IS_EVAL_PRODUCTION"] = "1"
        if workers:
            env["MAX_TEST_WORKERS"] = str(workers)
        cmd = ["node", str(work / "node_modules" / "@playwright" / "test" / "cli.js"), "test", "-c", "relook.config.mjs",
               "--reporter=json", *project.specs_up_to(task)]
        # its own process group (the runner, Chromium), which dies with us: SIGTERM from the kernel if this process
        # dies (the runner then stops its web server and browser), the group killed on any error; the web server
        # (a group of its own, started detached by the runner) stops itself once the runner is gone (tether.js)
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, preexec_fn=_die_with_parent)
        try:
            out, err = proc.communicate(timeout=timeout_s)
            done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            report.error = f"the runner took over {timeout_s:g} s"
        finally:
            if proc.poll() is None or report.error:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if report.error is None:
            try:
                data = json.loads((work / "report.json").read_text())
                for suite in data.get("suites", []):
                    _walk(suite, [], report)
                if not report.passed + report.failed + report.skipped:  # no verdict: an error, never 0/0
                    said = "; ".join(e.get("message", "") for e in data.get("errors", [])) or \
                        (done.stderr or done.stdout)[-800:]
                    report.error = _ANSI.sub("", f"the runner executed no test (exit {done.returncode}): {said}")[:1000]
            except (OSError, json.JSONDecodeError):
                report.error = f"no report from the runner (exit {done.returncode}): {(done.stderr or done.stdout)[-800:]}"
    report.total = report.passed + report.failed + report.skipped
    report.seconds = round(time.perf_counter() - t0, 2)
    return report


class SpecServer:
    """`async with SpecServer() as s: report = await s.check(project, files, specs)`: many checks, one Node process
    and one Chromium, its contexts and web server warm from check to check. Checks run one at a time; inside a check
    `parallel` tests run at once (each in its own context) when the project declares them independent
    (fullyParallel), and outside production an assertion waits at most `wait_ms` (0: the config's own)."""

    def __init__(self, parallel: int = 1, wait_ms: int = 0):
        self.parallel, self.wait_ms = parallel, wait_ms
        self.proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._n = 0

    async def __aenter__(self) -> "SpecServer":
        node_modules()
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(NODE_DIR / "spec_server.js"), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "RELOOK_CHROMIUM": CHROMIUM}, limit=1 << 24, preexec_fn=_die_with_parent)
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)  # stdin closing (our exit) ends it
        if not line.startswith(b'{"ready"'):
            raise RuntimeError(f"the spec server did not start: {line[:300]!r}")
        return self

    async def __aexit__(self, *exc) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def _reply(self, n: int):
        return _read_reply(self.proc.stdout, n)

    async def check(self, project: Project, files: dict[str, str] | str | Path, specs: list[str], task: int,
                    production: bool = False, timeout_s: float = 300) -> SpecReport:
        """Judge a file set (a {path: text} dict or a folder) with the given spec files of `project`."""
        t0 = time.perf_counter()
        async with self._lock:
            self._n += 1
            with tempfile.TemporaryDirectory(prefix="relook-spec-") as tmp:
                # a scratch copy, as the official runner's: specs may look at ../src on disk (bom does)
                work = _scratch(project, Path(tmp))
                if isinstance(files, dict):
                    _write(files, work / "src")
                else:
                    shutil.copytree(files, work / "src")
                req = {"id": self._n, "project": str(work), "root": str(work / "src"), "specs": specs,
                       "production": production, "modules": project.workspace, "search": extra_modules(project),
                       "parallel": self.parallel, "wait_ms": self.wait_ms}
                self.proc.stdin.write((json.dumps(req) + "\n").encode())
                await self.proc.stdin.drain()
                reply = await asyncio.wait_for(self._reply(self._n), timeout_s)
        report = SpecReport(project.name, task, error=reply.get("error"))
        if report.error is None:
            for k in ("passed", "failed", "skipped", "total"):
                setattr(report, k, reply[k])
            report.failures = reply["failures"]
            if not report.total:
                report.error = f"no test was executed by {', '.join(specs)}"
        report.seconds = round(time.perf_counter() - t0, 2)
        return report


async def _read_reply(stdout, n: int) -> dict:
    while True:  # a line that is not this check's reply (a spec that wrote to stdout itself) is skipped
        line = await stdout.readline()
        if not line:
            raise RuntimeError("the spec server exited")
        try:
            reply = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(reply, dict) and reply.get("id") == n:
            return reply


def _scratch(project: Project, work: Path) -> Path:
    """What the project holds copied into `work`, but for its src/ (the files to judge go to work/src): its config,
    package.json and specs, and whatever its web server or specs name relative to it (an assets folder that the
    webServer command copies into the served folder first, fixtures)."""
    for entry in project.dir.iterdir():
        if entry.name in ("src", "node_modules", ".git"):  # the judged files go to work/src; Node packages are linked
            continue
        if entry.is_dir():
            shutil.copytree(entry, work / entry.name, symlinks=True)
        else:
            shutil.copy(entry, work / entry.name)
    return work


def _write(files: dict[str, str], root: Path) -> Path:
    for name, text in files.items():
        path = (root / name).resolve()
        if root.resolve() not in path.parents:  # a reply naming ../../x writes nothing outside its folder
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
