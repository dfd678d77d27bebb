"""Goal-image planning protocol: ``python experiments/plan.py env=reacher``.

Draws start/goal tasks from the held-out split (collecting the dataset first when it
is missing), runs every agent on the same tasks, prints success rates with Wilson
95 % intervals, and writes a JSON result to ``output_dir``.

No learned planner exists yet (issues 3-4): this runs the reference policies that
every planner result is reported next to.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

import envs
from experiments.conf import CONFIG_DIR, to_object
from worldmodel.data import open_dataset
from worldmodel.data.collect import ensure_dataset
from worldmodel.configs import PlanConfig
from worldmodel.evaluation import evaluate, make_baseline, sample_goal_tasks


def run(cfg: PlanConfig) -> dict:
    spec = envs.get_spec(cfg.env.name)
    dataset = open_dataset(ensure_dataset(cfg))
    tasks = sample_goal_tasks(
        dataset.split("heldout"), spec, cfg.episodes, cfg.goal_offset, np.random.default_rng(cfg.task_seed)
    )
    env = cfg.env.make(max_episode_steps=cfg.budget)
    results = []
    for name in cfg.baselines:
        agent = make_baseline(name, env.action_space, np.random.default_rng(cfg.task_seed + 1))
        results.append(evaluate(env, spec, tasks, agent, cfg.budget, progress=cfg.progress))
    env.close()
    return {
        "protocol": {
            "env": spec.gym_id,
            "image_size": cfg.env.image_size,
            "dataset": str(dataset.path),
            "dataset_checksum": dataset.manifest["checksum"],
            "split": "heldout",
            "eval_seed": dataset.manifest["eval_seed"],
            "task_seed": cfg.task_seed,
            "episodes": cfg.episodes,
            "goal_offset": cfg.goal_offset,
            "budget": cfg.budget,
            "success_threshold": spec.success_threshold,
        },
        "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "results": results,
    }


def report(summary: dict) -> str:
    lines = [f"{'agent':<10} {'success':>8} {'wilson95':>16} {'median best err':>16} {'ms/act':>8}"]
    for r in summary["results"]:
        lo, hi = r["wilson95"]
        lines.append(
            f"{r['agent']:<10} {r['successes']:>3}/{r['episodes']:<4} [{lo:6.1%}, {hi:6.1%}] "
            f"{r['median_best_goal_error']:>16.3f} {r['mean_act_ms']:>8.2f}"
        )
    return "\n".join(lines)


@hydra.main(config_path=CONFIG_DIR, config_name="plan", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config: PlanConfig = to_object(cfg)
    summary = run(config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"plan-{config.env.name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)
    p = summary["protocol"]
    print(f"\n{p['env']} goal-image protocol: {p['episodes']} tasks from {p['dataset']} (eval seed {p['eval_seed']}),")
    print(f"goal {p['goal_offset']} steps ahead, budget {p['budget']} steps, success = joint error <= "
          f"{p['success_threshold']} rad")
    print(report(summary))
    print("no learned planner yet: these are the reference policies (random, zero) it will be compared with")
    print(f"result written to {path}")


if __name__ == "__main__":
    main()
