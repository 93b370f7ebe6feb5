"""Pure parts of the render farm: blank detection, the byte-bounded cache, config validation."""
import io

import numpy as np
import pytest
from PIL import Image

from common.cache import LRU
from render_farm.config import RenderConfig
from render_farm.images import non_dominant_fraction
from render_farm.result import RenderRequest


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_uniform_image_is_exactly_blank_and_a_mark_is_not():
    img = np.full((72, 128, 3), 240, np.uint8)
    assert non_dominant_fraction(png(img)) == 0.0
    img[10:14, 10:20] = 0  # a 4x10 mark: 40 of 9216 pixels
    assert non_dominant_fraction(png(img)) == pytest.approx(40 / 9216)


def test_lru_evicts_oldest_and_tracks_hits():
    cache = LRU(10, size_of=len)
    cache.put("a", b"xxxx")
    cache.put("b", b"yyyy")
    assert cache.get("a") == b"xxxx"  # a is now the most recent
    cache.put("c", b"zzzz")  # 12 bytes > 10: evict b
    assert cache.get("b") is None and cache.get("a") and cache.get("c")
    assert cache.size == 8 and cache.hits == 3 and cache.misses == 1
    cache.put("huge", b"0" * 11)  # larger than the whole cache: not stored
    assert cache.get("huge") is None
    entries = LRU(2)  # bounded by entries (the critic service's critiques)
    for k in "abc":
        entries.put(k, k.upper())
    assert len(entries) == 2 and entries.get("a") is None and entries.get("c") == "C"
    off = LRU(0)  # critic.cache_entries=0 disables the cache
    off.put("a", "A")
    assert off.get("a") is None


def test_request_key_depends_on_page_viewport_schedule_and_clock():
    r = RenderRequest("<p>x</p>")
    base = r.key((1280, 720), (0, 1, 2), "virtual")
    assert base == RenderRequest("<p>x</p>").key((1280, 720), (0, 1, 2), "virtual")
    assert len({base, r.key((800, 600), (0, 1, 2), "virtual"), r.key((1280, 720), (0,), "virtual"),
                r.key((1280, 720), (0, 1, 2), "real"), RenderRequest("<p>y</p>").key((1280, 720), (0, 1, 2), "virtual")}) == 5


@pytest.mark.parametrize("key,value", [("clock", "wall"), ("concurrency", 0), ("shot_times", [2.0, 1.0]),
                                       ("blank_threshold", 1.5), ("deadline_s", 0)])
def test_bad_config_names_the_key(key, value):
    cfg = RenderConfig(**{key: value})
    with pytest.raises(ValueError, match=f"render.{key}="):
        cfg.validate()
