"""The independent judge (critic_service/probes.py): executable checks on the live page in its own Chromium."""
import time

from critic_service.probes import ProbeJudge, judge_all, wanted_probes
from launch.tasks import load

from . import critic_pages as pages
from .conftest import ROOT, run

TASKS = [pages.task("landing page for a bakery", "an image gallery", "a contact form"),
         pages.task("weather dashboard", "a bar chart", "a data table", "alice blue", "steel blue"),
         pages.task("music player page", "a navigation bar", "a search box", "lavender", "indigo")]


def test_the_judge_passes_pages_that_work_and_fails_their_twins():
    """Each real page passes every probe its task implies; no twin passes a probe of a part it only names or hides."""
    rows, names = [], []
    for i, task in enumerate(TASKS):
        for name, html in {"real": pages.real_page(task), **pages.twins(task, TASKS[(i + 1) % 3])}.items():
            rows.append((task, [], html))
            names.append(name)
    verdicts = run(judge_all(rows))
    for (task, _, _), name, v in zip(rows, names, verdicts):
        parts = {k: x for k, x in v["checks"].items() if k not in ("subject", "background_colour", "components_colour")}
        if name == "real":
            assert v["score"] == 100, (task, v)
        else:
            assert v["score"] <= 60, (task, name, v)
        if name in ("near_empty", "keyword_stuffed", "hidden_text", "colour_bands"):
            assert not any(parts.values()), (task, name, v)  # parts named or hidden are not parts


def test_interactions_are_real_a_form_that_takes_no_typing_fails():
    task = TASKS[0]
    html = pages.real_page(task)
    readonly = html.replace("<input", "<input readonly").replace("<textarea", "<textarea readonly")

    async def go():
        async with ProbeJudge(timeout_s=5) as judge:
            return await judge(task, [], html), await judge(task, [], readonly)
    good, bad = run(go())
    assert good["checks"]["form"] == 1 and bad["checks"]["form"] == 0, (good, bad)


def test_a_hostile_page_costs_at_most_the_timeout_and_scores_nothing():
    async def go():
        async with ProbeJudge(timeout_s=3) as judge:
            t = time.perf_counter()
            spin = await judge(TASKS[0], [], "<h1>Bakery</h1><script>for(;;){}</script>")
            took = time.perf_counter() - t
            return spin, took, await judge(TASKS[0], [], None)
    spin, took, absent = run(go())
    assert took < 3 + 3 and spin["score"] == 0, (took, spin)
    assert absent["score"] == 0 and set(absent["checks"]) == set(wanted_probes(TASKS[0], []))


def test_the_independent_tasks_are_another_distribution_with_probes_to_run():
    tasks = load("webgen", str(ROOT / "data" / "independent" / "tasks.jsonl"))
    procedural = {t["prompt"] for t in load("procedural")}
    assert len(tasks) == 10 and not procedural & {t["prompt"] for t in tasks}
    for t in tasks:
        probes = wanted_probes(t["prompt"], t["checklist"])
        assert len(probes) >= 5 and {"background_colour", "components_colour", "form"} <= set(probes), (t["id"], probes)
