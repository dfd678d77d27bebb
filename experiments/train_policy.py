"""Train the amortized goal-conditioned policy ``A = pi(s, z_goal)``:
``python experiments/train_policy.py env=reacher install=true [resume=true]``.

Reads the level-1 latents of every frame of the dataset level 1 trained on (through the feature
cache of ``train_dynamics.py``) and trains :class:`~worldmodel.policy.GoalPolicy` on hindsight
goals of one episode. The run checkpoints and resumes exactly; ``summary.json`` holds the validation
error of the action block (in half-widths of the action box, squared) next to that of the mean action.
With ``install=true`` the policy is written to ``<model>/policy``, where ``plan.py`` finds it
(``planners=[policy]``, ``mpc.proposal=policy``).
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig

from experiments.conf import entry_point, to_object
from experiments.provenance import device_description, write_json
from experiments.schemas import PolicyExperimentConfig
from experiments.train_slow import level1_latents, run_on_level1, trained_on
from worldmodel.dynamics import WorldModel
from worldmodel.policy import POLICY_DIR, GoalPolicy, HindsightStates, PolicyObjective
from worldmodel.training import Trainer, plot_log
from worldmodel.training.rundir import RUN_KEY


def run(cfg: PolicyExperimentConfig) -> dict:
    return run_on_level1(cfg, train)


def train(cfg: PolicyExperimentConfig, model: WorldModel, dataset, device: torch.device) -> dict:
    out = Path(cfg.out_dir)
    start = time.perf_counter()
    latents = {s: level1_latents(model, dataset, s, cfg.feature_cache, cfg.train.progress) for s in ("train", "val")}
    examples = {s: HindsightStates(dataset.split(s), latents[s], model.layout, cfg.policy.max_steps) for s in latents}
    with closing(cfg.env.make()) as env:
        space = env.action_space
    torch.manual_seed(cfg.train.seed)
    policy = GoalPolicy(model.layout, cfg.policy, space.low, space.high)
    policy.fit_scale(examples["train"].fixed(8192, seed=cfg.train.seed + 3)[0])
    extra = trained_on(cfg, dataset)
    objective = PolicyObjective(policy, cfg.train, examples["train"], examples["val"], world=model)
    trainer = Trainer(objective, cfg.train, out, {**extra, RUN_KEY: asdict(cfg)})
    if cfg.resume and trainer.resume():
        print(f"resuming {out}/checkpoint at step {trainer.step}")
    log = trainer.run()
    plot_log(log, out / "loss.png", [("action error (half-widths, squared)", ["mse", "val_mse", "val_mse_mean_action"],
                                      True), ("goal distance", ["plan"], True),
                                     ("distance left after the rollout", ["val_distance_left"], False)])
    summary = {"device": device_description(), "wall_seconds": time.perf_counter() - start,
               "val": {k: log[-1][k] for k in ("val_mse", "val_mse_mean_action", "val_distance_left")}}
    for target in [out / POLICY_DIR] + ([Path(cfg.model) / POLICY_DIR] if cfg.install else []):
        policy.eval().save_pretrained(target, extra)
    if cfg.install:
        summary["installed"] = str(Path(cfg.model) / POLICY_DIR)
    write_json(out / "summary.json", summary)
    return summary


@entry_point("train_policy")
def main(cfg: DictConfig) -> None:
    config: PolicyExperimentConfig = to_object(cfg)
    summary = run(config)
    v = summary["val"]
    print(f"\namortized policy in {summary['wall_seconds']:.0f} s on {summary['device']}: val action error "
          f"{v['val_mse']:.3f} (the mean action: {v['val_mse_mean_action']:.3f}; half-widths, squared); its rollout "
          f"through the model leaves {v['val_distance_left']:.0%} of the latent distance to the goal")
    print(f"outputs in {config.out_dir}/" + (f"; installed in {summary['installed']}" if config.install else ""))


if __name__ == "__main__":
    main()
