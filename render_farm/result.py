"""The render farm's records: what is asked (RenderRequest) and what comes back (RenderResult)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

# Why a render is invalid; the reward of an invalid render is exactly 0.
REASONS = (None, "too_large", "blank", "timeout", "crash", "load_error", "busy")
# Why a render says nothing about the page: the farm ran out of time before the page was opened (no slot came free,
# no page could be opened). Such a page is unscorable (left out of its group's baseline), never an invalid zero.
NOT_THE_PAGE = ("busy",)


@dataclass
class RenderRequest:
    html: str
    viewport: tuple[int, int] | None = None  # (width, height); None = the renderer's default
    shot_times: tuple[float, ...] | None = None  # seconds after load; None = the renderer's default
    deadline_s: float | None = None  # None = the renderer's default
    files: dict[str, str] | None = None  # a multi-file page: its other files ({path: text}), served with html as index.html

    @property
    def nbytes(self) -> int:
        return sum(len(t.encode("utf-8", "surrogatepass")) for t in [self.html, *(self.files or {}).values()])

    def key(self, viewport: tuple[int, int], shot_times: tuple[float, ...], clock: str) -> str:
        """Dedup-cache key: identical page, viewport, schedule and clock give an identical render."""
        h = hashlib.sha256(self.html.encode("utf-8", "surrogatepass"))
        h.update(json.dumps([list(viewport), list(shot_times), clock, sorted((self.files or {}).items())]).encode())
        return h.hexdigest()


@dataclass
class RenderResult:
    valid: bool
    reason: str | None  # one of REASONS
    screenshots: list[bytes] = field(default_factory=list)  # PNG, one per shot time
    shot_times: list[float] = field(default_factory=list)  # seconds after load, aligned with screenshots
    dom: dict = field(default_factory=dict)  # title, text, counts, colours (see dom_summary.js)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    blocked_requests: int = 0  # network attempts the sandbox refused
    blank_fraction: list[float] = field(default_factory=list)  # per shot: fraction of non-dominant pixels
    timings_ms: dict = field(default_factory=dict)  # queue (a slot and a page: the farm's time), load, shots, total
    cached: bool = False  # served from the dedup cache
    detail: str | None = None  # human-readable cause of an invalid render

    @property
    def unscorable(self) -> bool:
        return self.reason in NOT_THE_PAGE

    @property
    def nbytes(self) -> int:
        return sum(len(s) for s in self.screenshots) + len(json.dumps(self.dom))

    def to_json(self, shots: list[str] | None = None) -> dict:
        """JSON-safe dict; screenshots become the given paths (or are dropped)."""
        d = asdict(self)
        d.pop("screenshots")
        d["shots"] = shots or []
        return d
