"""CLI: `python -m critic_service serve|critique|bench`."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from .config import CriticConfig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m critic_service", description="The ReLook critic service")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the HTTP service")
    c = sub.add_parser("critique", help="render a page and print what the critic says")
    for p in (s, c):
        p.add_argument("--backend", choices=["heuristic", "openai"], default="heuristic")
        p.add_argument("--openai-base-url", default=CriticConfig.openai_base_url)
        p.add_argument("--openai-model", default=CriticConfig.openai_model)
        p.add_argument("--timeout", type=float, default=CriticConfig.timeout_s, help="one backend call, seconds")
        p.add_argument("--retries", type=int, default=CriticConfig.retries)
    s.add_argument("--config-json", help="a whole CriticConfig as JSON (what launch/ hands over); other flags are ignored")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=CriticConfig.port)
    s.add_argument("--max-concurrency", type=int, default=CriticConfig.max_concurrency)
    c.add_argument("file", metavar="FILE.html")
    c.add_argument("--task", required=True)
    c.add_argument("--checklist-file", help="one checklist item per line")
    b = sub.add_parser("bench", help="overhead, in-flight capacity, heuristic throughput; prints JSON")
    b.add_argument("--requests", type=int, default=300)
    args = ap.parse_args(argv)

    if args.cmd == "bench":
        from . import bench
        print(json.dumps(bench.run(args.requests)))
        return 0
    cfg = CriticConfig(backend=args.backend, openai_base_url=args.openai_base_url, openai_model=args.openai_model,
                       timeout_s=args.timeout, retries=args.retries)
    if args.cmd == "serve":
        cfg.host, cfg.port, cfg.max_concurrency = args.host, args.port, args.max_concurrency
        try:
            if args.config_json:
                cfg = CriticConfig(**json.loads(args.config_json))
            cfg.validate()
        except (ValueError, TypeError) as e:  # TypeError: an unknown field in --config-json
            print(f"critic_service: {e}", file=sys.stderr)
            return 2
        from aiohttp import web

        from .service import CriticService
        print(f"critic_service: {cfg.backend} critic on http://{cfg.host}:{cfg.port}", file=sys.stderr)
        web.run_app(CriticService(cfg).app(), host=cfg.host, port=cfg.port, access_log=None, print=None)
        return 0
    return asyncio.run(_critique(cfg, args))


async def _critique(cfg: CriticConfig, args) -> int:
    from render_farm.renderer import Renderer

    from .critique import CritiqueRequest
    from .service import CriticService
    try:
        html = open(args.file, encoding="utf-8", errors="replace").read()
        checklist = [l.strip() for l in open(args.checklist_file)] if args.checklist_file else []
    except OSError as e:
        print(f"critic_service: {e}", file=sys.stderr)
        return 2
    async with Renderer() as r:
        render = await r.render(html)
    out = {"valid": render.valid, "reason": render.reason}
    if render.valid:  # an invalid render is scored 0 by the reward; the critic is never asked
        req = CritiqueRequest(args.task, html, [c for c in checklist if c], render.screenshots, render.shot_times,
                              render.dom, render.console_errors + render.page_errors)
        out.update((await CriticService(cfg).critique(req)).to_json())
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
