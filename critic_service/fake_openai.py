"""A loopback OpenAI-compatible chat-completions server: the test double for an MLLM endpoint we cannot run here.

It speaks the real protocol (POST /v1/chat/completions, the `choices[0].message.content` reply) and records every
request, so tests can check what the critic sends. Replies come from a script: each entry is (status, content,
delay_s) or (status, content, delay_s, headers); the last entry repeats. Used by tests and `python -m critic_service bench`, never by the main job.
"""
from __future__ import annotations

import asyncio
import json

from aiohttp import web


class FakeOpenAI:
    def __init__(self, script: list[tuple] | None = None):
        self.script = list(script or [(200, '{"score": 80, "feedback": "Looks right."}', 0.0)])
        self.requests: list[dict] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        status, content, delay, *headers = self.script[min(len(self.requests) - 1, len(self.script) - 1)]
        if delay:
            await asyncio.sleep(delay)
        if status != 200:
            return web.json_response({"error": {"message": content, "code": status}}, status=status,
                                     headers=headers[0] if headers else None)
        return web.json_response({
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "model": body.get("model", ""),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": len(json.dumps(body)) // 4, "completion_tokens": len(content) // 4}})

    async def start(self) -> str:
        app = web.Application(client_max_size=256 * 2**20)
        app.router.add_post("/v1/chat/completions", self._chat)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
        return self.url

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()
