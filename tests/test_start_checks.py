"""What a run checks before it starts work: which Chromium renders (render_farm/chromium.py) and that every Ray node
runs the same project with what its actors need (launch/nodes.py)."""
import stat

import pytest

from launch import nodes
from render_farm import chromium


def executable(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_chromium_is_found_in_the_order_users_expect(tmp_path, monkeypatch):
    monkeypatch.delenv("RELOOK_CHROMIUM", raising=False)
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(tmp_path / "pw"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setattr(chromium, "DEBIAN", str(tmp_path / "usr-bin-chromium"))
    with pytest.raises(chromium.ChromiumNotFound, match="apt-get install chromium.*playwright install chromium"):
        chromium.find()
    debian = executable(tmp_path / "usr-bin-chromium")
    assert chromium.find() == debian
    on_path = executable(tmp_path / "bin" / "chromium-browser")
    assert chromium.find() == on_path
    executable(tmp_path / "pw" / "chromium-1100" / "chrome-linux" / "chrome")
    newest = executable(tmp_path / "pw" / "chromium-1200" / "chrome-linux64" / "chrome")
    assert chromium.find() == newest  # Playwright's own browser before the system's, its newest build first
    env = executable(tmp_path / "env-chrome")
    monkeypatch.setenv("RELOOK_CHROMIUM", env)
    assert chromium.find() == env
    key = executable(tmp_path / "key-chrome")
    assert chromium.find(key) == key
    # a path that is set but wrong is an error naming where it was set, never a silent fallback
    with pytest.raises(chromium.ChromiumNotFound, match="render.chromium_path='/nope' is not an executable"):
        chromium.find("/nope")
    monkeypatch.setenv("RELOOK_CHROMIUM", "/nope")
    with pytest.raises(chromium.ChromiumNotFound, match="RELOOK_CHROMIUM='/nope'"):
        chromium.find()


def test_a_node_that_differs_is_named_with_what_it_lacks():
    mine = nodes.fingerprint()
    assert mine["sources"] and mine["versions"]["torch"] and not mine["chromium"].startswith("missing")
    assert nodes.problems(mine, mine, need_runner=False) == []
    other = {**mine, "ip": "198.18.0.2", "root": "/srv/relook", "sources": "0" * 16, "spec_runner": False,
             "chromium": "missing: no Chromium found", "versions": {**mine["versions"], "deepspeed": "0.1"}}
    got = nodes.problems(mine, other, need_runner=True)
    assert any("/srv/relook" in p for p in got) and any("sources" in p for p in got)
    assert any(p.startswith("deepspeed 0.1") for p in got) and any("Chromium" in p for p in got)
    assert any("Node spec runner" in p for p in got) and len(got) == 5
    assert "Node spec runner" not in " ".join(nodes.problems(mine, other, need_runner=False))


def test_the_fingerprint_follows_the_sources(tmp_path, monkeypatch):
    """A changed source file changes the hash; a file outside the project's packages does not."""
    for pkg in nodes.PACKAGES:
        (tmp_path / pkg).mkdir()
    (tmp_path / "learner" / "rank.py").write_text("a = 1\n")
    (tmp_path / "critic_service" / "node_modules").mkdir()
    monkeypatch.setattr(nodes, "ROOT", tmp_path)
    first = nodes.fingerprint()["sources"]
    (tmp_path / "critic_service" / "node_modules" / "x.js").write_text("ignored")
    (tmp_path / "notes.py").write_text("ignored")
    assert nodes.fingerprint()["sources"] == first
    (tmp_path / "learner" / "rank.py").write_text("a = 2\n")
    assert nodes.fingerprint()["sources"] != first
