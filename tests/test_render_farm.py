"""The render farm on a real Chromium: reference pages, blank pages, temporal shots, the sandbox, crashes, the pool."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from render_farm.config import RenderConfig
from render_farm.renderer import Renderer
from render_farm.result import RenderRequest

from .conftest import ROOT, run

MOVING = ("<html><body style='margin:0;background:#fff'><div style='position:absolute;width:60px;height:60px;"
          "background:#c22;animation:m 2s linear forwards'></div><style>@keyframes m{from{left:0}to{left:600px}}"
          "</style></body></html>")


async def render_all(pages, **cfg):
    async with Renderer(RenderConfig(**{"cache_mb": 0, **cfg})) as r:
        return await r.render_many(pages)


def test_web_bench_reference_pages_are_valid_and_blank_starts_are_blank(data_dir):
    """The single-file Web-Bench projects (src/ holds one index.html; the multi-file ones need their files served
    together): their reference pages render valid, the empty starting pages blank."""
    refs = sorted(p for p in (data_dir / "web-bench").glob("*/src/index.html")
                  if [f.name for f in p.parent.iterdir()] == ["index.html"])
    assert {"calculator", "flex", "float", "grid"} <= {p.parent.parent.name for p in refs}
    starts = [data_dir / "web-bench" / p / "src-init" / "index.html" for p in ("flex", "float", "grid")]
    results = run(render_all([p.read_text() for p in refs + starts]))
    for path, res in zip(refs, results[:len(refs)]):
        assert res.valid and res.reason is None, (path, res.detail)
        assert len(res.screenshots) == 3 and all(s.startswith(b"\x89PNG") for s in res.screenshots)
        assert res.dom["counts"]["elements"] > 5 and res.dom["colors"]["body_bg"].startswith("rgb")
    for path, res in zip(starts, results[len(refs):]):
        assert (res.valid, res.reason) == (False, "blank"), path
    calc = results[[p.parent.parent.name for p in refs].index("calculator")]
    assert calc.dom["counts"]["buttons"] >= 16


@pytest.mark.parametrize("html", [
    "<html><body></body></html>",
    "<html><body style='background:#123456'><div style='height:500px'></div></body></html>",
    "<html><body style='background:#fff;color:#fff'><h1>white on white</h1><p>invisible text</p></body></html>",
    "",
])
def test_uniform_pages_are_blank(html):
    (res,) = run(render_all([html]))
    assert (res.valid, res.reason) == (False, "blank")


def test_small_content_is_not_blank():
    (res,) = run(render_all(["<html><body><p style='font-size:12px'>ok</p></body></html>"]))
    assert res.valid, res.detail


def test_animation_moves_between_shots_and_renders_are_deterministic():
    clock = ("<html><body><h1 id=t></h1><script>let n=0;setInterval(()=>{document.getElementById('t').textContent="
             "n++ +' '+Math.random()+' '+Date.now()},100)</script></body></html>")
    a, b, c, d = run(render_all([MOVING, MOVING + " ", clock, clock + " "]))
    assert a.valid and a.screenshots[0] != a.screenshots[-1]
    assert a.screenshots == b.screenshots  # same page twice: identical pixels
    assert c.screenshots == d.screenshots and len(set(c.screenshots)) == 3
    # Virtual time: the shots span two seconds of page time (0, 1, 2 s), which waiting in wall time could not beat;
    # typically ~1 s here, 1.6 s once under CI's load.
    assert a.timings_ms["shots"] < 2000


def test_too_large_is_rejected_before_any_page_opens():
    async def go():
        async with Renderer(RenderConfig(max_html_bytes=1000)) as r:
            res = await r.render("<p>" + "x" * 2000 + "</p>")
            return res, r.counters["shots_taken"]
    res, shots = run(go())
    assert (res.valid, res.reason, shots) == (False, "too_large", 0)


def test_dedup_cache_serves_identical_requests():
    async def go():
        async with Renderer(RenderConfig(cache_mb=16)) as r:
            first = await r.render(MOVING)
            again = await r.render(RenderRequest(MOVING))
            other = await r.render(RenderRequest(MOVING, viewport=(800, 600)))
            return first, again, other
    first, again, other = run(go())
    assert not first.cached and again.cached and not other.cached
    assert again.screenshots == first.screenshots


class _Listener:
    """A loopback TCP server that only counts connections: any route to it (HTTP, WS, preconnect) shows up."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()


HOSTILE = """<html><head>
<link rel=prefetch href="http://127.0.0.1:PORT/prefetch"><link rel=preconnect href="http://127.0.0.1:PORT">
<link rel=dns-prefetch href="http://localhost:PORT"><link rel=stylesheet href="http://127.0.0.1:PORT/a.css">
<link rel=preload as=image href="http://localhost:PORT/preload.png">
<script type=speculationrules>{"prefetch":[{"source":"list","urls":["http://127.0.0.1:PORT/spec"]}]}</script>
<style>@import url(http://127.0.0.1:PORT/import.css);@font-face{font-family:x;src:url(http://127.0.0.1:PORT/f.woff)}
body{background:url(http://127.0.0.1:PORT/bg.png);font-family:x}</style></head>
<body><h1>hostile page</h1><img src="http://127.0.0.1:PORT/img.png"><iframe src="http://127.0.0.1:PORT/frame"></iframe>
<video src="http://127.0.0.1:PORT/v.mp4" autoplay></video><script src="http://127.0.0.1:PORT/s.js"></script>
<a id=dl href="http://127.0.0.1:PORT/file.zip" download>download</a>
<script>
const U='http://127.0.0.1:PORT';
fetch(U+'/fetch').catch(()=>{}); fetch('http://localhost:PORT/fetch2',{mode:'no-cors',keepalive:true}).catch(()=>{});
const x=new XMLHttpRequest(); x.open('GET',U+'/xhr'); x.send();
navigator.sendBeacon(U+'/beacon','x');
try{new WebSocket('ws://127.0.0.1:PORT/ws')}catch(e){}
try{new EventSource(U+'/sse')}catch(e){}
new Worker(URL.createObjectURL(new Blob(["fetch('"+U+"/worker').catch(()=>{})"],{type:'text/javascript'})));
navigator.serviceWorker && navigator.serviceWorker.register(U+'/sw.js').catch(()=>{});
window.open(U+'/popup'); alert('hi'); confirm('sure?');
document.getElementById('dl').click();
</script></body></html>"""

NAVIGATING = [
    '<html><head><meta http-equiv="refresh" content="0;url=http://127.0.0.1:PORT/refresh"></head><body>x</body></html>',
    "<html><body>x<script>setTimeout(()=>{location.href='http://127.0.0.1:PORT/nav'},100)</script></body></html>",
    "<html><body>x<form id=f action='http://127.0.0.1:PORT/form' method=post><input name=a value=b></form>"
    "<script>document.getElementById('f').submit()</script></body></html>",
]


COPIES = 6


def test_sandbox_blocks_every_route_to_the_network():
    server = _Listener()
    try:
        # several copies of the hostile page: its load event used to be skipped on ~1 render in 10 (a download clicked
        # while it parsed) and the render waited out its deadline; with six the old code failed 3 runs of 4
        pages = [HOSTILE.replace("PORT", str(server.port))] * COPIES
        pages += [p.replace("PORT", str(server.port)) for p in NAVIGATING]
        # the sandbox is what is tested, not speed: a loaded CI machine once took > 10 s for the hostile page
        results = run(render_all(pages + [MOVING], deadline_s=30.0))
        time.sleep(0.5)  # anything that slipped through would have connected by now
        assert server.connections == 0
    finally:
        server.close()
    hostiles, navigating, after = results[:COPIES], results[COPIES:-1], results[-1]
    for hostile in hostiles:
        assert hostile.valid, hostile.detail  # the page itself still renders (its heading)
        assert "hostile page" in hostile.dom["text"]
        assert hostile.blocked_requests >= 5
    for res in navigating:  # navigations are refused: the page stays and renders its own content
        assert res.valid and res.dom["text"].startswith("x") and res.blocked_requests >= 1, res.detail
    assert after.valid


def test_file_reads_never_reach_the_result(tmp_path):
    secret = tmp_path / "secret.txt"
    token = "TOKEN-" + os.urandom(8).hex()
    secret.write_text(token)
    url = secret.as_uri()
    page = f"""<html><body><h1>reader</h1><pre id=o></pre><iframe src="{url}"></iframe><object data="{url}"></object>
<img src="{url}"><link rel=stylesheet href="{url}"><script>
const o=document.getElementById('o');
fetch('{url}').then(r=>r.text()).then(t=>o.textContent+=t).catch(e=>console.error('fetch failed '+e));
const x=new XMLHttpRequest();try{{x.open('GET','{url}',false);x.send();o.textContent+=x.responseText}}catch(e){{}}
setTimeout(()=>{{try{{o.textContent+=frames[0].document.body.innerText}}catch(e){{}}}},50);
</script></body></html>"""
    (res,) = run(render_all([page]))
    assert res.valid
    dump = json.dumps(res.to_json()) + "".join(res.console_errors + res.page_errors)
    assert token not in dump


def test_loops_and_memory_bombs_end_and_the_farm_keeps_serving():
    loop = "<html><body><h1>x</h1><script>while(true){}</script></body></html>"
    timer_loop = "<html><body><h1>x</h1><script>setTimeout(()=>{for(;;){}},500)</script></body></html>"
    bomb = "<html><body><h1>x</h1><script>let a=[];for(;;){a.push(new Array(1e6).fill(1.5))}</script></body></html>"

    async def go():
        async with Renderer(RenderConfig(cache_mb=0, deadline_s=3)) as r:
            out = []
            for html in (loop, MOVING, timer_loop, MOVING, bomb, MOVING):
                t = time.perf_counter()
                res = await r.render(html)
                out.append((res, time.perf_counter() - t))
            return out
    (l, _), (a1, _), (tl, _), (a2, _), (b, tb), (a3, _) = run(go())
    assert l.reason == "timeout" and tl.reason == "timeout"
    assert b.reason == "crash" and tb < 3
    assert a1.valid and a2.valid and a3.valid


SPINNERS = ["<html><body><h1>x</h1><script>while(true){}</script></body></html>",
            "<html><body><h1>x</h1><script>for(;;){alert(1)}</script></body></html>",
            "<html><body><h1>x</h1><script>let a=[];for(;;){a.push(new Array(1e6).fill(1.5))}</script></body></html>",
            "<html><body><h1>x</h1><script>setTimeout(()=>{for(;;){}},10)</script></body></html>"]


@pytest.mark.parametrize("queue_timeout_s", [60.0, 1.0])
def test_a_healthy_page_behind_spinning_ones_is_valid_or_unscorable_never_invalid(queue_timeout_s):
    """Four spinning pages (more than the 3 slots) and a healthy one in one batch, a 5 s deadline. The page's deadline
    counts from its page being opened, so the healthy page either renders (it waited for a slot, and says how long)
    or, when the wait for a slot outlasts render.queue_timeout_s, comes back "busy": unscorable, never invalid."""
    async def go():
        async with Renderer(RenderConfig(cache_mb=0, deadline_s=5, queue_timeout_s=queue_timeout_s)) as r:
            async def timed(html):
                t = time.perf_counter()
                res = await r.render(html)
                return res, time.perf_counter() - t
            return await asyncio.gather(*(timed(h) for h in SPINNERS + [MOVING]))
    results = run(go())
    for res, took in results:  # its own deadline after its wait for a slot, and that wait within its bound
        assert took <= min(res.timings_ms.get("queue", 0) / 1e3, queue_timeout_s + 0.5) + 5 + 1.5, (res.reason, took)
    assert all(not res.valid and res.reason in ("timeout", "crash", "busy") for res, _ in results[:4])
    healthy, _ = results[-1]
    assert healthy.valid or healthy.unscorable, (healthy.reason, healthy.detail)
    if queue_timeout_s == 60.0:  # room to wait: it renders, after waiting for one of the spinners' slots
        assert healthy.valid and healthy.timings_ms["queue"] > 1000, healthy.timings_ms
    else:  # 1 s is less than a spinner's 5 s: no slot came free, and it says so
        assert healthy.reason == "busy" and "queue_timeout_s" in healthy.detail, healthy.detail


def test_state_does_not_leak_between_pages():
    writer = "<html><body><h1>w</h1><script>window.leak=42;document.cookie='a=1';setInterval(()=>{document.title='x'},10)</script></body></html>"
    reader = "<html><body><h1 id=o></h1><script>document.getElementById('o').textContent='leak:'+(typeof leak)</script></body></html>"

    async def go():
        async with Renderer(RenderConfig(cache_mb=0, concurrency=1)) as r:
            return await r.render(writer), await r.render(reader)
    w, rd = run(go())
    assert w.valid and rd.valid and "leak:undefined" in rd.dom["text"] and rd.dom["title"] == ""


def test_killing_chromium_mid_render_gives_crash_then_recovers():
    async def go():
        async with Renderer(RenderConfig(cache_mb=0, deadline_s=20)) as r:
            await r.start()
            pid = r.browser_pid
            task = asyncio.ensure_future(r.render("<html><body><h1>x</h1><script>while(true){}</script></body></html>"))
            await asyncio.sleep(1.0)
            os.kill(pid, signal.SIGKILL)
            t = time.perf_counter()
            crashed = await task
            waited = time.perf_counter() - t
            after = await r.render(MOVING)
            return crashed, waited, after, r.counters["relaunches"], r.browser_pid != pid
    crashed, waited, after, relaunches, new_pid = run(go())
    assert crashed.reason == "crash" and waited < 5
    assert after.valid and relaunches == 1 and new_pid


def test_ray_pool_renders_a_batch_across_workers(data_dir):
    ray = pytest.importorskip("ray")
    from render_farm.farm import RenderFarm
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        farm = RenderFarm(RenderConfig(workers=2, cache_mb=0))
        pages = [MOVING + f"<!-- {i} -->" for i in range(8)]
        results = farm.render_batch(pages)
        assert all(r.valid for r in results)
        assert [s["pages"] > 0 for s in farm.stats()] == [True, True]
    finally:
        ray.shutdown()


def test_cli_writes_shots_and_json_lines(tmp_path, data_dir):
    page = data_dir / "web-bench" / "grid" / "src" / "index.html"
    blank = data_dir / "web-bench" / "grid" / "src-init" / "index.html"
    out = tmp_path / "shots"
    proc = subprocess.run([sys.executable, "-m", "render_farm", "render", str(page), str(blank), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["valid"], r["reason"]) for r in rows] == [(True, None), (False, "blank")]
    assert all(os.path.isfile(p) for p in rows[0]["shots"]) and len(rows[0]["shots"]) == 3
    bad = subprocess.run([sys.executable, "-m", "render_farm", "render", "missing.html", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no such file" in bad.stderr
