"""One command-line convention everywhere: `group=option` picks a preset (model=tiny, engine=vllm), `key.path=value`
sets a key (model.name=PATH, engine.max_model_len=N); a bad value names the key and what is allowed."""
import subprocess
import sys

from .conftest import ROOT


def actors(*args):
    return subprocess.run([sys.executable, "-m", "actors", "rollout", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_the_actors_cli_reads_groups_and_keys_as_the_launch_scripts_do():
    for args, want in ((["engine=foo"], "engine.kind='foo' is invalid: expected one of ['hf', 'vllm']"),
                       (["engine.kind=foo"], "engine.kind='foo' is invalid"),
                       (["model.name=tiny", "engine.max_model_len=3"], "engine.max_model_len=3 is invalid"),
                       (["model=tiny", "rollout.group_size=0"], "rollout.group_size=0 is invalid")):
        res = actors(*args)
        assert res.returncode == 2 and want in res.stderr, (args, res.stderr[-500:])
