"""CLI: `python -m render_farm render FILE... --out DIR` and `python -m render_farm bench`."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys

from .config import RenderConfig
from .result import RenderRequest


def _viewport(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)[xX](\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"--viewport must look like 1280x720, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _shots(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shots must be seconds separated by commas (0,1,2), got {text!r}")


def _render(args) -> int:
    missing = [f for f in args.files if not os.path.isfile(f)]
    if missing:
        print(f"render_farm: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    cfg = RenderConfig(deadline_s=args.timeout, viewport_width=args.viewport[0], viewport_height=args.viewport[1],
                       shot_times=args.shots, workers=args.workers, concurrency=args.concurrency, clock=args.clock)
    try:
        cfg.validate()
    except ValueError as e:
        print(f"render_farm: {e}", file=sys.stderr)
        return 2
    requests = [RenderRequest(open(f, encoding="utf-8", errors="replace").read()) for f in args.files]
    if cfg.workers > 1:
        import ray

        from .farm import RenderFarm
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
        results = RenderFarm(cfg).render_batch(requests)
    else:
        from .renderer import Renderer

        async def go():
            async with Renderer(cfg) as r:
                return await r.render_many(requests)
        results = asyncio.run(go())
    os.makedirs(args.out, exist_ok=True)
    for k, (path, res) in enumerate(zip(args.files, results)):
        name = f"{k:03d}-" + re.sub(r"[^A-Za-z0-9.-]+", "_", "_".join(os.path.abspath(path).split(os.sep)[-3:]))
        shots = []
        for t, png in zip(res.shot_times, res.screenshots):
            shots.append(os.path.join(args.out, f"{name}-t{t:g}.png"))
            with open(shots[-1], "wb") as f:
                f.write(png)
        print(json.dumps({"page": path, "valid": res.valid, "reason": res.reason, "detail": res.detail,
                          "shots": shots, "console_errors": res.console_errors, "page_errors": res.page_errors,
                          "blocked_requests": res.blocked_requests, "render_ms": res.timings_ms.get("total")}))
    print(f"render_farm: {len(results)} pages, screenshots in {os.path.abspath(args.out)}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m render_farm", description="Sandboxed headless-Chromium render farm")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="render HTML files to screenshots, one JSON line per page")
    r.add_argument("files", nargs="+", metavar="FILE")
    r.add_argument("--out", required=True, help="folder for the screenshots")
    r.add_argument("--timeout", type=float, default=RenderConfig.deadline_s, help="deadline per page, seconds")
    r.add_argument("--viewport", type=_viewport, default=(1280, 720), help="WxH, default 1280x720")
    r.add_argument("--shots", type=_shots, default=[0.0, 1.0, 2.0], help="seconds after load, default 0,1,2")
    r.add_argument("--workers", type=int, default=1, help="renderers; more than 1 starts a local Ray pool")
    r.add_argument("--concurrency", type=int, default=RenderConfig.concurrency, help="pages at once per renderer")
    r.add_argument("--clock", choices=["virtual", "real"], default="virtual", help="page time: virtual or wall-clock")
    b = sub.add_parser("bench", help="farm vs ArtifactsBench-style baseline vs warm-page floor; prints JSON")
    b.add_argument("--pages", type=int, default=12)
    b.add_argument("--concurrency", type=int, default=None)
    args = ap.parse_args(argv)
    if args.cmd == "render":
        return _render(args)
    from . import bench
    print(json.dumps(bench.run(args.pages, args.concurrency)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
