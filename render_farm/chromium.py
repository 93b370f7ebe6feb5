"""Which Chromium renders, found the way users expect: render.chromium_path when set, then $RELOOK_CHROMIUM, then
Playwright's own browser (`python -m playwright install chromium`: under $PLAYWRIGHT_BROWSERS_PATH or
~/.cache/ms-playwright), then the system's (chromium, chromium-browser, google-chrome on PATH; Debian's
/usr/bin/chromium). A path that is set but missing is an error naming where it was set, never a silent fallback."""
from __future__ import annotations

import glob
import os
import re
import shutil

DEBIAN = "/usr/bin/chromium"
INSTALL = ("install one - Debian/Ubuntu: apt-get install chromium; Fedora: dnf install chromium; any OS: "
           "python -m playwright install chromium - or point render.chromium_path (or RELOOK_CHROMIUM) at a "
           "Chromium or Chrome executable")


class ChromiumNotFound(RuntimeError):
    pass


def _playwright_browsers() -> list[str]:
    """Playwright's Chromium builds, newest revision first (chromium-<revision>/...)."""
    root = os.environ.get("PLAYWRIGHT_BROWSERS_PATH") or os.path.expanduser("~/.cache/ms-playwright")
    found = glob.glob(os.path.join(root, "chromium-*", "chrome-linux*", "chrome")) + glob.glob(
        os.path.join(root, "chromium-*", "chrome-mac*", "Chromium.app", "Contents", "MacOS", "Chromium"))
    return sorted(found, key=lambda p: int(re.search(r"chromium-(\d+)", p).group(1)), reverse=True)


def find(configured: str = "", missing_ok: bool = False) -> str:
    """The executable to launch. missing_ok: Debian's path when none is found (for a default computed at import)."""
    for source, path in (("render.chromium_path", configured), ("RELOOK_CHROMIUM", os.environ.get("RELOOK_CHROMIUM"))):
        if path:
            if os.access(path, os.X_OK) or missing_ok:
                return path
            raise ChromiumNotFound(f"{source}={path!r} is not an executable file; {INSTALL}")
    system = [shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")]
    for path in _playwright_browsers() + [p for p in system if p] + [DEBIAN]:
        if os.access(path, os.X_OK):
            return path
    if missing_ok:
        return DEBIAN
    raise ChromiumNotFound(f"no Chromium found (render.chromium_path, RELOOK_CHROMIUM, Playwright's browsers, PATH, "
                           f"{DEBIAN}); {INSTALL}")
