"""JEPA encoder pretraining: ``python experiments/pretrain_encoder.py env=reacher [--resume]``.

Trains on the train split of the dataset (collected first when missing), logs to
``out_dir/log.csv``, plots ``out_dir/loss.png``, checkpoints to ``out_dir/checkpoint``
and ends with a linear probe of the frozen encoder against a randomly initialised
one (``out_dir/probe.json``). Runs under ``torchrun`` unchanged.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from experiments.conf import CONFIG_DIR, to_object
from experiments.provenance import device_description, git_commit, write_json
from worldmodel.configs import PretrainConfig
from worldmodel.data import open_dataset
from worldmodel.data.collect import ensure_dataset
from worldmodel.jepa import JEPA
from worldmodel.pretrain import RepresentationCollapse, Trainer, plot_history, shutdown_distributed
from worldmodel.probes import linear_probe


def run(cfg: PretrainConfig) -> dict:
    dataset = open_dataset(ensure_dataset(cfg))
    out = Path(cfg.out_dir)
    if (out / "checkpoint").exists() and not cfg.resume:
        raise FileExistsError(f"{out}/checkpoint exists: pass --resume to continue it, or choose another out_dir")
    meta = {"dataset": str(dataset.path), "dataset_checksum": dataset.manifest["checksum"], "commit": git_commit()}
    trainer = Trainer(cfg.model, cfg.train, dataset.split("train"), out, meta)
    if cfg.resume and trainer.resume():
        print(f"resuming {out}/checkpoint at step {trainer.step}")
    start = time.perf_counter()
    collapsed = None
    try:
        history = trainer.run()
    except RepresentationCollapse as err:
        collapsed, history = str(err), trainer.history
        print(f"stopped: {err}")
        trainer.save()
    summary = {"steps": trainer.step, "wall_seconds": time.perf_counter() - start, "collapsed": collapsed,
               "final_loss": history[-1]["jepa"] if history else None, "device": device_description()}
    if trainer.rank == 0:
        plot_history(history, out / "loss.png")
        summary["probe"] = probe(trainer.model, cfg, dataset)
        write_json(out / "summary.json", summary)
    shutdown_distributed()
    return summary


def probe(model: JEPA, cfg: PretrainConfig, dataset) -> dict:
    """Linear probe R^2 of the pretrained (EMA) encoder next to a random-init one."""
    train, test = dataset.split("train"), dataset.split("heldout")
    kw = dict(n_train=cfg.probe_train_frames, n_test=cfg.probe_test_frames, seed=cfg.train.seed)
    torch.manual_seed(cfg.train.seed + 100)
    random_encoder = JEPA(cfg.model).encoder.to(next(model.parameters()).device)
    return {"pretrained": linear_probe(model.frozen_encoder, train, test, **kw),
            "random_init": linear_probe(random_encoder, train, test, **kw)}


@hydra.main(config_path=CONFIG_DIR, config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config: PretrainConfig = to_object(cfg)
    summary = run(config)
    if "probe" in summary:
        p, r = summary["probe"]["pretrained"], summary["probe"]["random_init"]
        print(f"\n{summary['steps']} steps in {summary['wall_seconds']:.0f} s on {summary['device']}; "
              f"final JEPA loss {summary['final_loss']:.4f}" + (f"; COLLAPSED: {summary['collapsed']}"
                                                               if summary["collapsed"] else ""))
        print(f"linear probe R^2 on held-out frames ({p['test_frames']}):   pretrained   random-init")
        for key in ("r2_joint_angles", "r2_fingertip", "r2_mean"):
            print(f"  {key:<16} {p[key]:>36.3f} {r[key]:>13.3f}")
        print(f"outputs in {config.out_dir}/ (log.csv, loss.png, summary.json, checkpoint/)")


if __name__ == "__main__":
    sys.argv = ["resume=true" if a == "--resume" else a for a in sys.argv]
    main()
