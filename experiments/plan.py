"""Goal-image planning: ``python experiments/plan.py env=reacher`` or ``env=pointmaze``.

Draws distinct start/goal tasks, runs the latent MPC planners with the world model ``model``
and the reference policies (random, zero, oracle) on the same tasks, prints success rates with
Wilson 95 % intervals and the planning time per replan, and writes a JSON result and a few
GIFs (current view | goal) to ``output_dir``. Two protocols:

- ``recorded`` (Reacher): tasks from the held-out split (its episodes are collected first
  when missing; the training episodes are not needed), the goal ``goal_offset`` steps after
  the start, one budget;
- ``maze`` (the point maze): start and goal at rest in free cells, ``episodes`` tasks in each
  distance bin (near / mid / far by shortest path), each bin with its own budget; results
  per bin.

Every finished task is appended to ``output_dir/plan-<env>-<hash>.tasks.jsonl`` as it
ends (``<hash>``: of every setting that decides the results), so a crash or Ctrl-C keeps
them and ``resume=true`` continues the evaluation where it stopped, with the same results;
each line carries a hash chained to the header's, so a journal edited by hand is refused. The
result ``plan-<env>-<time>-<pid>.json``, its journal and its videos (``videos/<that stem>/``)
carry the run's own name: runs into one ``output_dir`` never overwrite each other.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import envs
from experiments.conf import entry_point, to_object
from experiments.provenance import device_description, git_commit, write_json
from experiments.runs import check_trained_env
from experiments.schemas import PlanConfig
from planners.cem import CEMConfig
from planners.hierarchy import NEEDS_REACH, HierarchicalAgent, hierarchical_agent
from planners.mpc import LatentMPCAgent
from planners.oracle import OracleAgent
from worldmodel.data import load_dataset
from worldmodel.checkpoint import WEIGHTS
from worldmodel.evaluation import (TaskJournal, episode_video, evaluate_agent, make_baseline, sample_distance_tasks,
                                   sample_goal_tasks, summarize_groups, task_seed)
from worldmodel.evaluation.reach import reach_threshold
from worldmodel.dynamics import WorldModel
from worldmodel.files import config_hash, file_sha256, writable_dir
from worldmodel.hierarchy import ATLAS, Atlas, SlowModel, load_slow
from worldmodel.hierarchy.reach import REACH_DIR, TemporalDistance
from worldmodel.training import resolve_device


def load_model(cfg: PlanConfig) -> WorldModel:
    """The world model ``cfg.model``, checked against the env before anything is collected."""
    if not Path(cfg.model).is_dir():
        raise FileNotFoundError(
            f"world model {cfg.model!r} not found (expected a checkpoint directory); build the default one with "
            f"`python experiments/build_default_model.py`, or pass model='' to run only the baselines"
        )
    check_trained_env(cfg.env, cfg.model)
    model = WorldModel.from_pretrained(cfg.model, resolve_device(cfg.device), cfg.allow_unverified)
    if model.image_shape[-1] != cfg.env.image_size:
        raise ValueError(f"model {cfg.model} takes {model.image_shape[-1]}px images, env gives "
                         f"{cfg.env.image_size}px")
    return model


def load_slow_level(cfg: PlanConfig, model: WorldModel) -> SlowModel:
    """The slow level ``cfg.slow_path``, checked against the env and the level-1 model's layout."""
    if Path(cfg.slow_path).is_dir():
        trained = check_trained_env(cfg.env, cfg.slow_path, "slow level")
        level1 = trained.get("level1_weights_sha256")  # slow levels trained before it was recorded: unchecked
        if level1 is not None and level1 != file_sha256(Path(cfg.model) / WEIGHTS):
            raise ValueError(f"slow level {cfg.slow_path} was trained on the latents of the level-1 model "
                             f"{trained.get('level1')!r} (weights sha256 {level1[:12]}...), not on those of "
                             f"{cfg.model}; train one for it with `python experiments/train_slow.py model={cfg.model}`")
    return load_slow(cfg.slow_path, model.layout, model.device, cfg.allow_unverified)


def load_temporal_distance(cfg: PlanConfig, model: WorldModel) -> TemporalDistance:
    """The learned temporal distance ``<model>/reach`` (the hand-down rule ``learned``), checked against
    the env and the level-1 model whose latents it reads."""
    path = Path(cfg.model) / REACH_DIR
    if path.is_dir():
        trained = check_trained_env(cfg.env, str(path), "learned temporal distance")
        level1 = trained.get("level1_weights_sha256")
        if level1 is not None and level1 != file_sha256(Path(cfg.model) / WEIGHTS):
            raise ValueError(f"the temporal distance {path} was trained on the latents of another level-1 model "
                             f"({trained.get('level1')!r}); train one with `python experiments/train_reach.py "
                             f"model={cfg.model} install=true`")
    head = TemporalDistance.from_pretrained(path, model.device, cfg.allow_unverified)
    if head.latent_dim != model.layout.latent_dim:
        raise ValueError(f"the temporal distance {path} reads {head.latent_dim}-dim latents, the model has "
                         f"{model.layout.latent_dim}")
    return head


def planner_agents(cfg: PlanConfig, model: WorldModel, slow: SlowModel | None, env, planner: str,
                   reach: float | None = None, temporal: TemporalDistance | None = None) -> list:
    """The flat agent of ``planner`` (``<planner>-mpc``) and, with a slow level, the hierarchical one
    (``<planner>-hier``, handing the goal down within ``reach``), each with its own generator seeded alike."""
    space, mpc = env.action_space, replace(cfg.mpc, planner=planner)
    agents = [LatentMPCAgent(model, mpc, space.low, space.high, torch.Generator().manual_seed(cfg.task_seed),
                             name=f"{planner}-mpc")] if cfg.flat else []
    if slow is not None:
        agents.append(hierarchical_agent(model, slow, mpc, cfg.slow, space.low, space.high,
                                         torch.Generator().manual_seed(cfg.task_seed), name=f"{planner}-hier",
                                         reach=reach, temporal=temporal))
    return agents


def variant_agent(cfg: PlanConfig, model: WorldModel, env, name: str) -> LatentMPCAgent:
    """A flat agent with the MPC settings of ``cfg.variants[name]``, seeded like the others."""
    space = env.action_space
    return LatentMPCAgent(model, cfg.variants[name], space.low, space.high,
                          torch.Generator().manual_seed(cfg.task_seed), name=cfg.variant_name(name))


def reference_agent(name: str, cfg: PlanConfig, env, spec):
    """``random``, ``zero``, or ``oracle``: CEM with the true simulator (``cfg.oracle``; by default the
    settings docs/protocol.md gives for Reacher: 200 samples, 5 iterations, horizon 10, replanning every
    2 steps), aiming at the env's privileged waypoints where it has them (the maze's shortest path)."""
    if name == "oracle":
        o = cfg.oracle
        cem = CEMConfig(samples=o.samples, elites=o.elites, iterations=o.iterations)
        return OracleAgent(env, spec, cem, horizon=o.horizon, receding_horizon=o.receding_horizon,
                           generator=torch.Generator().manual_seed(cfg.task_seed))
    return make_baseline(name, env.action_space, np.random.default_rng(cfg.task_seed + 1))


def atlas_of(cfg: PlanConfig, slow: SlowModel | None) -> Atlas | None:
    """The slow level's atlas of training frames (to show subgoals in videos), when it has one."""
    if slow is None:
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
        panels.append(atlas.nearest(subgoals[k][1][0]))
    return panels


def protocol_header(cfg: PlanConfig, dataset) -> dict:
    """Every setting that decides an evaluation's per-task results."""
    model = {"weights_sha256": file_sha256(Path(cfg.model) / WEIGHTS)} if cfg.model else None
    if model is not None and cfg.hierarchy:
        model["slow_weights_sha256"] = file_sha256(Path(cfg.slow_path) / WEIGHTS)
        if cfg.slow.hand_down == "learned":
            model["reach_weights_sha256"] = file_sha256(Path(cfg.model) / REACH_DIR / WEIGHTS)
    tasks = ({"protocol": "maze", "bins": {k: asdict(b) for k, b in cfg.bins.items()}} if cfg.protocol == "maze" else
             {"dataset_checksum": dataset.manifest["checksum"], "goal_offset": cfg.goal_offset, "budget": cfg.budget})
    return {"env": asdict(cfg.env), **tasks, "task_seed": cfg.task_seed, "episodes": cfg.episodes, "model": model,
            "mpc": asdict(cfg.mpc), **({"slow": asdict(cfg.slow)} if cfg.hierarchy else {}),
            "planners": cfg.planner_names, "baselines": list(cfg.baselines),
            **({"variants": {k: asdict(v) for k, v in cfg.variants.items()}} if cfg.variants else {}),
            **({"oracle": asdict(cfg.oracle)} if "oracle" in cfg.baselines else {}),
            **({"only_tasks": list(cfg.only_tasks)} if cfg.only_tasks else {})}


def draw_tasks(cfg: PlanConfig, spec, env):
    """The evaluation's tasks, and the dataset they come from (``None`` for the maze protocol)."""
    rng = np.random.default_rng(cfg.task_seed)
    if cfg.protocol == "maze":
        bins = {k: (b.lo, b.hi) for k, b in cfg.bins.items()}
        return sample_distance_tasks(env, spec, bins, cfg.episodes, {k: b.budget for k, b in cfg.bins.items()},
                                     rng), None
    dataset = load_dataset(cfg, splits=("heldout",), progress=cfg.progress)
    return sample_goal_tasks(dataset.split("heldout"), spec, cfg.episodes, cfg.goal_offset, rng), dataset


def recorded_tasks(tasks, videos: int) -> set[int]:
    """Indices of the tasks a planner's videos show: the first ``videos`` of each group."""
    first: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        first.setdefault(t.group, []).append(i)
    return {i for idx in first.values() for i in idx[:videos]}


def run(cfg: PlanConfig) -> dict:
    spec = envs.get_spec(cfg.env.name)
    out = writable_dir(cfg.output_dir, "output_dir")
    model = load_model(cfg) if cfg.model else None
    slow = load_slow_level(cfg, model) if model is not None and cfg.hierarchy else None
    temporal = load_temporal_distance(cfg, model) if slow is not None and cfg.slow.hand_down == "learned" else None
    env = cfg.env.make(max_episode_steps=cfg.max_budget)
    try:
        tasks, dataset = draw_tasks(cfg, spec, env)
        tasks = [replace(t, seed=task_seed(cfg.task_seed, i)) for i, t in enumerate(tasks)]
        if cfg.only_tasks:
            if not all(0 <= i < len(tasks) for i in cfg.only_tasks):
                raise ValueError(f"only_tasks={cfg.only_tasks}: the draw has tasks 0..{len(tasks) - 1}")
            tasks = [tasks[i] for i in cfg.only_tasks]
        header = protocol_header(cfg, dataset)
        # this run's files: two runs into one output_dir, even in the same second, never share a name
        stem = f"plan-{cfg.env.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        journal = TaskJournal(out / f"plan-{cfg.env.name}-{config_hash(header)}.tasks.jsonl", header, cfg.resume)
    except BaseException:
        env.close()
        raise
    reach = None
    if slow is not None and cfg.slow.hand_down in NEEDS_REACH:
        calibration = cfg.env.make(max_episode_steps=cfg.max_budget)
        try:
            reach = reach_threshold(calibration, spec, model, cfg.slow.reach_quantile)
        finally:
            calibration.close()
        print(f"reach threshold {reach['threshold']:.4g}: the {reach['quantile']:.0%} quantile of the latent "
              f"distance of {reach['pairs']} image pairs within the success tolerance")
    agents = [a for p in cfg.planner_names
              for a in planner_agents(cfg, model, slow, env, p, reach and reach["threshold"], temporal)] if model else []
    agents += [variant_agent(cfg, model, env, name) for name in cfg.variants] if model else []
    agents += [reference_agent(n, cfg, env, spec) for n in cfg.baselines]
    results, videos = [], []
    atlas = atlas_of(cfg, slow)
    try:
        for agent in agents:
            record = ((set(range(len(tasks))) if cfg.only_tasks else recorded_tasks(tasks, cfg.videos))
                      if isinstance(agent, (LatentMPCAgent, HierarchicalAgent)) else set())
            subgoals: dict[int, list] = {}  # per recorded task: the (step, latent) of each subgoal

            def finished(i, r, agent=agent, record=record, subgoals=subgoals):
                journal.append(agent.name, i, tasks[i], r)
                if i in record and hasattr(agent, "subgoals"):
                    subgoals[i] = list(agent.subgoals)

            summary, per_task = evaluate_agent(env, spec, tasks, agent, cfg.budget, progress=cfg.progress,
                                               record=record, done=journal.done.get(agent.name), on_result=finished)
            if isinstance(agent, HierarchicalAgent):
                summary.update(level_split(agent, summary))
            if cfg.protocol == "maze":
                summary["groups"] = summarize_groups(agent.name, tasks, per_task)
            summary["tasks"] = [{**t.describe, "success": r.success, "steps": r.steps,
                                  "best_goal_error": r.best_goal_error, "final_goal_error": r.final_goal_error}
                                 for t, r in zip(tasks, per_task)]
            for i in sorted(record):
                r = per_task[i]
                if r.frames:  # tasks resumed from the journal have no frames
                    tag = f"{tasks[i].group}-" if tasks[i].group else ""
                    index = cfg.only_tasks[i] if cfg.only_tasks else i
                    name = f"{cfg.env.name}-{agent.name}-{tag}task{index}-{'success' if r.success else 'fail'}.gif"
                    panels = subgoal_panels(atlas, subgoals.get(i), len(r.frames))
                    video = out / "videos" / stem / name
                    videos.append(str(episode_video(r.frames, tasks[i].goal_obs, video, spec, subgoals=panels)))
            results.append(summary)
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished task is kept in {journal.path}; run the same command with "
              f"resume=true to continue", file=sys.stderr)
        raise
    finally:
        env.close()
        journal.release()
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
    summary = {
        "protocol": protocol,
        "task_journal": str(out / f"{stem}.tasks.jsonl"),
        "model": cfg.model, **({"model_weights_sha256": header["model"]["weights_sha256"]} if model else {}),
        "mpc": OmegaConf.to_container(OmegaConf.structured(cfg.mpc)),
        **({"slow": asdict(cfg.slow), "slow_model": cfg.slow_path,
            "slow_weights_sha256": header["model"]["slow_weights_sha256"]} if slow is not None else {}),
        **({"reach_weights_sha256": header["model"]["reach_weights_sha256"]} if temporal is not None else {}),
        **({"reach": {k: v for k, v in reach.items() if k != "distances"}} if reach else {}),
        "variants": {k: asdict(v) for k, v in cfg.variants.items()},
        "device": device_description(), "commit": git_commit(), "results": results, "videos": videos,
    }
    summary["result"] = str(write_json(out / f"{stem}.json", summary))
    journal.finish(out / f"{stem}.tasks.jsonl")  # kept next to the result; no longer an unfinished evaluation
    return summary


def report(summary: dict) -> str:
    if summary["protocol"]["name"] == "maze":
        return report_bins(summary)
    unit = summary["protocol"]["goal_error_unit"]
    lines = [f"{'agent':<14} {'success':>8} {'wilson95':>16} {'median best err':>16} {'ms/replan':>10}"
             + (f"   (errors in {unit})" if unit else "")]
    for r in summary["results"]:
        lo, hi = r["wilson95"]
        plan_ms = f"{r['mean_plan_ms']:.1f}" if "mean_plan_ms" in r else "-"
        lines.append(f"{r['agent']:<14} {r['successes']:>3}/{r['episodes']:<4} [{lo:6.1%}, {hi:6.1%}] "
                     f"{r['median_best_goal_error']:>16.3f} {plan_ms:>10}")
    return "\n".join(lines + planning_lines(summary["results"]))


def level_split(agent: HierarchicalAgent, summary: dict) -> dict:
    """The slow level's part of a hierarchical agent's planning time and FLOPs per control step (from the
    share it took of the replans run in this invocation; the rest is level 1's)."""
    out = {}
    if sum(agent.plan_seconds) > 0 and "plan_ms_per_step" in summary:
        out["slow_ms_per_step"] = summary["plan_ms_per_step"] * sum(agent.slow_seconds) / sum(agent.plan_seconds)
    if sum(agent.plan_flops) > 0 and "gflops_per_step" in summary:
        out["slow_gflops_per_step"] = summary["gflops_per_step"] * sum(agent.slow_flops) / sum(agent.plan_flops)
    return out


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


def report_bins(summary: dict) -> str:
    """One row per distance bin, one column per agent: successes, rate and Wilson 95 % interval;
    then the planners' time per replan and the oracle's steps to success (what the budgets rest on)."""
    results, bins = summary["results"], summary["protocol"]["bins"]
    cells = lambda g: [f"{g['successes']}/{g['episodes']} {g['success_rate']:4.0%} [{g['wilson95'][0]:.0%},"  # noqa: E731
                       f"{g['wilson95'][1]:.0%}]" for g in g]
    width = 24
    lines = [f"{'bin':<14}{'budget':>7}  " + "".join(f"{r['agent']:>{width}}" for r in results)]
    for name, b in bins.items():
        row = cells([r["groups"][name] for r in results])
        lines.append(f"{name + ' (' + str(b['lo']) + '-' + (str(b['hi']) if b['hi'] < 1000 else '') + ')':<14}"
                     f"{b['budget']:>7}  " + "".join(f"{c:>{width}}" for c in row))
    finals = ["/".join(f"{g['median_final_goal_error']:.2f}" for g in r["groups"].values()) for r in results]
    lines.append(f"{'median final':<14}{'dist.':>7}  " + "".join(f"{f:>{width}}" for f in finals))
    lines += planning_lines(results)
    for r in results:
        if r["agent"].startswith("oracle"):
            lines.append("oracle steps to success (mean / max) vs budget: " + ", ".join(
                f"{k} {g['mean_steps_to_success'] or 0:.0f} / {g['max_steps_to_success'] or 0} vs {bins[k]['budget']}"
                for k, g in r["groups"].items()))
    return "\n".join(lines)


@entry_point("plan")
def main(cfg: DictConfig) -> None:
    config: PlanConfig = to_object(cfg)
    summary = run(config)
    p = summary["protocol"]
    if p["name"] == "maze":
        print(f"\n{p['env']} maze protocol ({p['env_settings'].get('maze', '')} layout): {p['episodes']} tasks per "
              f"distance bin, start and goal at rest in free cells, task seed {p['task_seed']},")
    else:
        print(f"\n{p['env']} goal-image protocol: {p['episodes']} tasks from {p['dataset']} (eval seed "
              f"{p['eval_seed']}),\ngoal {p['goal_offset']} steps ahead, budget {p['budget']} steps,", end=" ")
    print(f"success = {p['goal_error']} <= {p['success_threshold']} {p['goal_error_unit']}; model "
          f"{summary['model'] or '(none)'} on {summary['device']}")
    print(report(summary))
    for v in summary["videos"]:
        print(f"video: {v}")
    print(f"result written to {summary['result']}")


if __name__ == "__main__":
    main()
