"""Train the slow level of a world model: ``python experiments/train_slow.py env=pointmaze install=true [--resume]``.

Reads the level-1 latents of every frame of the dataset level 1 trained on (through the
feature cache of ``train_dynamics.py``), then

1. with ``slow.state=jepa``, pretrains the temporal encoder as a JEPA on block-masked time
   (``out_dir/jepa``);
2. trains the macro-action encoder, the slow predictor and the readout (``out_dir/dynamics``);
3. fits the plan coordinates to the macro-actions of the training chunks and writes the
   finished slow level to ``out_dir/slow`` (and, with ``install=true``, to ``<model>/slow``).

Both stages checkpoint and resume exactly (``resume=true``); ``summary.json`` holds the
validation numbers: rollout error per chunk against the "nothing moves" baseline.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from experiments.conf import entry_point, to_object
from experiments.provenance import device_description, git_commit, write_json
from experiments.runs import check_trained_env, training_run
from experiments.schemas import SlowExperimentConfig
from worldmodel.checkpoint import WEIGHTS, load_weights
from worldmodel.dynamics import FeatureCache, WorldModel
from worldmodel.files import file_sha256
from worldmodel.hierarchy import (SLOW_DIR, SlowModel, SlowObjective, SlowWindows, TemporalJEPAObjective,
                                  TemporalPredictor, save_atlas, validate_slow)
from worldmodel.hierarchy.objective import chunk_windows
from worldmodel.training import Trainer, plot_log, resolve_device
from worldmodel.training.rundir import RUN_KEY


@torch.no_grad()
def level1_latents(model: WorldModel, dataset, split: str, cache_dir: str, progress: bool) -> torch.Tensor:
    """The level-1 (EMA head) latents of every frame of ``split``, ``(frames, latent_dim)`` on the CPU."""
    cache = FeatureCache(Path(cache_dir), f"{dataset.manifest['checksum']}/{split}")
    table = model.encoder.feature_table(dataset.split(split), cache, progress)
    out = [model.encoder.latents(table[i : i + 4096].to(model.device), target=True).float().cpu()
           for i in range(0, len(table), 4096)]
    return torch.cat(out)


def run_on_level1(cfg, train):
    """A part trained on a level-1 model's latents: the model ``cfg.model`` checked against the env and
    loaded on ``cfg.train.device``, the run directory locked with the model's weights as its upstream, a
    warning where the data differ from the model's; then ``train(cfg, model, dataset, device)``."""
    device = resolve_device(cfg.train.device)
    trained = check_trained_env(cfg.env, cfg.model)
    model = WorldModel.from_pretrained(cfg.model, device)
    level1 = {"level1_weights_sha256": file_sha256(Path(cfg.model) / WEIGHTS)}
    with training_run(cfg, upstream=level1) as dataset:
        if trained.get("dataset_checksum") not in (None, dataset.manifest["checksum"]):
            print(f"warning: {cfg.model} was trained on dataset {trained.get('dataset')}, not {dataset.path}",
                  file=sys.stderr)
        return train(cfg, model, dataset, device)


def trained_on(cfg, dataset) -> dict:
    """What a part trained on a level-1 model's latents records: the data, the level-1 model and its
    weights' sha256, the commit and the env (checked where it is loaded)."""
    return {"dataset": str(dataset.path), "dataset_checksum": dataset.manifest["checksum"], "level1": cfg.model,
            "level1_weights_sha256": file_sha256(Path(cfg.model) / WEIGHTS),
            "commit": git_commit(), "env": cfg.env.name, "env_kwargs": cfg.env.env_kwargs()}


def run(cfg: SlowExperimentConfig) -> dict:
    device = resolve_device(cfg.train.device)
    trained = check_trained_env(cfg.env, cfg.model)
    model = WorldModel.from_pretrained(cfg.model, device)
    level1 = {"level1_weights_sha256": file_sha256(Path(cfg.model) / WEIGHTS)}
    with training_run(cfg, parts=("jepa", "dynamics"), upstream=level1) as dataset:  # where train() checkpoints
        if trained.get("dataset_checksum") not in (None, dataset.manifest["checksum"]):
            print(f"warning: {cfg.model} was trained on dataset {trained.get('dataset')}, not {dataset.path}",
                  file=sys.stderr)
        return train(cfg, model, dataset, device)


def train(cfg: SlowExperimentConfig, model: WorldModel, dataset, device: torch.device) -> dict:
    out = Path(cfg.out_dir)
    start = time.perf_counter()
    latents = {s: level1_latents(model, dataset, s, cfg.feature_cache, cfg.train.progress) for s in ("train", "val")}
    torch.manual_seed(cfg.train.seed)
    slow = SlowModel(model.layout, cfg.slow).to(device)
    extra = trained_on(cfg, dataset)
    meta = {**extra, RUN_KEY: asdict(cfg)}
    summary: dict = {"device": device_description()}
    if slow.state.pretrainable:  # stage 1: the temporal encoder as a JEPA on block-masked time
        windows = {s: SlowWindows(slow, dataset.split(s), latents[s], slow.state_window) for s in latents}
        predictor = TemporalPredictor(cfg.slow, max(8, cfg.slow.width // 2)).to(device)
        objective = TemporalJEPAObjective(slow, predictor, cfg.jepa_train, windows["train"], windows["val"])
        trainer = Trainer(objective, cfg.jepa_train, out / "jepa", meta)
        if cfg.resume and trainer.resume():
            print(f"resuming {out}/jepa/checkpoint at step {trainer.step}")
        log = trainer.run()
        plot_log(log, out / "jepa" / "loss.png", [("JEPA loss", ["jepa", "val_jepa"], True)])
        summary["jepa"] = {k: log[-1][k] for k in ("jepa", "val_jepa", "val_slow_std")}
    elif cfg.resume and (out / "jepa").exists():
        raise ValueError(f"{out}/jepa holds a JEPA stage but slow.state={cfg.slow.state!r}")
    if slow.state.pretrainable:  # stage 2 starts from the pretrained encoder (also when stage 1 was resumed)
        weights = load_weights(out / "jepa" / "checkpoint")
        slow.load_state_dict({k[len("slow."):]: v for k, v in weights.items() if k.startswith("slow.")})
    boundaries = model.layout.chunk_window(slow.state_window, cfg.slow.chunk, cfg.train.rollout_chunks)
    windows = {s: SlowWindows(slow, dataset.split(s), latents[s], boundaries) for s in latents}
    objective = SlowObjective(slow, cfg.train, windows["train"], windows["val"])
    trainer = Trainer(objective, cfg.train, out / "dynamics", meta)
    if cfg.resume and trainer.resume():
        print(f"resuming {out}/dynamics/checkpoint at step {trainer.step}")
    log = trainer.run()
    plot_log(log, out / "dynamics" / "loss.png",
             [("slow-state MSE", ["one_step", "rollout", "val_one_step", "val_rollout", "val_still"], True)])
    # plan coordinates: the macro-actions of training chunks
    z, a = windows["train"].fixed(min(cfg.macro_prior_chunks, len(windows["train"].sampler)), seed=1)
    slow.fit_macro_prior(chunk_windows(slow, z, a)[2][:, 0])
    summary["val"] = validate_slow(slow, *objective.val)
    summary["macro_prior"] = {"mean_abs": slow.macro_mean.abs().mean().item(),
                              "scale_diag": slow.macro_scale.diagonal().tolist()}
    summary["wall_seconds"] = time.perf_counter() - start
    # the atlas: training frames that show what a subgoal's level-1 latent looks like (videos)
    pick = torch.randperm(len(latents["train"]), generator=torch.Generator().manual_seed(cfg.train.seed))
    pick = pick[: cfg.atlas_frames].sort().values
    images = np.asarray(dataset.split("train").obs[pick.numpy()])
    for target in [out / SLOW_DIR] + ([Path(cfg.model) / SLOW_DIR] if cfg.install else []):
        slow.eval().save_pretrained(target, extra)
        save_atlas(target, latents["train"][pick], images)
    if cfg.install:
        summary["installed"] = str(Path(cfg.model) / SLOW_DIR)
    write_json(out / "summary.json", summary)
    return summary


@entry_point("train_slow")
def main(cfg: DictConfig) -> None:
    config: SlowExperimentConfig = to_object(cfg)
    summary = run(config)
    v = summary["val"]
    print(f"\nslow level ({config.slow.state} state, {config.slow.macro} macro-actions, K={config.slow.chunk}) in "
          f"{summary['wall_seconds']:.0f} s on {summary['device']}")
    print("val rollout MSE by chunk:       " + ", ".join(f"{x:.3f}" for x in v["rollout_mse_by_chunk"]))
    print("'nothing moves' MSE by chunk:   " + ", ".join(f"{x:.3f}" for x in v["still_mse_by_chunk"]))
    print("subgoal (level-1) MSE by chunk: " + ", ".join(f"{x:.3f}" for x in v["subgoal_mse_by_chunk"]))
    print(f"outputs in {config.out_dir}/" + (f"; installed in {summary['installed']}" if config.install else ""))


if __name__ == "__main__":
    main()
