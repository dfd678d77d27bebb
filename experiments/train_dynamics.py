"""Train the action-conditioned predictor: ``python experiments/train_dynamics.py env=reacher [--resume]``.

Freezes the pretrained encoder (``encoder_checkpoint``), computes every frame's state
once (cached in ``out_dir/cache``), trains the predictor on windows of the train split
with a one-step and a rollout loss, validates on the val split, and writes
``out_dir/checkpoint`` (the whole world model), ``log.csv``, ``loss.png``, ``summary.json``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from experiments.conf import CONFIG_DIR, to_object
from experiments.provenance import device_description, git_commit, write_json
from worldmodel.configs import DynamicsExperimentConfig
from worldmodel.data import open_dataset
from worldmodel.data.collect import ensure_dataset
from worldmodel.dynamics import WindowBatches, encode_frames, evaluate, fit_projection
from worldmodel.dynamics_trainer import DynamicsTrainer
from worldmodel.jepa import load_encoder
from worldmodel.pretrain import shutdown_distributed
from worldmodel.world_model import LatentWorldModel


def digest(tensors, *settings) -> str:
    """A short key for cache files: the tensors' bytes and the settings they were made with."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().numpy().tobytes())
    h.update(repr(settings).encode())
    return h.hexdigest()[:16]


def cached_projection(model: LatentWorldModel, cache: Path, key: str, dataset, seed: int) -> None:
    """Fit the principal-component projection once per ``key`` (encoder, dataset, pooling, seed)."""
    if not model.cfg.project_dim:
        return
    path = cache / f"projection-{key}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        model.pca_mean.copy_(saved["mean"])
        model.pca_components.copy_(saved["components"])
        return
    torch.manual_seed(seed)  # pca_lowrank draws from the global generator
    fit_projection(model, dataset.split("train"), seed=seed)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{path.name}.tmp-{os.getpid()}"
    torch.save({"mean": model.pca_mean.clone(), "components": model.pca_components.clone()}, tmp)
    os.replace(tmp, path)


def cached_states(model: LatentWorldModel, dataset, split: str, cache: Path, key: str, progress: bool):
    """Raw states of every frame of ``split``, computed once per (encoder, dataset, pooling)."""
    path = cache / f"{split}-{key}.npy"
    if path.exists():
        return torch.from_numpy(np.load(path))
    states = encode_frames(model, dataset.split(split), progress=progress)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{path.name}.tmp-{os.getpid()}.npy"
    np.save(tmp, states.numpy())
    os.replace(tmp, path)
    return states


def run(cfg: DynamicsExperimentConfig) -> dict:
    dataset = open_dataset(ensure_dataset(cfg))
    out = Path(cfg.out_dir)
    if (out / "checkpoint").exists() and not cfg.resume:
        raise FileExistsError(f"{out}/checkpoint exists: pass --resume to continue it, or choose another out_dir")
    action_dim = dataset.split("train").actions.shape[1]
    if cfg.dynamics.encoder == "frozen":
        encoder = load_encoder(cfg.encoder_checkpoint)
        model = LatentWorldModel(encoder, cfg.dynamics, action_dim)
        encoder_key = digest(encoder.parameters(), dataset.manifest["checksum"], cfg.dynamics.pool)
        cached_projection(model, out / "cache", digest([], encoder_key, cfg.dynamics.project_dim, cfg.train.seed),
                          dataset, cfg.train.seed)
        projection = [model.pca_mean, model.pca_components] if cfg.dynamics.project_dim else []
        key = digest(projection, encoder_key, cfg.dynamics.project_dim)  # what a frame's features depend on
        raw = {s: cached_states(model, dataset, s, out / "cache", key, cfg.train.progress) for s in ("train", "val")}
    else:  # the encoder trains end to end on the frames themselves
        height, width, chans = dataset.split("train").obs.shape[1:]
        image_shape = (chans, height, width)
        model = LatentWorldModel(None, cfg.dynamics, action_dim, image_shape)
        raw = {s: encode_frames(model, dataset.split(s)) for s in ("train", "val")}
    model.set_latent_stats(raw["train"])
    batches = {s: WindowBatches(model, dataset.split(s), raw[s], cfg.train.rollout_steps) for s in raw}
    meta = {"dataset": str(dataset.path), "dataset_checksum": dataset.manifest["checksum"],
            "encoder_checkpoint": cfg.encoder_checkpoint if model.frozen else None, "commit": git_commit(),
            "env": cfg.env.name, "image_size": cfg.env.image_size}
    torch.manual_seed(cfg.train.seed)
    trainer = DynamicsTrainer(model, cfg.train, batches["train"], batches["val"], out, meta)
    if cfg.resume and trainer.resume():
        print(f"resuming {out}/checkpoint at step {trainer.step}")
    start = time.perf_counter()
    history = trainer.run()
    summary = {"steps": trainer.step, "wall_seconds": time.perf_counter() - start, "device": device_description(),
               "val": evaluate(trainer.model, batches["val"]), "state_dim": model.state_dim}
    if trainer.rank == 0:
        plot_losses(history, out / "loss.png")
        write_json(out / "summary.json", summary)
    shutdown_distributed()
    return summary


def plot_losses(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("one_step", "rollout", "val_one_step", "val_rollout"):
        ax.plot(steps, [r[key] for r in rows], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@hydra.main(config_path=CONFIG_DIR, config_name="train_dynamics", version_base="1.3")
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
    sys.argv = ["resume=true" if a == "--resume" else a for a in sys.argv]
    main()
