"""JEPA encoder pretraining: ``python experiments/pretrain_encoder.py env=reacher [--resume]``.

Trains on the train split of the dataset (collected first when missing), logs to
``out_dir/log.csv``, plots ``out_dir/loss.png``, checkpoints to ``out_dir/checkpoint``
and ends with a linear probe of the frozen encoder against a randomly initialised
one, on the physical quantities one frame shows (``out_dir/summary.json``). Runs under
``torchrun`` unchanged.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig

import envs
from experiments.conf import entry_point, to_object
from experiments.provenance import device_description, git_commit, write_json
from experiments.runs import training_run
from experiments.schemas import PretrainConfig
from worldmodel.jepa import JEPA, PretrainObjective, linear_probe
from worldmodel.training import RepresentationCollapse, Trainer, plot_log, shutdown_distributed
from worldmodel.training.rundir import RUN_KEY


def run(cfg: PretrainConfig) -> dict:
    """Pretrain in ``cfg.out_dir``, locked for the run (see ``experiments.runs.training_run``)."""
    with training_run(cfg) as dataset:
        return train(cfg, dataset)


def train(cfg: PretrainConfig, dataset) -> dict:
    out = Path(cfg.out_dir)
    meta = {"dataset": str(dataset.path), "dataset_checksum": dataset.manifest["checksum"], "commit": git_commit(),
            RUN_KEY: asdict(cfg)}
    trainer = Trainer(PretrainObjective(cfg.model, cfg.train, dataset.split("train")), cfg.train, out, meta)
    if cfg.resume and trainer.resume():
        print(f"resuming {out}/checkpoint at step {trainer.step}")
    start = time.perf_counter()
    collapsed = None
    try:
        log = trainer.run()
    except RepresentationCollapse as err:
        collapsed, log = str(err), trainer.log_rows
        print(f"stopped: {err}")
        trainer.save()
    summary = {"steps": trainer.step, "wall_seconds": time.perf_counter() - start, "collapsed": collapsed,
               "final_loss": log[-1]["jepa"] if log else None, "device": device_description()}
    if trainer.rank == 0:
        if log:
            plot_log(log, out / "loss.png", [("JEPA loss", ["jepa"], True), ("target emb. std", ["emb_std"], False),
                                             ("effective rank", ["eff_rank"], False)])
        summary["probe"] = probe(trainer.model, cfg, dataset)
        write_json(out / "summary.json", summary)
    shutdown_distributed()
    return summary


def probe(model: JEPA, cfg: PretrainConfig, dataset) -> dict:
    """Linear probe R^2 of the pretrained (EMA) encoder next to a random-init one, on the quantities
    one frame shows (the env's angles and positions)."""
    quantities = [q for q in envs.get_spec(cfg.env.name).quantities if q.static]
    train, test = dataset.split("train"), dataset.split("heldout")
    kw = dict(n_train=cfg.probe_train_frames, n_test=cfg.probe_test_frames, seed=cfg.train.seed)
    torch.manual_seed(cfg.train.seed + 100)
    random_encoder = JEPA(cfg.model).encoder.to(next(model.parameters()).device)
    return {"pretrained": linear_probe(model.frozen_encoder, train, test, quantities, **kw),
            "random_init": linear_probe(random_encoder, train, test, quantities, **kw)}


@entry_point("pretrain")
def main(cfg: DictConfig) -> None:
    config: PretrainConfig = to_object(cfg)
    summary = run(config)
    if "probe" in summary:
        p, r = summary["probe"]["pretrained"], summary["probe"]["random_init"]
        print(f"\n{summary['steps']} steps in {summary['wall_seconds']:.0f} s on {summary['device']}; "
              f"final JEPA loss {summary['final_loss']:.4f}" + (f"; COLLAPSED: {summary['collapsed']}"
                                                               if summary["collapsed"] else ""))
        print(f"linear probe R^2 on held-out frames ({p['test_frames']}):   pretrained   random-init")
        for key in p["r2_by_quantity"]:
            print(f"  {key:<20} {p['r2_by_quantity'][key]:>32.3f} {r['r2_by_quantity'][key]:>13.3f}")
        print(f"  {'mean':<20} {p['r2_mean']:>32.3f} {r['r2_mean']:>13.3f}")
        print(f"outputs in {config.out_dir}/ (log.csv, loss.png, summary.json, checkpoint/)")


if __name__ == "__main__":
    main()
