"""Train a learned temporal distance for the hand-down rule ``learned``:
``python experiments/train_reach.py env=pointmaze env.maze=large install=true [--resume]``.

Reads the level-1 latents of every frame of the dataset level 1 trained on (through the feature
cache of ``train_dynamics.py``) and trains :class:`~worldmodel.hierarchy.reach.TemporalDistance`
on hindsight pairs of frames of one episode. The run checkpoints and resumes exactly
(``resume=true``); ``summary.json`` holds the validation numbers: the error of the predicted median
distance against that of the training median for every pair, and how often two pairs are ordered
right. With ``install=true`` the head is written to ``<model>/reach``, where ``plan.py`` finds it.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig

from experiments.conf import entry_point, to_object
from experiments.provenance import device_description, write_json
from experiments.schemas import ReachExperimentConfig
from experiments.train_slow import level1_latents, run_on_level1, trained_on
from worldmodel.dynamics import WorldModel
from worldmodel.hierarchy.reach import REACH_DIR, HindsightPairs, ReachObjective, TemporalDistance
from worldmodel.training import Trainer, plot_log
from worldmodel.training.rundir import RUN_KEY


def run(cfg: ReachExperimentConfig) -> dict:
    return run_on_level1(cfg, train)


def train(cfg: ReachExperimentConfig, model: WorldModel, dataset, device: torch.device) -> dict:
    out = Path(cfg.out_dir)
    start = time.perf_counter()
    latents = {s: level1_latents(model, dataset, s, cfg.feature_cache, cfg.train.progress) for s in ("train", "val")}
    pairs = {s: HindsightPairs(dataset.split(s), latents[s], cfg.reach.max_steps) for s in latents}
    torch.manual_seed(cfg.train.seed)
    head = TemporalDistance(model.layout.latent_dim, cfg.reach)
    head.fit_scale(latents["train"])
    extra = trained_on(cfg, dataset)
    meta = {**extra, RUN_KEY: asdict(cfg)}
    objective = ReachObjective(head, cfg.train, pairs["train"], pairs["val"])
    trainer = Trainer(objective, cfg.train, out, meta)
    if cfg.resume and trainer.resume():
        print(f"resuming {out}/checkpoint at step {trainer.step}")
    log = trainer.run()
    plot_log(log, out / "loss.png", [("cross-entropy", ["ce", "val_ce"], False),
                                     ("median error (env steps)", ["val_mae", "val_mae_prior"], False)])
    summary = {"device": device_description(), "wall_seconds": time.perf_counter() - start,
               "val": {k: log[-1][k] for k in ("val_ce", "val_mae", "val_mae_prior", "val_order")}}
    for target in [out / REACH_DIR] + ([Path(cfg.model) / REACH_DIR] if cfg.install else []):
        head.eval().save_pretrained(target, extra)
    if cfg.install:
        summary["installed"] = str(Path(cfg.model) / REACH_DIR)
    write_json(out / "summary.json", summary)
    return summary


@entry_point("train_reach")
def main(cfg: DictConfig) -> None:
    config: ReachExperimentConfig = to_object(cfg)
    summary = run(config)
    v = summary["val"]
    print(f"\ntemporal distance ({config.reach.bins} bins of {config.reach.width} env steps) in "
          f"{summary['wall_seconds']:.0f} s on {summary['device']}")
    print(f"val median error {v['val_mae']:.1f} env steps (the training median for every pair: "
          f"{v['val_mae_prior']:.1f}); pairs ordered right {v['val_order']:.0%}")
    print(f"outputs in {config.out_dir}/" + (f"; installed in {summary['installed']}" if config.install else ""))


if __name__ == "__main__":
    main()
