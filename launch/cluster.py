"""`python launch/cluster.py [group=option ...] [key=value ...]`: train with ReLook on a Ray cluster (or this laptop).

Configs: conf/ (hydra), schema launch/config.py. Sweeps: `python launch/cluster.py -m learner.lr=1e-6,3e-6`.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

import hydra  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from launch.config import TrainConfig  # noqa: E402

ConfigStore.instance().store(name="base_config", node=TrainConfig)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    try:
        cfg: TrainConfig = OmegaConf.to_object(dcfg)
        cfg.validate()
    except ValueError as e:  # a bad value or an impossible combination: before any work starts
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    from launch.trainer import train
    train(cfg)


if __name__ == "__main__":
    main()
