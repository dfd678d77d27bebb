"""Train the world model: ``python experiments/train_dynamics.py env=reacher [--resume]``.

Builds the world model (with the default frame encoder, on the frozen encoder of the
JEPA pretraining checkpoint ``encoder_checkpoint``), computes every frame's features once
(cached in ``feature_cache``), trains the head and the predictor on windows of the train
split with a one-step and a rollout loss, validates on the val split, and writes
``out_dir/checkpoint`` (the whole world model), ``log.csv``, ``loss.png``, ``summary.json``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig

from experiments.conf import entry_point, to_object
from experiments.provenance import device_description, git_commit, write_json
from experiments.runs import training_run
from experiments.schemas import DynamicsExperimentConfig
from worldmodel.checkpoint import WEIGHTS
from worldmodel.dynamics import DynamicsObjective, FeatureCache, WindowBatches, WorldModel, validate
from worldmodel.dynamics.frames import load_pretrained_vit
from worldmodel.files import file_sha256
from worldmodel.training import (
    Trainer,
    distributed,
    plot_log,
    rank_zero_first,
    resolve_device,
    shutdown_distributed,
)
from worldmodel.training.rundir import RUN_KEY


def build(cfg: DynamicsExperimentConfig, dataset, vit) -> tuple[WorldModel, dict]:
    """The world model (initialised from ``cfg.train.seed``) on its device, prepared on the train split,
    and the feature tables of the train and val splits."""
    train = dataset.split("train")
    height, width, channels = train.obs.shape[1:]
    torch.manual_seed(cfg.train.seed)
    model = WorldModel.build(cfg.dynamics, train.actions.shape[1], (channels, height, width), vit)
    model.to(resolve_device(cfg.train.device, distributed()[0]))
    checksum = dataset.manifest["checksum"]
    cache = {s: FeatureCache(Path(cfg.feature_cache), f"{checksum}/{s}") for s in ("train", "val")}
    with rank_zero_first():  # rank 0 computes and caches the features, the other ranks read them
        tables = {"train": model.encoder.prepare(train, cfg.projection_seed, cache["train"], cfg.train.progress),
                  "val": model.encoder.feature_table(dataset.split("val"), cache["val"], cfg.train.progress)}
    return model, tables


def run(cfg: DynamicsExperimentConfig) -> dict:
    """Train in ``cfg.out_dir``, locked for the run (see ``experiments.runs.training_run``)."""
    vit = load_pretrained_vit(cfg.dynamics, cfg.encoder_checkpoint)  # a missing encoder fails before any collection
    if vit is not None and vit.cfg.image_size != cfg.env.image_size:
        raise ValueError(f"the encoder of {cfg.encoder_checkpoint} takes {vit.cfg.image_size}px images, the env "
                         f"gives {cfg.env.image_size}px")
    upstream = {"encoder_weights_sha256": encoder_sha256(cfg)} if vit is not None else {}
    with training_run(cfg, upstream=upstream) as dataset:
        return train(cfg, dataset, vit, upstream)


def encoder_sha256(cfg: DynamicsExperimentConfig) -> str:
    """The sha256 of the pretrained encoder's weights the run reads (checked on resume)."""
    return file_sha256(Path(cfg.encoder_checkpoint) / WEIGHTS)


def train(cfg: DynamicsExperimentConfig, dataset, vit, upstream: dict[str, str]) -> dict:
    """Train on ``dataset``; ``upstream``: the sha256 of the encoder's weights, recorded in the checkpoints."""
    out = Path(cfg.out_dir)
    model, tables = build(cfg, dataset, vit)
    batches = {s: WindowBatches(model, dataset.split(s), tables[s], cfg.train.rollout_steps) for s in tables}
    meta = {"dataset": str(dataset.path), "dataset_checksum": dataset.manifest["checksum"],
            "encoder_checkpoint": cfg.encoder_checkpoint if model.encoder.pretrained else None,
            **upstream,
            "commit": git_commit(), "env": cfg.env.name, "image_size": cfg.env.image_size,
            "env_kwargs": cfg.env.env_kwargs(), RUN_KEY: asdict(cfg)}
    objective = DynamicsObjective(model, cfg.train, batches["train"], batches["val"])
    trainer = Trainer(objective, cfg.train, out, meta)
    if cfg.resume and trainer.resume():
        print(f"resuming {out}/checkpoint at step {trainer.step}")
    start = time.perf_counter()
    log = trainer.run()
    summary = {"steps": trainer.step, "wall_seconds": time.perf_counter() - start, "device": device_description(),
               "val": validate(model, batches["val"], cfg.train.val_windows), "state_dim": model.state_dim}
    if trainer.rank == 0:
        plot_log(log, out / "loss.png", [("latent MSE", ["one_step", "rollout", "val_one_step", "val_rollout"], True)])
        write_json(out / "summary.json", summary)
    shutdown_distributed()
    return summary


@entry_point("train_dynamics")
def main(cfg: DictConfig) -> None:
    config: DynamicsExperimentConfig = to_object(cfg)
    summary = run(config)
    v = summary["val"]
    print(f"\n{summary['steps']} steps in {summary['wall_seconds']:.0f} s on {summary['device']}; "
          f"val one-step MSE {v['one_step']:.4f}, rollout MSE {v['rollout']:.4f} "
          f"(standardised latents; 1.0 = predicting the mean)")
    print("val rollout MSE by horizon: " + ", ".join(f"{x:.3f}" for x in v["rollout_mse_by_horizon"]))
    print(f"outputs in {config.out_dir}/")


if __name__ == "__main__":
    main()
