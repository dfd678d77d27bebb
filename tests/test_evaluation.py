import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import envs
from worldmodel.evaluation import ZeroAgent, run_task, sample_goal_tasks, wilson_interval

ROOT = Path(__file__).resolve().parents[1]


def test_wilson_interval_matches_known_values():
    lo, hi = wilson_interval(86, 100)
    assert lo == pytest.approx(0.7786, abs=1e-4) and hi == pytest.approx(0.9147, abs=1e-4)
    assert wilson_interval(0, 100)[0] == 0.0 and wilson_interval(0, 100)[1] == pytest.approx(0.0370, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_goal_tasks_come_from_the_recording_and_skip_solved_starts(tiny_dataset):
    spec = envs.get_spec("reacher")
    heldout = tiny_dataset.split("heldout")
    tasks = sample_goal_tasks(heldout, spec, 10, 5, np.random.default_rng(0))
    for task in tasks:
        ep = heldout.episode(task.episode)
        assert np.array_equal(task.goal_obs, ep["obs"][task.start + 5])
        assert np.array_equal(task.goal_state, ep["states"][task.start + 5])
        assert not spec.success(task.start_state, task.goal_state)
    with pytest.raises(ValueError, match="goal_offset=30"):
        sample_goal_tasks(heldout, spec, 1, 30, np.random.default_rng(0))


class ReplayAgent:
    """Replays the recorded actions: reaches the recorded goal by construction."""

    name = "replay"

    def __init__(self, actions):
        self.actions, self.t = actions, 0

    def reset(self, goal_obs):
        self.t = 0

    def act(self, obs):
        self.t += 1
        return self.actions[self.t - 1]


def test_replaying_the_recorded_actions_succeeds_and_zero_does_not(tiny_dataset):
    spec = envs.get_spec("reacher")
    heldout = tiny_dataset.split("heldout")
    env = envs.make_env("reacher", max_episode_steps=12)
    tasks = sample_goal_tasks(heldout, spec, 4, 10, np.random.default_rng(1))
    for task in tasks:
        ep = heldout.episode(task.episode)
        replay = ReplayAgent(np.concatenate([ep["actions"][task.start : task.start + 10], np.zeros((2, 2))]))
        result = run_task(env, spec, task, replay, budget=12)
        assert result.success and result.steps <= 10
    zero = [run_task(env, spec, t, ZeroAgent(env.action_space), budget=12).success for t in tasks]
    assert sum(zero) < len(tasks)
    env.close()


def test_plan_entry_point_runs_end_to_end(tmp_path):
    cmd = [sys.executable, str(ROOT / "experiments" / "plan.py"), "env=reacher", f"data.root={tmp_path}/data",
           "data.train_episodes=2", "data.val_episodes=0", "data.heldout_episodes=3", "env.episode_steps=30",
           "episodes=4", "budget=10", "goal_offset=10", "data.num_envs=1", "progress=false",
           f"output_dir={tmp_path}/results", "model=",
           f"hydra.run.dir={tmp_path}/hydra"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (result,) = [p for p in (tmp_path / "results").glob("plan-reacher-*.json")]
    summary = json.loads(result.read_text())
    assert [r["agent"] for r in summary["results"]] == ["random", "zero"]
    assert all(r["episodes"] == 4 for r in summary["results"])
    # planning needs only the held-out episodes: nothing else was collected
    (dataset,) = [p for p in (tmp_path / "data").iterdir() if p.name != ".collect.lock"]
    assert dataset.name.startswith("reacher-uniform-64px-heldout3x30-e1000-")
    assert list(json.loads((dataset / "manifest.json").read_text())["splits"]) == ["heldout"]
    assert "random" in out.stdout and "zero" in out.stdout and str(result.name) in out.stdout
