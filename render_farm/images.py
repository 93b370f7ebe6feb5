"""Pixel checks on screenshots: is a shot blank (uniform colour), and PNG decoding for critics."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def decode_png(png: bytes) -> np.ndarray:
    """PNG bytes -> RGB array [H, W, 3] uint8."""
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def dominant_color(rgb: np.ndarray) -> np.ndarray:
    """The most frequent colour of an image [H, W, 3], estimated on a strided sample of pixels."""
    packed = _pack(rgb[::4, ::4])
    values, counts = np.unique(packed, return_counts=True)
    v = int(values[np.argmax(counts)])
    return np.array([(v >> 16) & 255, (v >> 8) & 255, v & 255], dtype=np.uint8)


def non_dominant_fraction(png: bytes, exact_colors: int = 65536) -> float:
    """Fraction of pixels that differ from the dominant colour: exactly 0 for a truly blank page.

    PIL counts colours in C (~6 ms for 1280x720); only pages with more distinct colours than `exact_colors`
    (photos, gradients - never blank) take the slower numpy path.
    """
    with Image.open(io.BytesIO(png)) as im:
        colors = im.getcolors(maxcolors=exact_colors)
        if colors is not None:
            return 1.0 - max(colors)[0] / (im.width * im.height)
        rgb = np.asarray(im.convert("RGB"))
    differs = np.any(rgb != dominant_color(rgb), axis=-1)  # [H, W]
    return float(differs.mean())


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.reshape(-1, 3).astype(np.uint32)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
