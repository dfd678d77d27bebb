"""Distil a world model's predictor into a narrower one:
``python experiments/distill_dynamics.py env=reacher [--resume]``.

The student keeps the teacher's frame encoder and head (the same latents and goal costs) and
learns to reproduce the teacher's open-loop rollouts under the action blocks a planner tries
(see ``worldmodel.dynamics.distill``). Writes ``out_dir/checkpoint`` (the whole student, loaded by
``plan.py model=<out_dir>/checkpoint``), ``log.csv``, ``loss.png`` and ``summary.json``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig

from experiments.conf import entry_point, to_object
from experiments.provenance import device_description, git_commit, write_json
from experiments.runs import check_trained_env, training_run
from experiments.schemas import DistillExperimentConfig
from worldmodel.checkpoint import WEIGHTS
from worldmodel.dynamics import FeatureCache, WindowBatches, WorldModel
from worldmodel.dynamics.distill import DistillObjective, action_box, student_of
from worldmodel.files import file_sha256
from worldmodel.training import Trainer, plot_log, resolve_device
from worldmodel.training.rundir import RUN_KEY

TEACHER_KEY = "teacher_weights_sha256"  # the teacher's weights, recorded in the student and checked on resume


def run(cfg: DistillExperimentConfig) -> dict:
    trained = check_trained_env(cfg.env, cfg.model)
    device = resolve_device(cfg.train.device)
    teacher = WorldModel.from_pretrained(cfg.model, device)
    upstream = {TEACHER_KEY: file_sha256(Path(cfg.model) / WEIGHTS)}
    with training_run(cfg, upstream=upstream) as dataset:
        return train(cfg, teacher, trained, dataset, upstream)


def train(cfg: DistillExperimentConfig, teacher: WorldModel, trained: dict, dataset, upstream: dict) -> dict:
    out = Path(cfg.out_dir)
    start = time.perf_counter()
    checksum = dataset.manifest["checksum"]
    batches = {}
    for split in ("train", "val"):
        episodes = dataset.split(split)
        table = teacher.encoder.feature_table(episodes, FeatureCache(Path(cfg.feature_cache), f"{checksum}/{split}"),
                                              cfg.train.progress)
        batches[split] = WindowBatches(teacher, episodes, table, cfg.train.horizon)
    torch.manual_seed(cfg.train.seed)
    student = student_of(teacher, cfg.hidden, cfg.depth)
    low, high = action_box(dataset.split("train").actions)
    objective = DistillObjective(teacher, student, cfg.train, batches["train"], batches["val"], low, high)
    meta = {"dataset": str(dataset.path), "dataset_checksum": checksum, "distilled_from": cfg.model, **upstream,
            **{k: trained[k] for k in ("env", "image_size", "env_kwargs", "encoder_checkpoint") if k in trained},
            "commit": git_commit(), RUN_KEY: asdict(cfg)}
    trainer = Trainer(objective, cfg.train, out, meta)
    if cfg.resume and trainer.resume():
        print(f"resuming {out}/checkpoint at step {trainer.step}")
    log = trainer.run()
    val = objective.validate()
    summary = {"steps": trainer.step, "wall_seconds": time.perf_counter() - start, "device": device_description(),
               "teacher": cfg.model, "hidden": cfg.hidden, "depth": cfg.depth, "val": val,
               "predictor_params": {"teacher": sum(p.numel() for p in teacher.predictor.parameters()),
                                    "student": sum(p.numel() for p in student.predictor.parameters())}}
    plot_log(log, out / "loss.png", [("latent MSE to the teacher", ["rollout", "one_step", "val_rollout",
                                                                     "val_one_step"], True)])
    write_json(out / "summary.json", summary)
    return summary


@entry_point("distill_dynamics")
def main(cfg: DictConfig) -> None:
    config: DistillExperimentConfig = to_object(cfg)
    summary = run(config)
    v, n = summary["val"], summary["predictor_params"]
    print(f"\n{summary['steps']} steps in {summary['wall_seconds']:.0f} s on {summary['device']}; predictor "
          f"{n['student']:,} parameters (teacher {n['teacher']:,})")
    print(f"val MSE to the teacher: rollout {v['rollout']:.4f}, one-step {v['one_step']:.4f}; rollout MSE to the "
          f"data: student {v['data_rollout']:.4f}, teacher {v['teacher_data_rollout']:.4f} (standardised latents)")
    print(f"outputs in {config.out_dir}/; plan with it: python experiments/plan.py env={config.env.name} "
          f"model={config.out_dir}/checkpoint")


if __name__ == "__main__":
    main()
