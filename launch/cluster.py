"""`python launch/cluster.py [group=option ...] [key=value ...]`: train with ReLook on a Ray cluster (or this laptop).

Configs: conf/ (hydra), schema launch/config.py. Sweeps: `python launch/cluster.py -m learner.lr=1e-6,3e-6`.
`--plan`: print the placement and each GPU's memory for these settings and exit (launch/plan.py); nothing starts.
"""
from __future__ import annotations

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

import hydra  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from launch.config import TrainConfig  # noqa: E402

ConfigStore.instance().store(name="base_config", node=TrainConfig)
PLAN = "--plan" in sys.argv  # not a hydra flag: taken off before hydra reads the command line
if PLAN:  # and hydra writes no run folder or log for it
    sys.argv[sys.argv.index("--plan"):sys.argv.index("--plan") + 1] = [
        "hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled", "hydra.run.dir=."]


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    try:
        start(dcfg)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (launch/trainer.py): the run has already unwound
        name = getattr(sys.modules.get("launch.trainer"), "stopped_by", None) or "SIGINT"
        print(f"stopped by {name}: the same command again continues from the last checkpoint in trainer.output_dir "
              "(trainer.resume=auto)", file=sys.stderr, flush=True)
        sys.exit(128 + getattr(signal, name))


def start(dcfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    try:
        cfg: TrainConfig = OmegaConf.to_object(dcfg)
        cfg.validate(planning=PLAN)
    except ValueError as e:  # a bad value or an impossible combination: before any work starts
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    if PLAN:
        from launch.plan import PlanError, report
        try:
            print(report(cfg), flush=True)
        except PlanError as e:
            print("\n".join(e.lines), flush=True)
            print(f"plan error: {e}", file=sys.stderr)
            sys.exit(2)
        return
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:  # every job of a sweep trains (and resumes) in a folder of its own
        from launch.run_io import hydra_job_dir
        user_set = any(o.split("=", 1)[0].lstrip("+~") == "trainer.output_dir" for o in hc.overrides.task)
        cfg.trainer.output_dir = hydra_job_dir(cfg.trainer.output_dir, user_set)
        print(f"sweep job {hc.job.num}: trainer.output_dir={cfg.trainer.output_dir}", flush=True)
    from launch.trainer import train
    if cfg.trainer.ablation:
        from launch.ablation import run
        run(cfg)
        return
    if not cfg.trainer.throughput:
        train(cfg)
        return
    import dataclasses
    import json

    from launch.run_io import throughput_line
    root = cfg.trainer.output_dir
    for mode, k in (("sync", 0), ("async", 1)):  # the same steps, seeds and tasks; one after the other
        run = dataclasses.replace(cfg, trainer=dataclasses.replace(
            cfg.trainer, max_staleness=k, output_dir=os.path.join(root, mode), resume="never"))
        train(run)
        rows = [json.loads(line) for line in open(os.path.join(root, mode, "metrics.jsonl"))]
        print(json.dumps(throughput_line(mode, rows)), flush=True)


if __name__ == "__main__":
    main()
