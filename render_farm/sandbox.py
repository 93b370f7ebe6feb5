"""The browser half of the sandbox: how Chromium is launched, and how its processes are found and measured.

Model-written HTML is hostile. The page-side half (no popups, no dialogs) is in page_clock.js; the rest is here:
- no network at all: a dead proxy (127.0.0.1:9) with loopback *not* bypassed catches what Playwright's route()
  cannot see (prefetch, preconnect, beacons, websockets); route() additionally aborts and counts page requests;
- no file:// reads: pages are loaded with set_content into about:blank (opaque origin), never from disk;
- memory bombs: a V8 heap cap crashes the renderer in seconds; the farm notices the crash event at once;
- Chromium's own sandbox needs a non-root user; as root (containers, CI) it runs with --no-sandbox and each page
  in its own renderer process.
"""
from __future__ import annotations

import os
import uuid

DEAD_PROXY = "http://127.0.0.1:9"


def launch_args(js_heap_mb: int, marker: str) -> list[str]:
    return [
        f"--relook-farm={marker}",  # unknown to Chromium, lets us find this browser's process tree
        f"--proxy-server={DEAD_PROXY}",
        "--proxy-bypass-list=<-loopback>",  # route loopback through the dead proxy as well
        f"--js-flags=--max-old-space-size={js_heap_mb}",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-domain-reliability",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        "--mute-audio",
        "--hide-scrollbars",  # same pixels whatever the scrollbar theme
        "--force-color-profile=srgb",  # colours in screenshots equal the CSS colours
        "--font-render-hinting=none",
        *(["--no-sandbox"] if os.geteuid() == 0 else []),
    ]


def new_marker() -> str:
    return uuid.uuid4().hex[:12]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every readable process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[int(name)] = (ppid, cmd)
    return out


def browser_pid(marker: str) -> int | None:
    """The pid of the browser process launched with this marker."""
    for pid, (_, cmd) in _processes().items():
        if f"--relook-farm={marker}" in cmd and "--type=" not in cmd:
            return pid
    return None


def process_tree(root: int) -> list[int]:
    procs = _processes()
    tree, frontier = [root], [root]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, (ppid, _) in procs.items() if ppid == parent]
        tree += kids
        frontier += kids
    return tree


def tree_memory_mib(root: int | None) -> float:
    """Proportional set size (PSS) of a process and its descendants: shared pages are counted once."""
    if root is None:
        return 0.0
    total_kb = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total_kb += int(line.split()[1])
                        break
        except OSError:
            continue
    return total_kb / 1024
