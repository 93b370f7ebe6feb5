"""scripts/gpu_check.py, the GPU path's Ray-free checks, as a CPU dry run (gloo for NCCL; CUDA IPC skipped), so the
prepared script a GPU machine runs is known to work before one is lent; and without Ray importable, as there."""
import json
import subprocess
import sys

from .conftest import ROOT

NO_RAY = "import sys, runpy; sys.modules['ray'] = None; sys.argv = ['gpu_check.py', 'tiny', '--device', 'cpu']; " \
         "runpy.run_path('scripts/gpu_check.py', run_name='__main__')"


def test_the_gpu_check_runs_its_checks_without_ray():
    res = subprocess.run([sys.executable, "-c", NO_RAY], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    ratio = [x for x in lines if x["check"] == "engine_ratio"]
    assert len(ratio) == 4 and all(x["ok"] and x["logprob_diff_mean"] < 1e-4 and x["tokens"] > 0 for x in ratio)
    zero3 = [x for x in lines if x["check"] == "zero3_step"]
    assert [x["gradient_checkpointing"] for x in zero3] == [False, True]
    assert all(x["ok"] and x["partitioned_at_load"] for x in zero3)
    assert zero3[0]["loss"] == zero3[1]["loss"]  # recomputing activations changes nothing but memory
    assert [x.get("skipped") for x in lines if x["check"] == "cuda_ipc_push"] == ["needs CUDA"]
