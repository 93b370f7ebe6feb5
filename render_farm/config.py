"""Render farm configuration: one typed dataclass, a one-line doc per field (hydra structured config)."""
from __future__ import annotations

from dataclasses import dataclass, field

from common.checks import check

CLOCKS = ("virtual", "real")


@dataclass
class RenderConfig:
    chromium_path: str = ""  # "" = found (render_farm/chromium.py: $RELOOK_CHROMIUM, Playwright's browser, PATH, /usr/bin/chromium)
    workers: int = 1  # renderer actors in the Ray pool (each owns one Chromium)
    concurrency: int = 3  # pages rendered at once by one renderer (3 saturates 2 cores)
    viewport_width: int = 1280  # default viewport width in CSS pixels
    viewport_height: int = 720  # default viewport height in CSS pixels
    shot_times: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0])  # seconds after load (ReLook/ArtifactsBench)
    deadline_s: float = 10.0  # wall-clock budget for one page, from its page being opened to its last screenshot
    queue_timeout_s: float = 60.0  # the longest a page waits for a render slot and a fresh page; past it the render is "busy" (unscorable, not the page's fault)
    clock: str = "virtual"  # "virtual": CDP virtual time, no waiting; "real": wait in wall-clock time
    max_html_bytes: int = 2_000_000  # larger HTML is invalid "too_large" before any page opens
    blank_threshold: float = 0.0  # a shot is blank when at most this fraction of pixels differ from its dominant colour (truly blank pages measure exactly 0)
    js_heap_mb: int = 512  # V8 old-space cap per renderer process: memory bombs crash fast instead of swapping
    pages_per_context: int = 64  # a render slot (context + page + process) is recycled after this many pages
    cache_mb: int = 256  # dedup cache of results, bounded by screenshot bytes; 0 disables
    max_text_chars: int = 2000  # visible text kept in the DOM summary
    skip_static_shots: bool = True  # reuse the previous screenshot when nothing on the page could have changed

    def validate(self) -> "RenderConfig":
        checks = [
            ("clock", self.clock in CLOCKS, f"one of {list(CLOCKS)}"),
            ("workers", self.workers >= 1, "an integer >= 1"),
            ("concurrency", self.concurrency >= 1, "an integer >= 1"),
            ("viewport_width", 16 <= self.viewport_width <= 7680, "16..7680"),
            ("viewport_height", 16 <= self.viewport_height <= 7680, "16..7680"),
            ("shot_times", bool(self.shot_times) and all(t >= 0 for t in self.shot_times)
             and list(self.shot_times) == sorted(self.shot_times), "a non-empty ascending list of seconds >= 0"),
            ("deadline_s", self.deadline_s > 0, "a number of seconds > 0"),
            ("queue_timeout_s", self.queue_timeout_s > 0, "a number of seconds > 0"),
            ("max_html_bytes", self.max_html_bytes > 0, "bytes > 0"),
            ("blank_threshold", 0 <= self.blank_threshold < 1, "a fraction in [0, 1)"),
            ("pages_per_context", self.pages_per_context >= 1, "an integer >= 1"),
            ("cache_mb", self.cache_mb >= 0, "megabytes >= 0"),
        ]
        return check("render", self, checks)
