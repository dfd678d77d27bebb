"""Goal-image planning protocol: ``python experiments/plan.py env=reacher``.

Draws distinct start/goal tasks from the held-out split (collecting the held-out episodes
first when they are missing; the training episodes are not needed), runs the latent MPC
planner with the world model ``model`` and the reference policies (random, zero) on the
same tasks, prints success rates with Wilson 95 % intervals and the planning time per
replan, and writes a JSON result and a few GIFs (current view | goal) to ``output_dir``.

Every finished task is appended to ``output_dir/plan-<env>-<hash>.tasks.jsonl`` as it
ends (``<hash>``: of every setting that decides the results), so a crash or Ctrl-C keeps
them and ``resume=true`` continues the evaluation where it stopped, with the same results.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import envs
from experiments.conf import CONFIG_DIR, to_object
from experiments.provenance import device_description, git_commit, write_json
from experiments.schemas import PlanConfig
from planners.cem import CEMConfig
from planners.mpc import LatentMPCAgent
from planners.oracle import OracleAgent
from worldmodel.data import load_dataset
from worldmodel.checkpoint import WEIGHTS
from worldmodel.evaluation import TaskJournal, episode_video, evaluate_agent, make_baseline, sample_goal_tasks
from worldmodel.dynamics import WorldModel
from worldmodel.files import config_hash, file_sha256, writable_dir
from worldmodel.training import resolve_device


def load_model(cfg: PlanConfig) -> WorldModel:
    """The world model ``cfg.model``, checked against the env before anything is collected."""
    if not Path(cfg.model).is_dir():
        raise FileNotFoundError(
            f"world model {cfg.model!r} not found (expected a checkpoint directory); build the default one with "
            f"`python experiments/build_default_model.py`, or pass model='' to run only the baselines"
        )
    model = WorldModel.from_pretrained(cfg.model, resolve_device(cfg.device))
    if model.image_shape[-1] != cfg.env.image_size:
        raise ValueError(f"model {cfg.model} takes {model.image_shape[-1]}px images, env gives "
                         f"{cfg.env.image_size}px")
    return model


def planner_agent(cfg: PlanConfig, model: WorldModel, env) -> LatentMPCAgent:
    gen = torch.Generator().manual_seed(cfg.task_seed)
    space = env.action_space
    return LatentMPCAgent(model, cfg.mpc, space.low, space.high, gen, name=f"{cfg.mpc.planner}-mpc")


def reference_agent(name: str, cfg: PlanConfig, env, spec):
    """``random``, ``zero``, or ``oracle``: CEM with the true simulator (the settings that
    PROTOCOL.md reports 20/20 with: 200 samples, 5 iterations, horizon 10, replanning every 2 steps)."""
    if name == "oracle":
        cem = CEMConfig(samples=200, elites=20, iterations=5)
        return OracleAgent(env, spec, cem, horizon=10, receding_horizon=2,
                           generator=torch.Generator().manual_seed(cfg.task_seed))
    return make_baseline(name, env.action_space, np.random.default_rng(cfg.task_seed + 1))


def protocol_header(cfg: PlanConfig, dataset) -> dict:
    """Every setting that decides an evaluation's per-task results."""
    model = {"weights_sha256": file_sha256(Path(cfg.model) / WEIGHTS)} if cfg.model else None
    return {"env": asdict(cfg.env), "dataset_checksum": dataset.manifest["checksum"], "task_seed": cfg.task_seed,
            "episodes": cfg.episodes, "goal_offset": cfg.goal_offset, "budget": cfg.budget, "model": model,
            "mpc": asdict(cfg.mpc), "baselines": list(cfg.baselines)}


def run(cfg: PlanConfig) -> dict:
    spec = envs.get_spec(cfg.env.name)
    out = writable_dir(cfg.output_dir, "output_dir")
    model = load_model(cfg) if cfg.model else None
    dataset = load_dataset(cfg, splits=("heldout",))
    tasks = sample_goal_tasks(
        dataset.split("heldout"), spec, cfg.episodes, cfg.goal_offset, np.random.default_rng(cfg.task_seed)
    )
    header = protocol_header(cfg, dataset)
    journal = TaskJournal(out / f"plan-{cfg.env.name}-{config_hash(header)}.tasks.jsonl", header, cfg.resume)
    env = cfg.env.make(max_episode_steps=cfg.budget)
    agents = [planner_agent(cfg, model, env)] if model is not None else []
    agents += [reference_agent(n, cfg, env, spec) for n in cfg.baselines]
    results, videos = [], []
    try:
        for agent in agents:
            record = min(cfg.videos, len(tasks)) if isinstance(agent, LatentMPCAgent) else 0
            summary, per_task = evaluate_agent(
                env, spec, tasks, agent, cfg.budget, progress=cfg.progress, record=record, seed=cfg.task_seed,
                done=journal.done.get(agent.name), on_result=lambda i, r, a=agent.name: journal.append(a, i, tasks[i], r))
            summary["tasks"] = [{"episode": t.episode, "start": t.start, "success": r.success, "steps": r.steps,
                                  "best_goal_error": r.best_goal_error, "final_goal_error": r.final_goal_error}
                                 for t, r in zip(tasks, per_task)]
            for i, r in enumerate(per_task[:record]):
                if r.frames:  # tasks resumed from the journal have no frames
                    name = f"{cfg.env.name}-{agent.name}-task{i}-{'success' if r.success else 'fail'}.gif"
                    videos.append(str(episode_video(r.frames, tasks[i].goal_obs, out / "videos" / name, spec)))
            results.append(summary)
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished task is kept in {journal.path}; run the same command with "
              f"resume=true to continue", file=sys.stderr)
        raise
    finally:
        env.close()
        journal.release()
    stem = f"plan-{cfg.env.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = {
        "protocol": {
            "env": spec.gym_id, "image_size": cfg.env.image_size, "dataset": str(dataset.path),
            "dataset_checksum": dataset.manifest["checksum"], "split": "heldout",
            "eval_seed": dataset.manifest["eval_seed"], "task_seed": cfg.task_seed, "episodes": cfg.episodes,
            "goal_offset": cfg.goal_offset, "budget": cfg.budget, "success_threshold": spec.success_threshold,
            "goal_error": spec.goal_error_label, "goal_error_unit": spec.goal_error_unit,
            "tasks_drawn": "distinct (episode, start) pairs, without replacement",
        },
        "task_journal": str(out / f"{stem}.tasks.jsonl"),
        "model": cfg.model, "mpc": OmegaConf.to_container(OmegaConf.structured(cfg.mpc)),
        "device": device_description(), "commit": git_commit(), "results": results, "videos": videos,
    }
    summary["result"] = str(write_json(out / f"{stem}.json", summary))
    journal.finish(out / f"{stem}.tasks.jsonl")  # kept next to the result; no longer an unfinished evaluation
    return summary


def report(summary: dict) -> str:
    unit = summary["protocol"]["goal_error_unit"]
    lines = [f"{'agent':<14} {'success':>8} {'wilson95':>16} {'median best err':>16} {'ms/replan':>10}"
             + (f"   (errors in {unit})" if unit else "")]
    for r in summary["results"]:
        lo, hi = r["wilson95"]
        plan_ms = f"{r['mean_plan_ms']:.1f}" if "mean_plan_ms" in r else "-"
        lines.append(f"{r['agent']:<14} {r['successes']:>3}/{r['episodes']:<4} [{lo:6.1%}, {hi:6.1%}] "
                     f"{r['median_best_goal_error']:>16.3f} {plan_ms:>10}")
    return "\n".join(lines)


@hydra.main(config_path=CONFIG_DIR, config_name="plan", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config: PlanConfig = to_object(cfg)
    summary = run(config)
    p = summary["protocol"]
    print(f"\n{p['env']} goal-image protocol: {p['episodes']} tasks from {p['dataset']} (eval seed {p['eval_seed']}),")
    print(f"goal {p['goal_offset']} steps ahead, budget {p['budget']} steps, success = {p['goal_error']} <= "
          f"{p['success_threshold']} {p['goal_error_unit']}; model {summary['model'] or '(none)'} on {summary['device']}")
    print(report(summary))
    for v in summary["videos"]:
        print(f"video: {v}")
    print(f"result written to {summary['result']}")


if __name__ == "__main__":
    sys.argv = ["resume=true" if a == "--resume" else a for a in sys.argv]
    main()
