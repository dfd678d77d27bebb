"""Evaluation: the goal-image protocol, probes of what latents know, surprise, videos."""

from worldmodel.evaluation.protocol import (
    BASELINES,
    REFERENCE_AGENTS,
    Agent,
    EpisodeResult,
    GoalTask,
    RandomAgent,
    ZeroAgent,
    batches_agent,
    evaluate_agent,
    make_baseline,
    run_task,
    run_tasks,
    sample_distance_tasks,
    sample_goal_tasks,
    summarize,
    summarize_groups,
    task_seed,
    wilson_interval,
)
from worldmodel.evaluation.journal import TaskJournal
from worldmodel.evaluation.representation import frame_probes, representations, rollout_probes, surprise_test
from worldmodel.evaluation.surprise import auroc, perturbation_names, replay, surprise
from worldmodel.evaluation.video import episode_video

__all__ = [
    "BASELINES",
    "REFERENCE_AGENTS",
    "Agent",
    "EpisodeResult",
    "GoalTask",
    "RandomAgent",
    "TaskJournal",
    "ZeroAgent",
    "auroc",
    "episode_video",
    "batches_agent",
    "evaluate_agent",
    "frame_probes",
    "make_baseline",
    "perturbation_names",
    "replay",
    "representations",
    "rollout_probes",
    "run_task",
    "run_tasks",
    "sample_distance_tasks",
    "sample_goal_tasks",
    "summarize",
    "summarize_groups",
    "surprise",
    "surprise_test",
    "task_seed",
    "wilson_interval",
]
