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

Under ``torchrun --nproc_per_node=N`` the tasks are dealt out to the ranks (task ``i`` to rank
``i mod N``, each rank on a device of its own, with a journal of its own), and rank 0 gathers
every task's result into the one result and one journal a single process would write; each task
keeps its seed, so the per-task results are those of one process.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack, closing
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch.distributed as dist
from omegaconf import DictConfig

import envs
from experiments import report
from experiments.agents import Levels, agent_names, make_agent, needs_policy
from experiments.conf import entry_point, to_object
from experiments.schemas import PlanConfig
from planners.hierarchy import HierarchicalAgent
from planners.mpc import LatentMPCAgent
from worldmodel.checkpoint import WEIGHTS
from worldmodel.data import load_dataset
from worldmodel.evaluation import (EpisodeResult, TaskJournal, batches_agent, evaluate_agent, sample_distance_tasks,
                                   sample_goal_tasks, summarize, task_seed)
from worldmodel.files import config_hash, file_sha256, writable_dir
from worldmodel.hierarchy.reach import REACH_DIR
from worldmodel.policy import POLICY_DIR
from worldmodel.training import distributed, shutdown_distributed


def protocol_header(cfg: PlanConfig, dataset) -> dict:
    """Every setting that decides an evaluation's per-task results."""
    model = {"weights_sha256": file_sha256(Path(cfg.model) / WEIGHTS)} if cfg.model else None
    if model is not None and cfg.hierarchy:
        model["slow_weights_sha256"] = file_sha256(Path(cfg.slow_path) / WEIGHTS)
        if cfg.slow.hand_down == "learned":
            model["reach_weights_sha256"] = file_sha256(Path(cfg.model) / REACH_DIR / WEIGHTS)
    if model is not None and needs_policy(cfg):
        model["policy_weights_sha256"] = file_sha256(Path(cfg.model) / POLICY_DIR / WEIGHTS)
    tasks = ({"protocol": "maze", "bins": {k: asdict(b) for k, b in cfg.bins.items()}} if cfg.protocol == "maze" else
             {"dataset_checksum": dataset.manifest["checksum"], "goal_offset": cfg.goal_offset, "budget": cfg.budget})
    return {"env": asdict(cfg.env), **tasks, "task_seed": cfg.task_seed, "episodes": cfg.episodes, "model": model,
            "mpc": asdict(cfg.mpc), **({"slow": asdict(cfg.slow)} if cfg.hierarchy else {}),
            "planners": cfg.planner_names, "baselines": list(cfg.baselines),
            **({"variants": {k: asdict(v) for k, v in cfg.variants.items()}} if cfg.variants else {}),
            **({"oracle": asdict(cfg.oracle)} if "oracle" in cfg.baselines else {}),
            **({"only_tasks": list(cfg.only_tasks)} if cfg.only_tasks else {}),
            **({"batch_tasks": cfg.batch_tasks} if cfg.batch_tasks > 1 else {})}


def draw_tasks(cfg: PlanConfig, spec, env):
    """The evaluation's tasks, each with its own seed, and the dataset they come from (``None`` for the maze
    protocol); with ``only_tasks``, those of the draw alone."""
    rng = np.random.default_rng(cfg.task_seed)
    if cfg.protocol == "maze":
        bins = {k: (b.lo, b.hi) for k, b in cfg.bins.items()}
        tasks = sample_distance_tasks(env, spec, bins, cfg.episodes, {k: b.budget for k, b in cfg.bins.items()}, rng)
        dataset = None
    else:
        dataset = load_dataset(cfg, splits=("heldout",), progress=cfg.progress)
        tasks = sample_goal_tasks(dataset.split("heldout"), spec, cfg.episodes, cfg.goal_offset, rng)
    tasks = [replace(t, seed=task_seed(cfg.task_seed, i)) for i, t in enumerate(tasks)]
    if cfg.only_tasks:
        if not all(0 <= i < len(tasks) for i in cfg.only_tasks):
            raise ValueError(f"only_tasks={cfg.only_tasks}: the draw has tasks 0..{len(tasks) - 1}")
        tasks = [tasks[i] for i in cfg.only_tasks]
    return tasks, dataset


def shown_tasks(cfg: PlanConfig, tasks, agent) -> set[int]:
    """Indices of the tasks a planner's videos show: every one with ``only_tasks``, else the first ``videos`` of
    each group; none for the reference agents."""
    if not isinstance(agent, (LatentMPCAgent, HierarchicalAgent)):
        return set()
    if cfg.only_tasks:
        return set(range(len(tasks)))
    first: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        first.setdefault(t.group, []).append(i)
    return {i for idx in first.values() for i in idx[:cfg.videos]}


class Ranks:
    """The processes of an evaluation: ``torchrun``'s ranks, or this process alone. Task ``i`` is rank
    ``i mod world``'s; rank 0 gathers what the others found (over gloo, whatever the devices)."""

    def __init__(self):
        self.rank, self.world = distributed()
        self.group = dist.new_group(backend="gloo") if self.world > 1 else None

    def mine(self, tasks: list) -> set[int]:
        return set(range(self.rank, len(tasks), self.world))

    def share(self, value):
        """Rank 0's ``value`` on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, value) -> list | None:
        """Every rank's ``value``, in rank order, on rank 0 (``None`` elsewhere)."""
        if self.world == 1:
            return [value]
        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(value, out, dst=0, group=self.group)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.group)


def evaluate(cfg: PlanConfig, env, spec, tasks, agent, journal: TaskJournal, folder: Path, atlas, ranks: Ranks):
    """``agent`` on this rank's tasks (those in ``journal`` already done are not run again, each one finished
    is appended to it), in batches of ``cfg.batch_tasks`` where it batches (``env``: one env per task of a
    batch): on rank 0, the summary over every rank's tasks and all the videos (``None`` elsewhere), and
    every task's result."""
    shown = shown_tasks(cfg, tasks, agent)

    def finished(i, r):
        journal.append(agent.name, i, tasks[i], r)

    if not batches_agent(agent):
        env = env[0]
    mine = ranks.mine(tasks)
    summary, per_task = evaluate_agent(env, spec, tasks, agent, cfg.budget, progress=cfg.progress,
                                       record=shown & mine, done=journal.done.get(agent.name), on_result=finished,
                                       only=mine)
    videos = report.write_videos(cfg, spec, agent.name, tasks, per_task, shown & mine, folder, atlas)
    if ranks.world > 1:
        parts = ranks.gather(({i: per_task[i].to_json() for i in mine}, videos))
        if parts is None:
            return None, [], per_task
        found = {i: r for part, _ in parts for i, r in part.items()}
        per_task = [per_task[i] if i in mine else EpisodeResult.from_json(found[i]) for i in range(len(tasks))]
        summary, videos = summarize(agent.name, per_task), [v for _, shot in parts for v in shot]
    return report.agent_summary(cfg, agent, tasks, per_task, summary), videos, per_task


def run(cfg: PlanConfig) -> dict:
    """Draw the tasks, build the agents, run each on every task, and hand the results to ``report``."""
    ranks = Ranks()
    spec = envs.get_spec(cfg.env.name)
    out = writable_dir(cfg.output_dir, "output_dir")
    levels = Levels.load(cfg)
    stem = ranks.share(report.run_stem(cfg))
    with ExitStack() as stack:
        batch = [stack.enter_context(closing(cfg.env.make(max_episode_steps=cfg.max_budget)))
                 for _ in range(min(cfg.batch_tasks, cfg.episodes * max(1, len(cfg.bins))))]
        env = batch[0]
        tasks, dataset = draw_tasks(cfg, spec, env)
        header = protocol_header(cfg, dataset)
        name = f"plan-{cfg.env.name}-{config_hash(header)}"
        part = f".rank{ranks.rank}of{ranks.world}" if ranks.world > 1 else ""
        journal = TaskJournal(out / f"{name}{part}.tasks.jsonl", header, cfg.resume)
        results, videos, every = [], [], {}
        try:
            levels.calibrate(cfg, spec)
            atlas = report.atlas_of(cfg, levels)
            for agent_name in agent_names(cfg, levels):
                agent = make_agent(agent_name, cfg, env, spec, levels)
                summary, shown, every[agent_name] = evaluate(cfg, batch, spec, tasks, agent, journal,
                                                             out / "videos" / stem, atlas, ranks)
                results.append(summary)
                videos += shown
        except KeyboardInterrupt:
            print(f"\ninterrupted: every finished task is kept in {journal.path}; run the same command with "
                  f"resume=true to continue", file=sys.stderr)
            raise
        finally:
            journal.release()
    if ranks.world > 1:
        return merge_ranks(cfg, spec, dataset, header, levels, results, videos, out, stem, ranks, journal, tasks,
                           every, name)
    summary = report.result(cfg, spec, dataset, header, levels, results, videos, out, stem)
    journal.finish(out / f"{stem}.tasks.jsonl")  # kept next to the result; no longer an unfinished evaluation
    return summary


def merge_ranks(cfg, spec, dataset, header, levels, results, videos, out, stem, ranks: Ranks, journal, tasks,
                every: dict, name: str) -> dict | None:
    """Rank 0 writes the result and one journal of every rank's tasks (as one process would); then each
    rank's own journal, now held in that one, is removed. ``None`` on the other ranks."""
    summary = None
    if ranks.rank == 0:
        summary = report.result(cfg, spec, dataset, header, levels, results, videos, out, stem)
        merged = TaskJournal(out / f"{name}.tasks.jsonl", header)
        for agent_name, per_task in every.items():
            for i, r in enumerate(per_task):
                merged.append(agent_name, i, tasks[i], r)
        merged.finish(out / f"{stem}.tasks.jsonl")
    ranks.barrier()
    journal.path.unlink()
    return summary


@entry_point("plan")
def main(cfg: DictConfig) -> None:
    summary = run(to_object(cfg))
    shutdown_distributed()
    if summary is None:  # a rank other than 0: rank 0 prints the result
        return
    print("\n" + report.headline(summary))
    print(report.table(summary))
    for v in summary["videos"]:
        print(f"video: {v}")
    print(f"result written to {summary['result']}")


if __name__ == "__main__":
    main()
