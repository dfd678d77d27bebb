"""Settings of the goal-image evaluation (``experiments/plan.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from worldmodel.data.config import CollectConfig
from worldmodel.evaluation import BASELINES


@dataclass
class PlanConfig(CollectConfig):
    """The dataset whose held-out split supplies the tasks, plus the protocol's settings.

    The dataset fields are those of :class:`CollectConfig`; the dataset is collected
    first when it is missing.

    Attributes:
        episodes: evaluation tasks (start/goal pairs) drawn from the held-out split.
        goal_offset: env steps between the start and the goal frame.
        budget: env steps the agent may take.
        task_seed: seed of the task draw and of the random-action baseline.
        baselines: reference policies run in the same invocation.
        output_dir: where the JSON result is written.
    """

    episodes: int = 100
    goal_offset: int = 25
    budget: int = 50
    task_seed: int = 0
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    output_dir: str = "results"

    def __post_init__(self):
        super().__post_init__()
        if self.episodes < 1 or self.budget < 1:
            raise ValueError(f"episodes and budget must be >= 1, got {self.episodes}, {self.budget}")
        if not 1 <= self.goal_offset <= self.env.episode_steps:
            raise ValueError(
                f"goal_offset must be in [1, env.episode_steps={self.env.episode_steps}], got {self.goal_offset}"
            )
        if self.heldout_episodes < 1:
            raise ValueError(f"heldout_episodes must be >= 1 to evaluate, got {self.heldout_episodes}")
        for name in self.baselines:
            if name not in BASELINES:
                raise ValueError(f"unknown baseline {name!r}; expected a subset of {list(BASELINES)}")
