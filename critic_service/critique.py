"""The critic's records: what it is asked (CritiqueRequest) and what it answers (Critique).

An unscorable critique is not a zero: a zero is a reward, an unscorable sample is left out of its group's baseline.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import asdict, dataclass, field

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class BadRequest(ValueError):
    """A request the service refuses with a 4xx; the message names the field."""


@dataclass
class CritiqueRequest:
    task: str
    html: str = ""
    checklist: list[str] = field(default_factory=list)
    screenshots: list[bytes] = field(default_factory=list)  # PNG bytes, in shot order
    shot_times: list[float] = field(default_factory=list)  # seconds after load; default 0, 1, 2, ...
    dom: dict = field(default_factory=dict)  # the render farm's DOM summary, when the caller has one
    errors: list[str] = field(default_factory=list)  # console and page errors from the render
    answer: str = ""  # the model's whole reply, for judges that read it (ArtifactsBench's [answer]); "" = the page

    def key(self) -> str:
        """Cache key over everything the critic looks at."""
        h = hashlib.sha256(json.dumps([self.task, self.checklist, self.html, self.shot_times, self.answer]).encode())
        for png in self.screenshots:
            h.update(hashlib.sha256(png).digest())
        return h.hexdigest()

    def times(self) -> list[float]:
        return self.shot_times if len(self.shot_times) == len(self.screenshots) else list(range(len(self.screenshots)))

    def to_json(self) -> dict:
        return {"task": self.task, "checklist": self.checklist, "html": self.html,
                "screenshots": [base64.b64encode(s).decode() for s in self.screenshots],
                "shot_times": self.shot_times, "dom": self.dom, "errors": self.errors, "answer": self.answer}

    @classmethod
    def from_json(cls, body: object) -> "CritiqueRequest":
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        task = body.get("task")
        if not isinstance(task, str) or not task.strip():
            raise BadRequest("field 'task' is required: a non-empty string")
        html = body.get("html", "")
        if not isinstance(html, str):
            raise BadRequest("field 'html' must be a string")
        checklist = body.get("checklist") or []
        if not isinstance(checklist, list) or not all(isinstance(c, str) for c in checklist):
            raise BadRequest("field 'checklist' must be a list of strings")
        shots = body.get("screenshots") or []
        if not isinstance(shots, list):
            raise BadRequest("field 'screenshots' must be a list of base64 PNG strings")
        pngs = []
        for i, s in enumerate(shots):
            try:
                png = base64.b64decode(s, validate=True) if isinstance(s, str) else b""
            except (binascii.Error, ValueError):
                png = b""
            if not png.startswith(PNG_MAGIC):
                raise BadRequest(f"field 'screenshots[{i}]' is not a base64 PNG")
            pngs.append(png)
        times = body.get("shot_times") or []
        if not isinstance(times, list) or not all(isinstance(t, (int, float)) for t in times):
            raise BadRequest("field 'shot_times' must be a list of numbers")
        dom = body.get("dom") or {}
        if not isinstance(dom, dict):
            raise BadRequest("field 'dom' must be an object (the render farm's DOM summary)")
        errors = body.get("errors") or []
        if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
            raise BadRequest("field 'errors' must be a list of strings")
        answer = body.get("answer") or ""
        if not isinstance(answer, str):
            raise BadRequest("field 'answer' must be a string (the model's whole reply)")
        return cls(task, html, checklist, pngs, [float(t) for t in times], dom, errors, answer)


@dataclass
class Critique:
    score: float | None  # 0-100; None when unscorable
    feedback: str
    unscorable: bool = False
    reason: str | None = None  # why unscorable: timeout, backend_http_503, unparseable, transport, ...
    backend: str = ""
    cached: bool = False
    latency_ms: float = 0.0
    checks: dict = field(default_factory=dict)  # the critic's sub-scores on 0..1 (heuristic backend; empty for an MLLM)

    @classmethod
    def failed(cls, reason: str, backend: str, detail: str = "") -> "Critique":
        return cls(None, detail or f"the critic could not score this page ({reason})", True, reason, backend)

    def to_json(self) -> dict:
        return asdict(self)
