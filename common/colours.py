"""Colours in words: the CSS colour name nearest to an RGB value, for feedback a person (or a policy) reads.
Used by the heuristic critic's feedback and by the render report the policy revises from."""
from __future__ import annotations

import re

import numpy as np
from PIL import ImageColor

_NAMES = sorted(n for n in ImageColor.colormap if not n.endswith("grey"))  # one spelling of each grey
_RGB = np.array([ImageColor.getrgb(n)[:3] for n in _NAMES], np.int32)  # [K, 3]


def name(rgb) -> str:
    """The CSS colour name nearest to rgb (L1 distance): "ivory", "darkslategray"."""
    return _NAMES[int(np.argmin(np.abs(_RGB - np.array(rgb[:3])).sum(1)))]


def css_rgb(css: str | None) -> tuple[int, int, int] | None:
    """A computed CSS colour ("rgb(1, 2, 3)", "rgba(1, 2, 3, 0.5)") -> (r, g, b); None for none or transparent."""
    nums = re.findall(r"[\d.]+", css or "")
    if len(nums) < 3 or (len(nums) >= 4 and float(nums[3]) < 0.5):
        return None
    return tuple(int(float(v)) for v in nums[:3])
