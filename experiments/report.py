"""What an evaluation hands back: each agent's summary (its tasks, its groups, the slow level's share of a
hierarchical agent's planning), the run's files (the result JSON, the GIFs and their names), and the
tables ``plan.py`` prints."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from experiments.agents import Levels
from experiments.provenance import device_description, git_commit, write_json
from experiments.schemas import PlanConfig
from planners.hierarchy import HierarchicalAgent
from worldmodel.evaluation import episode_video, summarize_groups
from worldmodel.hierarchy import ATLAS, Atlas

RESULTS_PER_TASK = ("success", "steps", "best_goal_error", "final_goal_error")


def run_stem(cfg: PlanConfig) -> str:
    """The name of this run's files (``plan-<env>-<time>-<pid>``): two runs into one ``output_dir``,
    even in the same second, never share one."""
    return f"plan-{cfg.env.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def agent_summary(cfg: PlanConfig, agent, tasks, per_task, summary: dict) -> dict:
    """``summary`` (``evaluate_agent``'s) with the slow level's share of a hierarchical agent's planning,
    the maze protocol's per-bin results, and every task's outcome."""
    if isinstance(agent, HierarchicalAgent):
        summary.update(level_split(agent, summary))
    if cfg.protocol == "maze":
        summary["groups"] = summarize_groups(agent.name, tasks, per_task)
    summary["tasks"] = [{**t.describe, **{k: getattr(r, k) for k in RESULTS_PER_TASK}} for t, r in zip(tasks, per_task)]
    return summary


def level_split(agent: HierarchicalAgent, summary: dict) -> dict:
    """The slow level's part of a hierarchical agent's planning time and FLOPs per control step (from the
    share it took of the replans run in this invocation; the rest is level 1's)."""
    out = {}
    if sum(agent.plan_seconds) > 0 and "plan_ms_per_step" in summary:
        out["slow_ms_per_step"] = summary["plan_ms_per_step"] * sum(agent.slow_seconds) / sum(agent.plan_seconds)
    if sum(agent.plan_flops) > 0 and "gflops_per_step" in summary:
        out["slow_gflops_per_step"] = summary["gflops_per_step"] * sum(agent.slow_flops) / sum(agent.plan_flops)
    return out


def video_name(cfg: PlanConfig, agent_name: str, task, index: int, success: bool) -> str:
    """A GIF's file name: env, agent, the task's group and its index in the whole draw, and the outcome."""
    tag = f"{task.group}-" if task.group else ""
    return f"{cfg.env.name}-{agent_name}-{tag}task{index}-{'success' if success else 'fail'}.gif"


def atlas_of(cfg: PlanConfig, levels: Levels) -> Atlas | None:
    """The slow level's atlas of training frames (to show subgoals in videos), when it has one."""
    if levels.slow is None:
        return None
    path = Path(cfg.slow_path) / ATLAS
    return Atlas(path) if path.exists() else None


def subgoal_panels(atlas: Atlas | None, subgoals: list | None, frames: int) -> list[np.ndarray] | None:
    """Per video frame, the atlas image nearest to the subgoal in force at that step (the goal panel's
    place is kept by the goal itself where the slow level handed the goal down)."""
    if atlas is None or not subgoals:
        return None
    panels, k = [], 0
    for t in range(frames):  # frame t is seen before action t; the subgoal chosen at step s acts from s on
        while k + 1 < len(subgoals) and subgoals[k + 1][0] <= t:
            k += 1
        panels.append(atlas.nearest(subgoals[k][1]))
    return panels


def write_videos(cfg: PlanConfig, spec, agent_name: str, tasks, per_task, shown: set[int],
                 folder: Path, atlas: Atlas | None) -> list[str]:
    """The GIFs (current view | goal, and the subgoal where there is one) of the tasks ``shown`` that ran
    here (tasks resumed from the journal have no frames)."""
    videos = []
    for i in sorted(shown):
        r = per_task[i]
        if r.frames:
            index = cfg.only_tasks[i] if cfg.only_tasks else i
            panels = subgoal_panels(atlas, r.subgoals, len(r.frames))
            path = folder / video_name(cfg, agent_name, tasks[i], index, r.success)
            videos.append(str(episode_video(r.frames, tasks[i].goal_obs, path, spec, subgoals=panels)))
    return videos


def result(cfg: PlanConfig, spec, dataset, header: dict, levels: Levels, results: list[dict], videos: list[str],
           out: Path, stem: str) -> dict:
    """The evaluation's result (its protocol, the models' weights, each agent's summary), written to
    ``out/<stem>.json``."""
    common = {"env": spec.gym_id, "env_settings": asdict(cfg.env), "image_size": cfg.env.image_size,
              "task_seed": cfg.task_seed, "episodes": cfg.episodes, "success_threshold": spec.success_threshold,
              "goal_error": spec.goal_error_label, "goal_error_unit": spec.goal_error_unit}
    if cfg.protocol == "maze":
        protocol = {"name": "maze", **common, "bins": {k: asdict(b) for k, b in cfg.bins.items()},
                    "tasks_drawn": "per bin: distinct ordered (start cell, goal cell) pairs whose shortest path "
                                   "falls in the bin, without replacement; ball at rest at the cells' centres"}
    else:
        protocol = {"name": "recorded", **common, "dataset": str(dataset.path),
                    "dataset_checksum": dataset.manifest["checksum"], "split": "heldout",
                    "eval_seed": dataset.manifest["eval_seed"], "goal_offset": cfg.goal_offset, "budget": cfg.budget,
                    "tasks_drawn": "distinct (episode, start) pairs, without replacement"}
    weights = header["model"] or {}
    summary = {
        "protocol": protocol,
        "task_journal": str(out / f"{stem}.tasks.jsonl"),
        "model": cfg.model, **({"model_weights_sha256": weights["weights_sha256"]} if levels.model else {}),
        "mpc": OmegaConf.to_container(OmegaConf.structured(cfg.mpc)),
        **({"slow": asdict(cfg.slow), "slow_model": cfg.slow_path,
            "slow_weights_sha256": weights["slow_weights_sha256"]} if levels.slow is not None else {}),
        **({"reach_weights_sha256": weights["reach_weights_sha256"]} if levels.temporal is not None else {}),
        **({"reach": {k: v for k, v in levels.reach.items() if k != "distances"}} if levels.reach else {}),
        "variants": {k: asdict(v) for k, v in cfg.variants.items()},
        "device": device_description(), "commit": git_commit(), "results": results, "videos": videos,
    }
    summary["result"] = str(write_json(out / f"{stem}.json", summary))
    return summary


def headline(summary: dict) -> str:
    """What was evaluated: the env, the protocol, the success test, the model and the device."""
    p = summary["protocol"]
    if p["name"] == "maze":
        first = (f"{p['env']} maze protocol ({p['env_settings'].get('maze', '')} layout): {p['episodes']} tasks per "
                 f"distance bin, start and goal at rest in free cells, task seed {p['task_seed']},\n")
    else:
        first = (f"{p['env']} goal-image protocol: {p['episodes']} tasks from {p['dataset']} (eval seed "
                 f"{p['eval_seed']}),\ngoal {p['goal_offset']} steps ahead, budget {p['budget']} steps, ")
    return (first + f"success = {p['goal_error']} <= {p['success_threshold']} {p['goal_error_unit']}; model "
            f"{summary['model'] or '(none)'} on {summary['device']}")


def table(summary: dict) -> str:
    """One row per agent (the ``recorded`` protocol) or per distance bin (``maze``), then each planner's
    time and FLOPs."""
    if summary["protocol"]["name"] == "maze":
        return bins_table(summary)
    unit = summary["protocol"]["goal_error_unit"]
    lines = [f"{'agent':<14} {'success':>8} {'wilson95':>16} {'median best err':>16} {'ms/replan':>10}"
             + (f"   (errors in {unit})" if unit else "")]
    for r in summary["results"]:
        lo, hi = r["wilson95"]
        plan_ms = f"{r['mean_plan_ms']:.1f}" if "mean_plan_ms" in r else "-"
        lines.append(f"{r['agent']:<14} {r['successes']:>3}/{r['episodes']:<4} [{lo:6.1%}, {hi:6.1%}] "
                     f"{r['median_best_goal_error']:>16.3f} {plan_ms:>10}")
    return "\n".join(lines + planning_lines(summary["results"]))


def planning_lines(results: list[dict]) -> list[str]:
    """Each planner's time per replan, and its planning time and model FLOPs per control step (what
    flat and hierarchical planning are compared on)."""
    lines = []
    for r in results:
        if "mean_plan_ms" in r:
            flops = f", {r['gflops_per_step']:.2f} GFLOP" if "gflops_per_step" in r else ""
            slow = (f" (slow level {r['slow_ms_per_step']:.0f} ms, {r.get('slow_gflops_per_step', 0):.2f} GFLOP)"
                    if "slow_ms_per_step" in r else "")
            lines.append(f"planning {r['agent']}: {r['mean_plan_ms']:.0f} ms/replan; per control step "
                         f"{r['plan_ms_per_step']:.0f} ms{flops}{slow}")
    return lines


def bins_table(summary: dict) -> str:
    """One row per distance bin, one column per agent: successes, rate and Wilson 95 % interval;
    then the planners' time per replan and the oracle's steps to success (what the budgets rest on)."""
    results, bins = summary["results"], summary["protocol"]["bins"]
    width = 24

    def cell(g: dict) -> str:
        lo, hi = g["wilson95"]
        return f"{g['successes']}/{g['episodes']} {g['success_rate']:4.0%} [{lo:.0%},{hi:.0%}]"

    lines = [f"{'bin':<14}{'budget':>7}  " + "".join(f"{r['agent']:>{width}}" for r in results)]
    for name, b in bins.items():
        label = f"{name} ({b['lo']}-{b['hi'] if b['hi'] < 1000 else ''})"
        lines.append(f"{label:<14}{b['budget']:>7}  " + "".join(f"{cell(r['groups'][name]):>{width}}" for r in results))
    finals = ["/".join(f"{g['median_final_goal_error']:.2f}" for g in r["groups"].values()) for r in results]
    lines.append(f"{'median final':<14}{'dist.':>7}  " + "".join(f"{f:>{width}}" for f in finals))
    lines += planning_lines(results)
    for r in results:
        if r["agent"].startswith("oracle"):
            lines.append("oracle steps to success (mean / max) vs budget: " + ", ".join(
                f"{k} {g['mean_steps_to_success'] or 0:.0f} / {g['max_steps_to_success'] or 0} vs {bins[k]['budget']}"
                for k, g in r["groups"].items()))
    return "\n".join(lines)
